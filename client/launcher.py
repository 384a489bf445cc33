"""`fedguard client --config node.toml`: a SuperNode running fedguard's ClientApp.

Before starting Flower's SuperNode it checks the TLS connection itself, so that a wrong
CA certificate or a server certificate for another host is reported as exactly that
(Flower only says "connection unavailable"). A key the server has not enrolled is
recognised in the SuperNode's output and reported plainly too.
"""

from __future__ import annotations

import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from types import FrameType

from fedguard._procs import flower_env, start, stop
from fedguard.client.app import NODE_CONFIG_KEY
from fedguard.deploy_config import NodeConfig, load_node_config
from fedguard.errors import FedguardError
from fedguard.flower_compat import PRELOAD_ENV

__all__ = ["NodeRefusedError", "check_server_tls", "run_client"]

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
                raise NodeRefusedError("the server's certificate has expired") from None
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


def _explain(output: str, cfg: NodeConfig) -> str:
    if "2004" in output or "Failed to activate SuperNode" in output:
        return (
            f"this node's key is not enrolled on the server: give "
            f"{cfg.node.private_key}.pub to the operator to enrol"
        )
    if "2001" in output:
        return "the server requires node authentication: set node.private-key"
    if "CERTIFICATE_VERIFY_FAILED" in output:
        return "the server's certificate does not verify with node.ca-cert"
    if "302" in output:
        return f"node.private-key {cfg.node.private_key} is not an EC key in OpenSSH format"
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return "the SuperNode stopped: " + (lines[-1] if lines else "no output")


def run_client(*, config_path: Path) -> None:
    cfg = load_node_config(config_path)
    n = cfg.node
    n.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    flwr_home = n.state_dir / "flwr"
    flwr_home.mkdir(mode=0o700, exist_ok=True)
    # Flower's SuperNode through fedguard's compatibility layer: version-checked patches
    # that cut its idle polls and fork each ClientApp from a warm, pre-imported process
    # (stock Flower starts a fresh process per message: ~4 s of imports per round).
    args = [
        sys.executable,
        "-m",
        "fedguard.flower_compat",
        "supernode",
        "--superlink",
        n.server,
        "--grpc-rere",
        "--port",
        str(n.port),
        "--node-config",
        f'{NODE_CONFIG_KEY}="{cfg.source}"',
    ]
    if n.insecure:
        print(
            "WARNING: insecure: no TLS; this node's updates travel in clear text.",
            file=sys.stderr,
            flush=True,
        )
        args.append("--insecure")
    else:
        if n.ca_cert is None or n.private_key is None:  # the loader refuses this already
            raise NodeRefusedError("node.ca-cert and node.private-key are required with TLS")
        check_server_tls(server=n.server, ca_cert=n.ca_cert)
        args += [
            "--root-certificates",
            str(n.ca_cert),
            "--auth-supernode-private-key",
            str(n.private_key),
        ]
    log_path = n.state_dir / "supernode.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        env = flower_env(flwr_home, {PRELOAD_ENV: "torch,opacus,fedguard.client.app"})
        node = start(args, env=env, log=log)

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            stop(node)
            sys.exit(128 + signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        print(
            f"node {n.name}: SuperNode started (pid {node.pid}), server {n.server}; "
            f"state {n.state_dir}",
            flush=True,
        )
        try:
            status = node.wait()
        finally:
            stop(node)
    if status != 0:
        with log_path.open("rb") as fh:  # only this run's output
            fh.seek(offset)
            tail = fh.read().decode(errors="replace")[-4000:]
        raise NodeRefusedError(f"node {n.name}: {_explain(tail, cfg)}")
