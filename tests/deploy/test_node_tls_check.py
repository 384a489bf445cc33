"""`fedguard client` names the TLS problem before Flower can hide it behind
"connection unavailable": another federation's CA, or a certificate for another host."""

from pathlib import Path

import pytest

from fedguard.certs import init_federation
from fedguard.client.launcher import NodeRefusedError, check_server_tls


def test_right_ca_and_host_pass(tmp_path: Path, tls_server):
    fed = init_federation(out=tmp_path / "fed")
    port = tls_server(fed)
    check_server_tls(server=f"127.0.0.1:{port}", ca_cert=fed.ca_cert, timeout=5)


def test_wrong_ca_is_named(tmp_path: Path, tls_server):
    fed = init_federation(out=tmp_path / "fed")
    other = init_federation(out=tmp_path / "other")
    port = tls_server(fed)
    with pytest.raises(NodeRefusedError, match=r"node\.ca-cert: .*not signed by the CA"):
        check_server_tls(server=f"127.0.0.1:{port}", ca_cert=other.ca_cert, timeout=5)


def test_certificate_for_another_host_is_named(tmp_path: Path, tls_server):
    fed = init_federation(out=tmp_path / "fed", hosts=("10.9.9.9", "other.example"))
    port = tls_server(fed)
    with pytest.raises(NodeRefusedError, match=r"not valid for host '127\.0\.0\.1'"):
        check_server_tls(server=f"127.0.0.1:{port}", ca_cert=fed.ca_cert, timeout=5)


def test_nothing_listening_is_named(tmp_path: Path):
    fed = init_federation(out=tmp_path / "fed")
    with pytest.raises(NodeRefusedError, match="nothing answers"):
        check_server_tls(server="127.0.0.1:9", ca_cert=fed.ca_cert, timeout=1)
