"""`fedguard server --config federation.toml`: SuperLink + enrolment + the ServerApp.

Starts Flower's SuperLink (gRPC Fleet API, TLS and SuperNode authentication on, runtime
dependency installation off, state database in the server's folder), enrols every node
public key found in ``server.keys-dir`` (:mod:`fedguard.server.enrolment`; deleting a key
there later revokes its node from the next round), then submits fedguard's ServerApp with
``flwr run`` and relays its progress. Everything it started is stopped when it returns,
also on Ctrl-C. Run it again with the same config to resume from the last checkpoint; a
changed config is a new run, with its own results and checkpoint folders. The exit status
is the ServerApp's outcome (``state-dir/run-outcome.json``): non-zero, with one line saying
why, unless every round aggregated at least ``min-nodes`` updates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from fedguard._io import atomic_write_text, private_folder
from fedguard.class_labels import class_mapping, declared_labels
from fedguard.console import FlowerLines
from fedguard.deploy.certs import _NODE_NAME as NODE_NAME  # `fedguard certs node NAME`
from fedguard.deploy.flower import MAX_MESSAGE_FLAG, flower_env
from fedguard.deploy.procs import (
    kill_stale_group,
    start,
    stop,
    venv_tool,
    wait_for_port,
)
from fedguard.deploy_config import CONFIG_KEY, FederationConfig, load_federation_config
from fedguard.errors import DataError, FedguardError, invalid
from fedguard.server.enrolment import CONNECTION, Enrolment
from fedguard.server.run_files import read_outcome, run_files
from fedguard.task_identity import (
    APP_NAME,
    APP_PUBLISHER,
    APP_VERSION,
    BUILTIN_TASK,
    bundle_task_table,
    installed_task,
)

__all__ = ["fleet_message_cap", "run_server"]

STARTUP_TIMEOUT_S = 60.0
_MESSAGE_MARGIN = 16 * 2**20


def fleet_message_cap(cfg: FederationConfig) -> int:
    """The largest gRPC message the Fleet API accepts, computed from the task's model.

    A node's largest message is one round's reply: its weights (float32), or its masked
    input in secure aggregation (up to 64 bits per parameter, plus its weight), with
    records, receipts and protocol fields well within the fixed margin. Three times the
    64-bit size plus 16 MiB leaves ample room; anything larger is refused by gRPC from its
    length prefix, before authentication and before it is read into memory.
    """
    from fedguard.task.builtin import build_task_model  # torch: once the config is checked

    t = cfg.task
    model = build_task_model(
        name=t.task or t.model,
        installed=t.task,
        input_shape=tuple(t.input_shape),
        num_classes=t.num_classes,
        key=f"{cfg.source}: task.model",
    )
    params = sum(p.numel() for p in model.parameters())
    return _MESSAGE_MARGIN + 3 * 8 * (params + 1)


_APP_PYPROJECT = """\
# Written by `fedguard server`: the Flower app that runs fedguard's ServerApp/ClientApp.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "{version}"
description = "fedguard federation"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "{publisher}"

[tool.flwr.app.components]
serverapp = "fedguard.server.deploy_app:app"
clientapp = "fedguard.client.app:app"

