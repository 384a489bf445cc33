"""What a node checks of its server before Flower's SuperNode connects, and says plainly.

A wrong CA certificate, a server certificate for another host or an expired one is
reported as exactly that (Flower only says "connection unavailable"); a node configured
without TLS is refused the same way when the server speaks TLS. The server's certificate
is read unverified only to describe it (when it expired), never to trust it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

from fedguard.errors import FedguardError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "NodeRefusedError",
    "check_server_plaintext",
    "check_server_tls",
]

CONNECT_TIMEOUT_S = 30.0


class NodeRefusedError(FedguardError):
    """The node cannot join the federation; the message says why and what to do."""


def check_server_tls(*, server: str, ca_cert: Path, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Handshake with the server as the SuperNode will, and name what is wrong."""
    host, _, port = server.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca_cert))
    context.set_alpn_protocols(["h2"])
    deadline = time.monotonic() + timeout
    while True:
        try:
            with (
                socket.create_connection((host, int(port)), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=host),
            ):
                return
        except ssl.SSLCertVerificationError as exc:
            reason = (exc.verify_message or str(exc)).lower()
            if "mismatch" in reason or "hostname" in reason:
                raise NodeRefusedError(
                    f"node.server: the server's certificate is not valid for host {host!r} "
                    f"(ask the operator for a certificate naming it: fedguard certs init "
                    f"--host {host})"
                ) from None
            if "expired" in reason:
                raise NodeRefusedError(_expired(host, int(port))) from None
            raise NodeRefusedError(
                f"node.ca-cert: the server's certificate is not signed by the CA in "
                f"{ca_cert} ({exc.verify_message}); get the federation's ca.crt from the "
                f"operator"
            ) from None
        except ssl.SSLError as exc:
            raise NodeRefusedError(f"TLS with {server} failed: {exc.reason or exc}") from None
        except OSError:
            if time.monotonic() > deadline:
                raise NodeRefusedError(
                    f"node.server: nothing answers at {server} (is the server running?)"
                ) from None
            time.sleep(0.5)


def check_server_plaintext(*, server: str, timeout: float = 5.0) -> None:
    """Refuse to start a plaintext node against a server that speaks TLS.

    Flower's SuperNode would retry such a connection forever ("connection attempt
    failed"); this says what is wrong instead. Nothing answering, or a server without
    TLS, passes: the SuperNode then deals with it as configured.
    """
    host, _, port = server.rpartition(":")
    try:
        _peer_certificate(host, int(port), timeout=timeout)
    except (ssl.SSLError, OSError, ValueError):
        return
    raise NodeRefusedError(
        f"node.insecure: the server at {server} requires TLS, and this node is configured "
        "without it (insecure = true): it would never be let in; set node.ca-cert and "
        "node.private-key (from the operator) and remove insecure"
    )


def _peer_certificate(host: str, port: int, *, timeout: float) -> bytes:
    """The server's TLS certificate (DER), read WITHOUT verifying it: only to describe
    a server, never to trust one. Raises ``ssl.SSLError``/``OSError`` if there is none."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # nothing is sent over this connection
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server sent no certificate")
    return der


def _expired(host: str, port: int) -> str:
    from cryptography import x509  # only to say when: ~5 MB a launcher need not hold

    when = "on an unknown date"
    with contextlib.suppress(ssl.SSLError, OSError, ValueError):
        cert = x509.load_der_x509_certificate(_peer_certificate(host, port, timeout=5))
        when = f"on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    now = datetime.now(UTC)
    return (
        f"node.server: the server's certificate for {host} expired {when} (now "
        f"{now:%Y-%m-%d %H:%M} UTC): this node does not connect to a server it cannot "
        "verify; ask the operator to renew it"
    )
