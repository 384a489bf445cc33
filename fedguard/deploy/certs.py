"""Certificates and node keys for a real Flower deployment.

The operator's SuperLink serves the Fleet API over TLS and admits only enrolled
SuperNodes. It needs a CA certificate and a server certificate + key (PEM). Every
hospital's SuperNode needs that CA certificate and its own EC P-384 key pair; the
operator enrols the public half with ``flwr supernode register NAME.pub <connection>``.

Why EC P-384 everywhere: Flower's SuperNode authentication signs with an EC key on a
NIST curve and its own key generator uses SECP384R1 (``flwr.supercore.primitives``),
so P-384 is the curve Flower is tested with. Using it for the CA and the server too
keeps one algorithm to audit, and gRPC (BoringSSL) and Python's ``ssl`` both accept it.

Keys and serial numbers are random; the clock is injected (``now``) so tests can make
expired or not-yet-valid certificates without patching time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedguard._io import atomic_write_bytes
from fedguard.errors import ConfigError, DataError, FedguardError, invalid

__all__ = [
    "CertificateProblem",
    "FederationCerts",
    "NodeKeys",
    "check_certificate",
    "init_federation",
    "load_public_key_openssh",
    "make_node_keys",
]

MAX_DAYS = 3650
"""Longest validity accepted for ``--days`` (10 years): longer-lived keys are rarely
rotated, and a leaked CA key would admit forged SuperLinks for that long."""

CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this long before ``now``, so a SuperNode whose clock runs a little
behind the operator's does not reject a freshly made certificate as not yet valid."""

_CURVE = ec.SECP384R1
_HASH = hashes.SHA384  # the hash that matches P-384's strength (RFC 5480, section 4)
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_TIME = "%Y-%m-%d %H:%M:%S UTC"
_CA_CN = "fedguard federation CA"


class CertificateProblem(FedguardError):  # noqa: N818 (the name says what the user fixes)
    """A certificate would be refused by a TLS client (wrong host, dates or CA)."""


@dataclass(frozen=True)
class FederationCerts:
    """Files written by :func:`init_federation`.

    ``ca_cert`` goes to every SuperNode; ``ca_key`` should be moved offline (it can mint
    server certificates every SuperNode trusts); ``server_cert`` and ``server_key`` go to
    the SuperLink (``--ssl-certfile``, ``--ssl-keyfile``).
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeys:
    """Files written by :func:`make_node_keys`: the SuperNode's key pair and its name."""

    private_key: Path
    public_key: Path
    name: str


def init_federation(
    *,
    out: Path,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = 365,
    force: bool = False,
    now: datetime | None = None,
) -> FederationCerts:
    """Make a CA and a SuperLink server certificate signed by it.

    Parameters
    ----------
    out
        Folder for ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key`` (made 0700 if new).
    hosts
        IP addresses or DNS names SuperNodes use to reach the SuperLink; no other works.
    days
        Validity of both certificates, 1 to 3650.
    force
        Replace existing files; without it nothing is written if any exists.
    now
        Timezone-aware start time (default: the current time).
    """
    names = _check_hosts(hosts)
    _check_days(days)
    start = _check_now(now)
    files = FederationCerts(
        ca_cert=out / "ca.crt",
        ca_key=out / "ca.key",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
    )
    _refuse_existing([files.ca_cert, files.ca_key, files.server_cert, files.server_key], force)
    _make_private_folder(out)

    not_before, not_after = start - CLOCK_SKEW, start + timedelta(days=days)
    ca_key, server_key = ec.generate_private_key(_CURVE()), ec.generate_private_key(_CURVE())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = _sign(
        _name(_CA_CN),
        ca_key.public_key(),
        (not_before, not_after),
        ca_key,
        # path_length=0: this CA signs server certificates only, never another CA.
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (_key_usage(cert_sign=True), True),
        (ca_ski, False),
    )
    server_cert = _sign(
        # TLS clients ignore the CN when SANs exist; it only helps humans reading it.
        _name(str(names[0].value)[:64]),
        server_key.public_key(),
        (not_before, not_after),
        ca_key,
        (x509.SubjectAlternativeName(names), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(cert_sign=False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), False),
        (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False),
    )

    pem = serialization.Encoding.PEM
    atomic_write_bytes(files.ca_key, _pem_private_key(ca_key), mode=0o600)
    atomic_write_bytes(files.server_key, _pem_private_key(server_key), mode=0o600)
    atomic_write_bytes(files.ca_cert, ca_cert.public_bytes(pem), mode=0o644)
    atomic_write_bytes(files.server_cert, server_cert.public_bytes(pem), mode=0o644)
    return files