[tool.flwr.app.config]
{key} = ""
"""


class ServerFailedError(FedguardError):
    """The federation did not complete; the message says where to look."""


def run_server(*, config_path: Path, insecure: bool = False) -> None:
    """Run one federation from the operator's side, from start to its last round.

    Starts a SuperLink (TLS and node authentication unless insecure), enrols the nodes'
    public keys, submits the installed ServerApp as a Flower run and relays its output
    until it ends. The SuperLink is stopped by PID on every way out.

    Parameters
    ----------
    config_path
        The operator's ``federation.toml``, checked before anything starts.
    insecure
        No TLS and no node authentication (also ``[server] insecure``); local tests only.

    Raises
    ------
    ConfigError
        A key of the config, or a file it names, is not usable (one line).
    ServerFailedError
        The run did not complete its rounds; the message says why and where to look.
    """
    cfg = load_federation_config(config_path)
    insecure = insecure or cfg.server.insecure
    if insecure:
        print(
            "WARNING: --insecure: no TLS and no node authentication. Model updates travel "
            "in clear text and anyone can join. For local experiments only.",
            file=sys.stderr,
            flush=True,
        )
    state = private_folder(cfg.state_dir, key=f"{config_path}: state-dir")
    # The SuperLink's database (and its -wal/-shm), logs and Flower's files: owner only.
    os.umask(0o077)
    flwr_home = state / "flwr"
    flwr_home.mkdir(mode=0o700, exist_ok=True)
    env = flower_env(flwr_home)
    s = cfg.server
    control = f"{s.host}:{s.control_port}"
    tls = "insecure = true" if insecure else f'root-certificates = "{s.ca_cert}"'
    atomic_write_text(
        flwr_home / "config.toml",
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{control}"\n{tls}\n',
    )
    # Flower's SuperLink through fedguard's compatibility layer: SQLite waits 30 s for a
    # lock instead of 5 s (under load, Flower answered nodes "Internal server error").
    args = [
        sys.executable,
        "-m",
        "fedguard.deploy.flower",
        "superlink",
        "--host",
        s.host,
        "--port",
        str(s.control_port),
        "--fleet-api-type",
        "grpc-rere",
        "--fleet-api-address",
        f"{s.host}:{s.fleet_port}",
        "--database",
        str(state / "superlink.db"),
        "--disable-runtime-dependency-installation",
        MAX_MESSAGE_FLAG,
        str(fleet_message_cap(cfg)),
    ]
    if insecure:
        args.append("--insecure")
    else:
        args += [
            "--ssl-ca-certfile",
            str(s.ca_cert),
            "--ssl-certfile",
            str(s.server_cert),
            "--ssl-keyfile",
            str(s.server_key),
            "--enable-supernode-auth",
        ]
    pid_file = state / "superlink.pgid"
    if kill_stale_group(pid_file, command="superlink"):
        print("stopped a SuperLink left running by an earlier, crashed server", flush=True)
    with (state / "superlink.log").open("ab") as log:
        link = start(args, env=env, log=log)
        atomic_write_text(pid_file, f"{link.pid}\n")
        try:
            wait_for_port(s.host, s.control_port, timeout=STARTUP_TIMEOUT_S, alive=link)
            wait_for_port(s.host, s.fleet_port, timeout=STARTUP_TIMEOUT_S, alive=link)
            print(
                f"SuperLink up: fleet {s.host}:{s.fleet_port} "
                f"({'plaintext' if insecure else 'TLS, node auth'}), "
                f"state {state}",
                flush=True,
            )
            t = cfg.task
            print(class_mapping(declared_labels(t.schema, t.num_classes)), flush=True)
            if not insecure and s.keys_dir is not None:
                _check_key_names(s.keys_dir)
                enrolment = Enrolment(keys_dir=s.keys_dir, state_dir=state, env=env)
                for line in enrolment.enrol_all():
                    print(line, flush=True)
            app_dir = state / "app"
            app_dir.mkdir(exist_ok=True)
            for stale in app_dir.iterdir():  # the bundle is this pyproject and nothing else
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
            atomic_write_text(
                app_dir / "pyproject.toml",
                _APP_PYPROJECT.format(
                    key=CONFIG_KEY, name=APP_NAME, version=APP_VERSION, publisher=APP_PUBLISHER
                )
                + bundle_task_table(installed_task(cfg.task.task or BUILTIN_TASK)),
            )
            # The ServerApp writes its outcome anew: an earlier run's must not be read.
            run_files(cfg).outcome.unlink(missing_ok=True)
            # Own process (dies with us) rather than subprocess.run: a crashed launcher
            # must not leave `flwr run` streaming forever.
            runner = start(
                [
                    venv_tool("flwr"),
                    "run",
                    str(app_dir),
                    CONNECTION,
                    "--stream",
                    "--run-config",
                    f'{CONFIG_KEY}="{cfg.source}"',
                ],
                env=env,
                log=subprocess.PIPE,
            )
            try:
                _relay_flower(runner, raw_log=state / "flwr-run.log")
                status = runner.wait()
            finally:
                stop(runner)
            _check_finished(cfg, flwr_run_status=status)
        finally:
            stop(link)


def _relay_flower(runner: subprocess.Popen[bytes], *, raw_log: Path) -> None:
    """Show ``flwr run --stream``'s output as fedguard's console shows Flower's (no
    colours, DEBUG lines or tracebacks unless --verbose); all of it is kept in ``raw_log``."""
    lines = FlowerLines(raw_log=str(raw_log))
    with raw_log.open("ab") as raw:
        for chunk in runner.stdout or ():
            raw.write(chunk)
            raw.flush()
            shown = lines.feed(chunk.decode(errors="replace"))
            if shown is not None:
                print(shown, flush=True)


def _check_finished(cfg: FederationConfig, *, flwr_run_status: int) -> None:
    """Exit status from the ServerApp's own outcome file: ``flwr run`` exits 0 even when
    the ServerApp raised, and a ServerApp that ended early says why there (#17.1)."""
    files = run_files(cfg)
    try:
        outcome = read_outcome(files.outcome)
    except DataError as exc:
        raise ServerFailedError(f"federation {cfg.federation.name!r}: {exc}") from None
    if outcome is None or outcome.run_id != files.run_id:
        full = _full_disk(cfg.state_dir, cfg.out)
        where = full or f"see {cfg.state_dir / 'superlink.log'}"
        raise ServerFailedError(
            f"federation {cfg.federation.name!r}: the ServerApp ended without saying how "
            f"(flwr run status {flwr_run_status}); {where}"
        )
    if not outcome.completed or outcome.rounds_done < outcome.rounds_planned:
        raise ServerFailedError(
            f"federation {cfg.federation.name!r}: {outcome.reason} (after round "
            f"{outcome.rounds_done} of {outcome.rounds_planned}; run {files.name})"
        )
    print(
        f"federation {cfg.federation.name!r} finished {outcome.rounds_done} rounds: "
        f"{outcome.reason}",
        flush=True,
    )


_FULL_BELOW = 4 * 2**20  # a disk with less free is why nothing could be written


def _full_disk(*folders: Path) -> str | None:
    """Which of ``folders`` sits on a (nearly) full disk, said so that the operator knows
    which disk to free (its log, on that disk, could not record it)."""
    for folder in folders:
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        try:
            st = os.statvfs(existing or folder)
        except OSError:
            continue
        free = st.f_bavail * st.f_frsize
        if free < _FULL_BELOW:
            return (
                f"the disk holding {folder} is full ({free // 1024} KiB free): the ServerApp "
                f"could not write its checkpoint, metrics or outcome there; free space on it "
                f"and run the same command again to resume"
            )
    return None


def _check_key_names(keys_dir: Path) -> None:
    """Every ``NAME.pub`` in keys-dir names a node the way `fedguard certs node` does:
    the name is printed in every console line about that node."""
    for pub in sorted(keys_dir.glob("*.pub")):
        if not NODE_NAME.match(pub.stem):
            raise invalid(
                "server.keys-dir",
                allowed="NAME.pub files whose NAME is a letter or digit, then up to 62 of "
                "A-Z a-z 0-9 _ . -",
                got=pub.name,
            )
