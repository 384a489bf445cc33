"""`fedguard client` names the TLS problem before Flower can hide it behind
"connection unavailable": another federation's CA, a certificate for another host, an
expired certificate, or a node configured without TLS against a TLS server."""

import socket
import subprocess
import sys
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from fedguard.cli import main as fedguard_main
from fedguard.client.server_checks import (
    NodeRefusedError,
    check_server_plaintext,
    check_server_tls,
)
from fedguard.deploy.certs import init_federation, make_node_keys


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


def test_an_expired_server_certificate_is_named_with_its_date(tmp_path: Path, tls_server):
    long_ago = datetime.now(UTC) - timedelta(days=30)
    fed = init_federation(out=tmp_path / "fed", days=2, now=long_ago)  # expired 28 days ago
    port = tls_server(fed)
    expired_on = (long_ago + timedelta(days=2)).strftime("%Y-%m-%d")
    with pytest.raises(
        NodeRefusedError,
        match=rf"node\.server: the server's certificate for 127\.0\.0\.1 expired on {expired_on}",
    ):
        check_server_tls(server=f"127.0.0.1:{port}", ca_cert=fed.ca_cert, timeout=5)


def test_a_plaintext_node_is_refused_by_a_tls_server_and_not_by_a_plaintext_one(
    tmp_path: Path, tls_server
):
    fed = init_federation(out=tmp_path / "fed")
    port = tls_server(fed)
    with pytest.raises(NodeRefusedError, match=r"node\.insecure: .* requires TLS"):
        check_server_plaintext(server=f"127.0.0.1:{port}", timeout=5)
    plain = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    plain_port = plain.add_insecure_port("127.0.0.1:0")
    plain.start()
    try:
        check_server_plaintext(server=f"127.0.0.1:{plain_port}", timeout=5)
    finally:
        plain.stop(None)


@pytest.mark.parametrize("problem", ["expired", "plaintext-node"])
def test_fedguard_client_refuses_in_one_line_and_starts_nothing(
    tmp_path: Path, tls_server, capsys, problem: str
):
    if problem == "expired":
        fed = init_federation(out=tmp_path / "fed", days=1, now=datetime.now(UTC) - timedelta(9))
    else:
        fed = init_federation(out=tmp_path / "fed")
    port = tls_server(fed)
    keys = make_node_keys(name="node-a", out=tmp_path / "keys")
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[node]\nname = "node-a"\nserver = "127.0.0.1:{port}"\nca-cert = "{fed.ca_cert}"\n'
        f'private-key = "{keys.private_key}"\nstate-dir = "{tmp_path / "state"}"\n'
        + ("insecure = true\n" if problem == "plaintext-node" else "")
    )
    with pytest.raises(SystemExit) as exit_:
        fedguard_main(["client", "--config", str(toml)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("fedguard: error:")]
    assert len(lines) == 1, err
    want = "expired on" if problem == "expired" else "node.insecure: the server at"
    assert want in lines[0]
    assert not (tmp_path / "state" / "supernode.log").exists()  # no SuperNode was started


@pytest.mark.deploy  # a real `fedguard client` process
def test_a_node_whose_data_set_is_missing_stops_at_start(tmp_path: Path, tls_server):
    """#17.2 / #15.5: `dataset = "nope.csv"` was accepted at start, and the node then served
    silently while the server logged `node ... did not describe itself` for ever."""
    fed = init_federation(out=tmp_path / "fed")
    port = tls_server(fed)
    keys = make_node_keys(name="bank-a", out=tmp_path / "keys")
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[node]\nname = "bank-a"\nserver = "127.0.0.1:{port}"\nca-cert = "{fed.ca_cert}"\n'
        f'private-key = "{keys.private_key}"\nstate-dir = "{tmp_path / "state"}"\n'
        '[data]\ndataset = "nope.csv"\ntarget = "default"\n'
    )
    # A process of its own: the launcher sets the node's environment before it forks.
    result = subprocess.run(
        [sys.executable, "-m", "fedguard", "client", "--config", str(toml)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nope.csv" in lines[0] and "cannot read" in lines[0], lines
    assert not (tmp_path / "state" / "supernode.log").exists()  # no SuperNode was started


@pytest.mark.deploy  # a real `fedguard client` process
def test_a_node_started_before_its_server_names_a_missing_data_set_at_once(tmp_path: Path):
    """Before: a node whose server was not up yet waited for it (retrying for ever) before
    it loaded its data, so `dataset = "nope.csv"` was named only once a server came."""
    fed = init_federation(out=tmp_path / "fed")
    keys = make_node_keys(name="bank-a", out=tmp_path / "keys")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[node]\nname = "bank-a"\nserver = "127.0.0.1:{port}"\nca-cert = "{fed.ca_cert}"\n'
        f'private-key = "{keys.private_key}"\nstate-dir = "{tmp_path / "state"}"\n'
        '[data]\ndataset = "nope.csv"\ntarget = "default"\n'
    )
    try:
        result = subprocess.run(
            [sys.executable, "-m", "fedguard", "client", "--config", str(toml)],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the node waited for its server instead: {exc.stderr!r} {exc.stdout!r}")
    assert result.returncode == 2, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("fedguard: error:")]
    assert len(errors) == 1 and "nope.csv" in errors[0] and "cannot read" in errors[0]