def make_node_keys(*, name: str, out: Path, force: bool = False) -> NodeKeys:
    """Make a SuperNode's EC P-384 key pair: ``out/NAME`` and ``out/NAME.pub``.

    The private key is in OpenSSH format because Flower 1.39's
    ``flower-supernode --auth-supernode-private-key`` loads it with
    ``load_ssh_private_key`` and refuses PEM PKCS8. The public key is one OpenSSH line
    (``ecdsa-sha2-nistp384 AAAA... NAME``), the format ``flwr supernode register`` reads.

    Parameters
    ----------
    name
        Node name: a letter or digit, then up to 62 of ``A-Z a-z 0-9 _ . -``.
    out
        Folder for the two files (created with mode 0700 if new).
    force
        Replace existing files; without it nothing is written if either exists.
    """
    if not isinstance(name, str) or not _NODE_NAME.match(name):
        raise invalid(
            "NAME", allowed="a letter or digit, then up to 62 of A-Z a-z 0-9 _ . -", got=name
        )
    keys = NodeKeys(private_key=out / name, public_key=out / f"{name}.pub", name=name)
    _refuse_existing([keys.private_key, keys.public_key], force)
    _make_private_folder(out)

    key = ec.generate_private_key(_CURVE())
    # Unencrypted on purpose: the SuperNode starts unattended and Flower passes no
    # password; the 0600 mode is the protection.
    pem, openssh = serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH
    private = key.private_bytes(pem, openssh, serialization.NoEncryption())
    ssh, ssh_public = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    public = key.public_key().public_bytes(ssh, ssh_public)
    atomic_write_bytes(keys.private_key, private, mode=0o600)
    atomic_write_bytes(keys.public_key, public + f" {name}\n".encode(), mode=0o644)
    return keys


