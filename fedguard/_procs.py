"""Starting and stopping the Flower processes fedguard wraps.

Each child runs in its own session (process group) so that stopping it also stops what
it spawned (the SuperLink starts `flower-superexec` and `flwr-serverapp`). Stopping is
SIGTERM, a grace period, then SIGKILL: a SuperNode has been seen ignoring SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["flower_env", "free_port", "start", "stop", "venv_tool", "wait_for_port"]


def venv_tool(name: str) -> str:
    """A console script installed beside this interpreter (flwr, flower-superlink, ...)."""
    return str(Path(sys.executable).parent / name)


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a Flower process: quiet, offline, state inside ``flwr_home``."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Flower's launchers spawn helpers by bare name; they live beside our python.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    try:  # round-overhead settings, when the compatibility layer is present
        from fedguard.flower_compat import FAST_POLL_ENV

        env.update(FAST_POLL_ENV)
    except ImportError:
        pass
    env.update(extra or {})
    return env


def start(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    log: IO[bytes] | int | None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(args),
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        cwd=cwd,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """Stop ``proc`` and its process group; SIGKILL what outlives the grace period."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Children of the group may outlive the leader: kill the group in any case.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str, port: int, *, timeout: float, alive: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(
                f"process exited with status {alive.returncode} before {host}:{port} opened"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{host}:{port} did not open within {timeout:.0f}s")
