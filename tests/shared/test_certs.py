"""fedguard.deploy.certs with real crypto and real files, including a real gRPC TLS handshake."""

import argparse
import ipaddress
import ssl
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedguard.deploy.certs import (
    CertificateProblem,
    FederationCerts,
    check_certificate,
    init_federation,
    load_public_key_openssh,
    make_node_keys,
)
from fedguard.errors import ConfigError, DataError, FedguardError

HOSTS = ("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> FederationCerts:
    return init_federation(out=tmp_path_factory.mktemp("certs") / "fed")


@pytest.fixture(scope="module")
def other_fed(tmp_path_factory: pytest.TempPathFactory) -> FederationCerts:
    return init_federation(out=tmp_path_factory.mktemp("certs") / "other")


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- init_federation ---------------------------------------------------------------


def test_init_writes_four_files_with_private_modes(fed: FederationCerts):
    out = fed.ca_cert.parent
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "server.key", "server.pem"]
    assert mode(out) == 0o700
    assert mode(fed.ca_key) == mode(fed.server_key) == 0o600
    for key in (fed.ca_key, fed.server_key):
        loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        assert isinstance(loaded.curve, ec.SECP384R1)


def test_server_cert_chains_to_ca_with_hosts_and_server_auth(fed: FederationCerts):
    ca, server = load_cert(fed.ca_cert), load_cert(fed.server_cert)
    ca_public = ca.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    assert server.signature_hash_algorithm is not None
    ca_public.verify(  # raises InvalidSignature if the CA did not sign it
        server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm)
    )
    assert server.issuer == ca.subject
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(g.value) for g in san] == list(HOSTS)
    assert isinstance(san[0], x509.IPAddress) and isinstance(san[1], x509.DNSName)
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    server.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert server.not_valid_after_utc - server.not_valid_before_utc == timedelta(
        days=365, minutes=5
    )
    # An independent RFC 5280 path validator (not fedguard's code) accepts the chain.
    policy = verification.PolicyBuilder().store(verification.Store([ca]))
    for name in (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")):
        policy.build_server_verifier(name).verify(server, [])


def test_python_ssl_strict_mode_accepts_the_chain(fed: FederationCerts):
    # Flower's HTTP APIs use Python's ssl, whose 3.13+ default adds VERIFY_X509_STRICT.
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(fed.server_cert, fed.server_key)
    client_ctx = ssl.create_default_context(cafile=fed.ca_cert)
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done: set[int] = set()
    for _ in range(10):
        for i, side in enumerate((client, server)):
            try:
                side.do_handshake()
                done.add(i)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert done == {0, 1}


# --- a real TLS handshake with gRPC (what Flower's Fleet API uses) ------------------


def _health_check(port: int, ca: Path, *, target_name: str | None = None) -> str:
    """Return "OK" or the gRPC error's code and details."""
    options = [("grpc.ssl_target_name_override", target_name)] if target_name else []
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        except grpc.RpcError as exc:
            return f"{exc.code()}: {exc.details()}"
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        return "OK"


def test_grpc_accepts_the_certs_and_refuses_another_ca(fed, other_fed, tls_server):
    port = tls_server(fed)
    creds = grpc.ssl_channel_credentials(root_certificates=fed.ca_cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
    assert _health_check(port, fed.ca_cert) == "OK"
    refused = _health_check(port, other_fed.ca_cert)
    assert "UNAVAILABLE" in refused and "CERTIFICATE_VERIFY_FAILED" in refused


def test_grpc_refuses_a_cert_for_another_host(tmp_path: Path, tls_server):
    elsewhere = init_federation(out=tmp_path / "fed", hosts=["10.9.9.9", "other.example"])
    port = tls_server(elsewhere)
    refused = _health_check(port, elsewhere.ca_cert)
    assert "UNAVAILABLE" in refused and "hostname" in refused.lower()
    # Same server, same CA, only the name checked differs: the name is what failed.
    assert _health_check(port, elsewhere.ca_cert, target_name="other.example") == "OK"


def test_grpc_refuses_an_expired_cert_in_the_handshake(tmp_path: Path, tls_server):
    """Not only fedguard's own pre-check: gRPC's TLS itself refuses a server whose
    certificate (and CA) expired, so a node that skipped the check learns nothing."""
    long_ago = datetime.now(UTC) - timedelta(days=30)
    expired = init_federation(out=tmp_path / "fed", days=2, now=long_ago)
    port = tls_server(expired)
    refused = _health_check(port, expired.ca_cert)
    assert "UNAVAILABLE" in refused and "CERTIFICATE_VERIFY_FAILED" in refused
    assert "expired" in refused.lower()
    # The same server with a current certificate answers: the date is what failed.
    current = init_federation(out=tmp_path / "fed2")
    assert _health_check(tls_server(current), current.ca_cert) == "OK"


# --- refusing to overwrite, and bad options ------------------------------------------


def test_refuses_to_overwrite_without_force(tmp_path: Path):
    out = tmp_path / "fed"
    init_federation(out=out)
    before = snapshot(out)
    with pytest.raises(ConfigError, match=r"ca\.crt already exists; pass --force"):
        init_federation(out=out)
    assert snapshot(out) == before
    init_federation(out=out, force=True)
    after = snapshot(out)
    assert after.keys() == before.keys()
    assert all(after[name] != before[name] for name in before)


def test_one_existing_file_blocks_all_writes(tmp_path: Path):
    out = tmp_path / "fed"
    out.mkdir()
    (out / "server.key").write_bytes(b"keep me")
    with pytest.raises(ConfigError, match=r"server\.key already exists.*--force"):
        init_federation(out=out)
    assert snapshot(out) == {"server.key": b"keep me"}


@pytest.mark.parametrize("host", ["bad host", "-lead.example", "a..b", "*.example", "1.2.3", ""])
def test_bad_host_names_the_option_and_value(tmp_path: Path, host: str):
    with pytest.raises(ConfigError, match="--host: expected an IP address or DNS name") as err:
        init_federation(out=tmp_path / "fed", hosts=["127.0.0.1", host])
    assert repr(host) in str(err.value)
    assert not (tmp_path / "fed").exists()


@pytest.mark.parametrize("days", [0, -1, 3651, 1.5, True])
def test_bad_days_names_the_option_and_value(tmp_path: Path, days: object):
    with pytest.raises(ConfigError, match=rf"--days: expected .*1 to 3650, got {days!r}"):
        init_federation(out=tmp_path / "fed", days=days)  # type: ignore[arg-type]


def test_ipv6_and_upper_case_hosts(tmp_path: Path):
    made = init_federation(out=tmp_path / "fed", hosts=["::1", "SuperLink.Example.ORG"])
    san = load_cert(made.server_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert [str(g.value) for g in san.value] == ["::1", "superlink.example.org"]
    check_certificate(cert=made.server_cert, host="superlink.EXAMPLE.org", ca_cert=made.ca_cert)


# --- node keys ------------------------------------------------------------------------


def test_node_keys_are_p384_and_match(tmp_path: Path):
    keys = make_node_keys(name="hospital-a", out=tmp_path / "nodes")
    assert mode(keys.private_key) == 0o600 and mode(tmp_path / "nodes") == 0o700
    private = serialization.load_ssh_private_key(keys.private_key.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    text = keys.public_key.read_text()
    assert text.endswith(" hospital-a\n") and text.count("\n") == 1
    assert text.startswith("ecdsa-sha2-nistp384 ")
    assert load_public_key_openssh(keys.public_key) == text.strip()
    public = serialization.load_ssh_public_key(text.encode())
    assert public == private.public_key()


def test_node_keys_refuse_overwrite_and_bad_names(tmp_path: Path):
    keys = make_node_keys(name="h1", out=tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"h1 already exists; pass --force"):
        make_node_keys(name="h1", out=tmp_path)
    assert snapshot(tmp_path) == before
    make_node_keys(name="h1", out=tmp_path, force=True)
    assert keys.private_key.read_bytes() != before["h1"]
    for bad in ("", ".hidden", "a/b", "with space", "x" * 64):
        with pytest.raises(ConfigError, match=rf"NAME: expected .*got {bad!r}"):
            make_node_keys(name=bad, out=tmp_path)


def _ssh_public(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
    return key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (_ssh_public(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "ssh-rsa"),
        (_ssh_public(ed25519.Ed25519PrivateKey.generate()), "ssh-ed25519 key"),
        (_ssh_public(ec.generate_private_key(ec.SECP256R1())), "secp256r1"),
        (b"hello world\n", "unreadable"),
        (b"", "empty"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "is a private key"),
    ],
    # Fixed ids: a fresh key's bytes in the id differ between pytest-xdist workers.
    ids=["rsa", "ed25519", "p256", "text", "empty", "private-key"],
)
def test_load_public_key_rejects_other_keys(tmp_path: Path, content: bytes, fragment: str):
    path = tmp_path / "node.pub"
    path.write_bytes(content)
    with pytest.raises(DataError, match=fragment) as err:
        load_public_key_openssh(path)
    assert str(path) in str(err.value) and "EC P-384" in str(err.value)


# --- check_certificate ------------------------------------------------------------


def test_check_certificate_accepts_and_names_each_problem(fed, other_fed, tmp_path: Path):
    check_certificate(cert=fed.server_cert, host="127.0.0.1", ca_cert=fed.ca_cert)
    check_certificate(cert=fed.server_cert, host="localhost", ca_cert=fed.ca_cert)

    with pytest.raises(CertificateProblem) as err:
        check_certificate(cert=fed.server_cert, host="10.0.0.7", ca_cert=fed.ca_cert)
    assert "is not valid for host '10.0.0.7' (its names: 127.0.0.1, localhost)" in str(err.value)

    with pytest.raises(CertificateProblem, match=r"server\.pem is not signed by the CA in .*ca"):
        check_certificate(cert=fed.server_cert, host="127.0.0.1", ca_cert=other_fed.ca_cert)

    then = datetime(2020, 1, 1, tzinfo=UTC)
    old = init_federation(out=tmp_path / "old", days=1, now=then)
    with pytest.raises(CertificateProblem, match=r"server\.pem expired on 2020-01-02 00:00:00"):
        check_certificate(cert=old.server_cert, host="127.0.0.1", ca_cert=old.ca_cert)
    with pytest.raises(CertificateProblem, match=r"not yet valid: it starts on 2019-12-31"):
        check_certificate(
            cert=old.server_cert, host="127.0.0.1", ca_cert=old.ca_cert, now=then - timedelta(1)
        )
    check_certificate(cert=old.server_cert, host="localhost", ca_cert=old.ca_cert, now=then)
    for problem in (CertificateProblem, ConfigError, DataError):
        assert issubclass(problem, FedguardError)


# --- the command line ---------------------------------------------------------------


def fedguard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedguard", "certs", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_cli_init_node_and_refusal(tmp_path: Path):
    made = fedguard("init", "--out", "fed", "--host", "10.1.2.3", "--days", "30", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "fed/server.key" in made.stdout and "fed/ca.crt" in made.stdout
    check_certificate(
        cert=tmp_path / "fed/server.pem", host="10.1.2.3", ca_cert=tmp_path / "fed/ca.crt"
    )

    node = fedguard("node", "hospital-a", "--out", "keys", cwd=tmp_path)
    assert node.returncode == 0, node.stderr
    assert "give hospital-a.pub to the operator" in node.stdout
    assert "keep hospital-a private" in node.stdout
    assert (tmp_path / "keys/hospital-a.pub").is_file()

    again = fedguard("init", "--out", "fed", cwd=tmp_path)
    assert again.returncode == 2
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--force" in lines[0], again.stderr


# --- Flower's own loaders accept the files (no SuperLink needed) ----------------------


def test_flower_loads_the_node_keys(tmp_path: Path):
    register = pytest.importorskip("flwr.cli.supernode.register")
    supernode = pytest.importorskip("flwr.supernode.cli.flower_supernode")
    keys = make_node_keys(name="n1", out=tmp_path)
    assert register.try_load_public_key(keys.public_key)  # `flwr supernode register`
    args = argparse.Namespace(
        auth_supernode_private_key=str(keys.private_key), auth_supernode_public_key=None
    )
    private, public = supernode._try_setup_client_authentication(args)  # flower-supernode
    assert public.public_numbers() == private.public_key().public_numbers()
