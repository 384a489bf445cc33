"""`fedguard client --config node.toml`: a SuperNode running fedguard's ClientApp.

Before starting Flower's SuperNode it checks the TLS connection itself
(:mod:`fedguard.client.server_checks`), so that a wrong CA certificate, a server
certificate for another host or an expired one is reported as exactly that (Flower only
says "connection unavailable"); a node configured without TLS is refused the same way
when the server speaks TLS. A key the server has not enrolled is recognised in the
SuperNode's output and reported plainly too. What the SuperNode and its ClientApps
share is imported once, before they are forked (:mod:`fedguard.client.fork_preload`).

A key revoked while the node runs (the operator deleted it from the server's keys-dir):
the SuperLink then refuses the node's calls and Flower's SuperNode stops itself, with
status 0 and nothing in its log to say why. The launcher starts it once more to ask: an
activation refused after an accepted session means the key was revoked, and it says so.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

from fedguard._io import private_folder
from fedguard.class_labels import class_mapping, declared_labels
from fedguard.client.app_bundle import bundle_refusal
from fedguard.client.fork_preload import preload_modules, warm_up_crypto
from fedguard.client.server_checks import (
    NodeRefusedError,
    check_server_plaintext,
    check_server_tls,
)
from fedguard.client.state_lock import lock_file
from fedguard.client.watch import ServeWatch, server_reachable, wait_for_server
from fedguard.console import is_verbose
from fedguard.deploy.flower import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_PATIENCE,
    PRELOAD_ENV,
    flower_env,
    patch_supernode_bundle_check,
    plain_console,
)
from fedguard.deploy.flower.cli_output import parse_supernode_output
from fedguard.deploy.flower.entry import preload_supernode, supernode_main
from fedguard.deploy.procs import fork_start, free_port, stop
from fedguard.deploy_config import NODE_CONFIG_KEY, NodeConfig, load_node_config
from fedguard.files import NODE_LOCK, SESSION_FILE, UPDATE_FILE
from fedguard.task_identity import BUILTIN_TASK, installed_task

__all__ = ["NodeRefusedError", "run_client"]

MAX_RECONNECTS = 3  # a SuperNode that stops on its own after being accepted is restarted
# How long the server may still hold a crashed session of this key online (it refuses to
# activate the key again meanwhile): its heartbeat patience, plus a margin.
SESSION_RELEASE_S = HEARTBEAT_PATIENCE * HEARTBEAT_INTERVAL_S + 15
_LOG_HEAD, _LOG_TAIL = 65536, 16384  # bytes of a SuperNode run's log read to explain it


def _explain(output: str, cfg: NodeConfig) -> str:
    said = parse_supernode_output(output)
    if said.activation_refused:
        return (
            f"the server refused to activate this node's key for {SESSION_RELEASE_S} s, longer "
            f"than it holds a crashed session: either the key is not enrolled (give "
            f"{cfg.node.private_key}.pub to the operator to enrol) or another process with "
            "this key is connected (this key is already connected elsewhere)"
        )
    if said.auth_required:
        return "the server requires node authentication: set node.private-key"
    if said.certificate_rejected:
        return "the server's certificate does not verify with node.ca-cert"
    if said.key_invalid:
        return f"node.private-key {cfg.node.private_key} is not an EC key in OpenSSH format"
    return "the SuperNode stopped: " + (said.last_line or "no output")


def run_client(*, config_path: Path) -> None:
    """Run a node until its federation finishes: the hospital's or bank's side.

    Checks ``node.toml`` and loads and checks the node's data before anything connects,
    takes the state folder's lock (one node process per folder), waits for the server
    with back-off, checks its TLS certificate, then runs a SuperNode whose ClientApp
    accepts only bundles naming the installed task. Returns when the server has closed
    a run whose last planned round this node trained.

    Parameters
    ----------
    config_path
        The node's ``node.toml``.

    Raises
    ------
    ConfigError, DataError
        The config or the data set cannot be used (one line naming the key or file).
    StateFolderInUseError
        Another node process holds the state folder (its PID is named).
    NodeRefusedError
        The server refused this node, or the SuperNode stopped for a reason it names.
    """
    cfg = load_node_config(config_path)
    n = cfg.node
    private_folder(n.state_dir, key=f"{config_path}: node.state-dir")
    os.umask(0o077)  # Flower's logs and files in the state folder: owner only
    # One node process per state folder, for its whole life (its forks inherit the lock):
    # a second one exits naming the PID that holds it (StateFolderInUseError, one line).
    lock_file(n.state_dir / NODE_LOCK, wait=False)
    flwr_home = n.state_dir / "flwr"
    flwr_home.mkdir(mode=0o700, exist_ok=True)
    # Flower's SuperNode through fedguard's compatibility layer: version-checked patches
    # that cut its idle polls and fork each ClientApp from a warm, pre-imported process
    # (stock Flower starts a fresh process per message: ~4 s of imports per round).
    args = [
        "--superlink",
        n.server,
        "--grpc-rere",
        "--node-config",
        f'{NODE_CONFIG_KEY}="{cfg.source}"',
    ]

    def prepared() -> tuple[Path, dict[str, str]]:
        """The node's environment, warm imports and its data, loaded and checked."""
        log_path = n.state_dir / "supernode.log"
        env = flower_env(flwr_home, {PRELOAD_ENV: ",".join(preload_modules(cfg))})
        # One copy of flwr, torch and Opacus per node: imported here, once, then the SuperNode
        # is forked from this process (not started as a new interpreter), its SuperExec from
        # it, and each ClientApp from that; all share these pages copy-on-write (see README,
        # Load). The node's environment is set first: Flower reads some of it at import.
        os.environ.update(env)
        preload_supernode()
        # Flower colours its log lines; the SuperNode's log is a file (#17.8): plain text.
        plain_console(colored=is_verbose())
        _remove_round_secrets(n.state_dir, name=n.name)
        # The node's data, loaded and checked now: a missing or unreadable data set stops the
        # node here with the data error (it used to serve, silently, until a round came). The
        # SuperNode and every ClientApp are forked from this process, so they find it loaded.
        from fedguard.client.node import node_runtime
        from fedguard.errors import DataError

        try:
            runtime = node_runtime(str(cfg.source))
        except DataError as exc:
            raise NodeRefusedError(f"node {n.name}: {exc}") from None
        labels = declared_labels(cfg.data.schema, runtime.num_classes)
        print(
            f"node {n.name}: {len(runtime.y)} training records; {class_mapping(labels)}", flush=True
        )
        return log_path, env

    # A node whose server is not up yet checks its data first: a missing data set is
    # named at once, not after the wait. With the server up, its checks come first (a
    # node pointed at the wrong server hears that before anything is loaded).
    prepared_early = None if server_reachable(n.server) else prepared()
    # A node started before its server waits for it, saying so at each attempt (#17.2).
    wait_for_server(server=n.server, state_dir=n.state_dir, name=n.name)
    if n.insecure:
        print(
            "WARNING: insecure: no TLS; this node's updates travel in clear text.",
            file=sys.stderr,
            flush=True,
        )
        args.append("--insecure")
        check_server_plaintext(server=n.server)
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
    # After the server checks: a node pointed at the wrong server hears that first.
    args += ["--port", str(_runtime_port(n.port, name=n.name))]
    log_path, env = prepared() if prepared_early is None else prepared_early
    # Before the SuperNode is forked: every run's app bundle is checked where it is
    # fetched, and a bundle that is not exactly fedguard's installed app is refused.
    installed = installed_task(cfg.data.task or BUILTIN_TASK)
    patch_supernode_bundle_check(
        lambda content, run_id: bundle_refusal(content, run_id=run_id, installed=installed)
    )
    warm_up_crypto()
    gc.collect()
    gc.freeze()  # no collection in any of them writes to (and so copies) these pages
    history: list[str] = []  # the node's event lines this process relayed, every session
    was_active = False
    refused_since: float | None = None
    attempt = 0
    while attempt <= MAX_RECONNECTS:
        status, output, finished = _run_supernode(
            args, env=env, log_path=log_path, cfg=cfg, history=history
        )
        if finished:  # said by the watch: the run's last round trained, the server closed
            return
        if not was_active and _activation_refused(output):
            # A key the server enrolled is still refused while the server holds an earlier
            # session of it online (this node, crashed and restarted): wait that out.
            now = time.monotonic()
            refused_since = refused_since if refused_since is not None else now
            if now - refused_since < SESSION_RELEASE_S:
                print(
                    f"node {n.name}: the server refused to activate this key; it may still "
                    f"hold this node's previous session (a crash or restart) online for up "
                    f"to {HEARTBEAT_PATIENCE * HEARTBEAT_INTERVAL_S} s: retrying in 10 s "
                    f"({now - refused_since:.0f} of {SESSION_RELEASE_S} s)",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(10)
                # Still there? A node whose server went away meanwhile would retry forever.
                if n.insecure:
                    check_server_plaintext(server=n.server)
                elif n.ca_cert is not None:
                    check_server_tls(server=n.server, ca_cert=n.ca_cert)
                continue
        attempt += 1
        if parse_supernode_output(output).accepted:  # accepted, then stopped on its own
            was_active = True
            print(
                f"node {n.name}: the SuperNode stopped on its own (status {status}; the "
                "server refused its calls or ended the session); reconnecting to learn why",
                file=sys.stderr,
                flush=True,
            )
            continue
        if was_active and _activation_refused(output):
            raise NodeRefusedError(
                f"node {n.name}: the server revoked this node's enrolment (it no longer "
                f"accepts the key {n.private_key}.pub; the operator removed it from the "
                f"server's keys-dir): this node receives and sends nothing more; a revoked "
                f"key cannot be enrolled again: make a new one with `fedguard certs node "
                f"{n.name} --force` and give the .pub to the operator"
            )
        if status != 0:
            raise NodeRefusedError(f"node {n.name}: {_explain(output, cfg)}")
        return  # stopped before it connected, and not by a refusal: nothing to report
    raise NodeRefusedError(
        f"node {n.name}: the SuperNode stopped {MAX_RECONNECTS + 1} times after the server "
        f"accepted it; see {log_path}"
    )


def _remove_round_secrets(state_dir: Path, *, name: str) -> None:
    """A node killed during secure aggregation left its round's SecAgg secrets (private
    keys, mask seed, shares) and its noised update, not yet masked, in its state folder:
    removed at start-up, under the node's lock. What they were for is lost with them: a
    re-asked round is then answered afresh or refused (client/released.py keeps what was
    sent, so nothing goes into a second sum), and an update never sent is voided at the
    next request (client/void.py)."""

    for stale in (SESSION_FILE, UPDATE_FILE):
        path = state_dir / stale
        if path.exists():
            path.unlink()
            print(
                f"node {name}: removed {path} (an interrupted round's secure-aggregation "
                "secrets or unmasked update)",
                flush=True,
            )


def _runtime_port(port: int | None, *, name: str) -> int:
    """The SuperNode's local Runtime API port: ``node.port``, checked free, or a free one.

    Flower only said "SuperNode Runtime HTTP API failed to start" when two nodes on one
    host shared a port; the cause was in supernode.log alone."""
    if port is None:
        return free_port()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", port))
    except OSError:
        holder = _port_holder(port)
        raise NodeRefusedError(
            f"node {name}: node.port {port} is already in use{holder}; give each node on "
            "this host its own node.port, or leave the key out to use a free one"
        ) from None
    return port


def _port_holder(port: int) -> str:
    """`` by PID N (command)`` for a listening TCP port, from /proc; ``""`` if unknown."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if str(fd.readlink()) in inodes:
                    command = (proc / "comm").read_text().strip()
                    return f" by PID {proc.name} ({command})"
    return ""


def _activation_refused(output: str) -> bool:
    return parse_supernode_output(output).activation_refused


def _run_supernode(
    args: list[str], *, env: dict[str, str], log_path: Path, cfg: NodeConfig, history: list[str]
) -> tuple[int, str, bool]:
    """Run the SuperNode until it ends; its status, what it wrote this time, and whether
    it was stopped because the federation finished."""
    n = cfg.node
    offset = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        node = fork_start(supernode_main, args, env=env, log=log)

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

        def finish() -> None:  # only a signal here: the main thread is the one waiting
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)

        watch = ServeWatch(
            server=n.server,
            state_dir=n.state_dir,
            name=n.name,
            on_finished=finish,
            history=history,
            raw_log=log_path if is_verbose() else None,
        )
        watch.start()
        try:
            status = node.wait()
        finally:
            watch.stop()
            stop(node)
    with log_path.open("rb") as fh:  # only this run's output: its start and its end
        fh.seek(offset)
        head = fh.read(_LOG_HEAD)
        end = fh.seek(0, 2)
        fh.seek(max(offset + len(head), end - _LOG_TAIL))
        return status, (head + fh.read()).decode(errors="replace"), watch.finished is not None