def load_public_key_openssh(path: Path) -> str:
    """Return the one-line OpenSSH public key in ``path`` after checking it is EC P-384.

    Raises
    ------
    DataError
        The file is missing, is a private key, or is not an EC P-384 OpenSSH public key.
    """
    expected = "an EC P-384 public key in OpenSSH format (ecdsa-sha2-nistp384 AAAA... name)"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the public key ({exc})") from exc
    if "PRIVATE KEY" in text:
        raise DataError(f"{path}: is a private key; expected {expected} (the .pub file)")
    if not text or "\n" in text:
        got = "an empty file" if not text else f"{len(text.splitlines())} lines"
        raise DataError(f"{path}: expected {expected} on one line, got {got}")
    try:
        key = serialization.load_ssh_public_key(text.encode("utf-8"))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DataError(f"{path}: expected {expected}, got unreadable text ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        kind = text.split(maxsplit=1)[0]
        raise DataError(f"{path}: expected {expected}, got a {kind} key")
    if not isinstance(key.curve, _CURVE):
        raise DataError(f"{path}: expected {expected}, got an EC {key.curve.name} key")
    return text


def check_certificate(*, cert: Path, host: str, ca_cert: Path, now: datetime | None = None) -> None:
    """Raise :class:`CertificateProblem` if a TLS client reaching ``host`` would refuse ``cert``.

    Checks, in order: signed by the CA in ``ca_cert``, within its dates, names ``host``,
    and finally the full RFC 5280 path validation of ``cryptography.x509.verification``
    (key usages, basic constraints), so what passes here also passes gRPC.
    """
    when = _check_now(now)
    leaf, ca = _load_cert(cert), _load_cert(ca_cert)
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateProblem(f"{cert} is not signed by the CA in {ca_cert}") from exc
    for which, path in ((leaf, cert), (ca, ca_cert)):
        if when > which.not_valid_after_utc:
            raise CertificateProblem(
                f"{path} expired on {which.not_valid_after_utc:{_TIME}}"
                " (make new ones with `fedguard certs init --force`)"
            )
        if when < which.not_valid_before_utc:
            raise CertificateProblem(
                f"{path} is not yet valid: it starts on {which.not_valid_before_utc:{_TIME}}"
                f" (now: {when:{_TIME}}; check this machine's clock)"
            )
    names = _san_values(leaf)
    subject = _general_name(host)
    if not isinstance(subject, x509.IPAddress | x509.DNSName) or not _names_host(names, subject):
        listed = ", ".join(names) or "none"
        raise CertificateProblem(f"{cert} is not valid for host {host!r} (its names: {listed})")
    policy = verification.PolicyBuilder().store(verification.Store([ca])).time(when)
    try:
        policy.build_server_verifier(subject).verify(leaf, [])
    except verification.VerificationError as exc:
        reason = " ".join(str(exc).split())
        raise CertificateProblem(f"{cert} is refused for TLS servers: {reason}") from exc


# --- helpers -------------------------------------------------------------------------


def _check_hosts(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str):  # one host, not its characters
        hosts = (hosts,)
    if not hosts:
        raise invalid("--host", allowed="at least one IP address or DNS name", got=list(hosts))
    names: list[x509.GeneralName] = []
    for h in hosts:
        name = _general_name(h)
        if name is None:
            raise invalid("--host", allowed="an IP address or DNS name", got=h)
        if name not in names:
            names.append(name)
    return names


def _general_name(host: object) -> x509.GeneralName | None:
    if not isinstance(host, str) or "%" in host:  # scoped IPv6 cannot go in a certificate
        return None
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    # A last label of digits only ("1.2.3") would be read as an IP address by resolvers.
    if len(host) > 253 or not _HOSTNAME.match(host) or host.rsplit(".", 1)[-1].isdigit():
        return None
    return x509.DNSName(host.lower())


def _check_days(days: object) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise invalid("--days", allowed=f"a whole number of days from 1 to {MAX_DAYS}", got=days)


def _check_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise invalid("now", allowed="a timezone-aware datetime", got=now)
    return now.astimezone(UTC)


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    # Checked before anything is written, so a refusal leaves no half-made federation.
    if force:
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise ConfigError(f"{path} already exists; pass --force to replace it")


def _make_private_folder(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise invalid("--out", allowed="a folder", got=str(out), hint="it is a file")
    else:
        out.mkdir(parents=True, mode=0o700)
        out.chmod(0o700)  # mkdir's mode is masked by the umask; make sure


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedguard"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _sign(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    validity: tuple[datetime, datetime],
    ca_key: ec.EllipticCurvePrivateKey,
    *extensions: tuple[x509.ExtensionType, bool],
) -> x509.Certificate:
    """Sign ``public_key`` with ``ca_key``; each extension comes with its criticality."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(_name(_CA_CN))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(ca_key, _HASH())


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    # A CA signs certificates and CRLs; an ECDSA TLS server only signs handshakes.
    unused = ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        **dict.fromkeys((*unused, "encipher_only", "decipher_only"), False),
    )


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS8: gRPC and the SuperLink read it with no password; 0600 protects it.
    pkcs8, pem = serialization.PrivateFormat.PKCS8, serialization.Encoding.PEM
    return key.private_bytes(pem, pkcs8, serialization.NoEncryption())


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise DataError(f"{path}: cannot read the certificate ({exc})") from exc
    except ValueError as exc:
        raise CertificateProblem(f"{path} is not a PEM certificate") from exc


def _san_values(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    # In the certificate's order, as the operator listed them with --host.
    return [str(g.value) for g in san if isinstance(g, x509.DNSName | x509.IPAddress)]


def _names_host(names: Sequence[str], subject: verification.Subject) -> bool:
    if isinstance(subject, x509.IPAddress):
        return str(subject.value) in names
    wanted = {subject.value}  # lower case, from _general_name
    if parent := subject.value.partition(".")[2]:
        wanted.add(f"*.{parent}")  # RFC 6125: a wildcard is exactly one left-most label
    return any(n.lower() in wanted for n in names)
