"""Workaround 5 (executor half): each ClientApp is a fork of a pre-imported SuperExec.

Every message used to start a fresh ``flwr-clientapp`` process that re-imported flwr and
the app's libraries (~3.6 s with torch). The SuperNode now starts fedguard's SuperExec
(``python -m fedguard.deploy.flower superexec``, or the forked executor of
:mod:`~fedguard.deploy.flower.executor_zygote`): Flower's own SuperExec, whose local
executor forks an already-imported process per ClientApp task and runs Flower's own
ClientApp runner in it. Its task poll (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``) slows to 1 s
after 10 s without a task. Preload extra libraries with ``FEDGUARD_CLIENTAPP_PRELOAD``.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from fedguard.deploy.flower._originals import replace_attr
from fedguard.deploy.flower._process import require_preloaded, set_process_name
from fedguard.deploy.flower.env import PRELOAD_ENV
from fedguard.deploy.flower.version import check_flower_version
from fedguard.deploy.procs import exit_after
from fedguard.errors import FedguardError

__all__ = [
    "CLIENTAPP_MODULES",
    "NAME",
    "TARGET",
    "IdleStretchTime",
    "check",
    "make_fork_executor",
    "patch_superexec_fork",
    "preload_executor",
]

NAME = "superexec-fork"
_MODULE = "flwr.supercore.superexec.run_superexec"
TARGET = f"{_MODULE}.get_executor, .time"

CLIENTAPP_MODULES = (
    "flwr.supernode.runtime.run_clientapp",
    "flwr.supercore.exit",
    "flwr.supercore.tls",
)
"""What a forked ClientApp runs: imported before any fork (asserted at each launch)."""

_EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)


class IdleStretchTime:
    """Stands in for ``time`` inside Flower's SuperExec loop: once no task has been
    launched for ``idle_after`` seconds, each poll's sleep lasts ``idle_interval`` (a
    node's idle executor then asks its SuperNode for work once a second, not ten times)."""

    def __init__(self, *, idle_interval: float, idle_after: float) -> None:
        self.idle_interval, self.idle_after = idle_interval, idle_after
        self.last_task = time.monotonic()

    def busy(self) -> None:
        self.last_task = time.monotonic()

    def sleep(self, seconds: float) -> None:
        idle = time.monotonic() - self.last_task > self.idle_after
        time.sleep(max(seconds, self.idle_interval) if idle else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _run_forked_clientapp(spec: Any, sigmask: Iterable[int]) -> NoReturn:
    """Child side of the fork: what ``flwr-clientapp`` would do, minus the imports."""

    def body() -> None:
        from flwr.supercore.exit import exit_handler
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        # Leave the parent's objects to reference counting: a collection here would
        # write to every page holding one and copy it (~55 MB per task, measured).
        gc.freeze()
        set_process_name(b"fg-clientapp")
        # The parent's exit handlers close ITS Runtime API client: running them here
        # could shut down the parent's TLS connection. Start from a clean slate.
        exit_handler.registered_exit_handlers.clear()
        for sig in _EXIT_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        sys.argv = ["flwr-clientapp"]  # Flower derives its telemetry event from argv[0]
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(
                spec.root_certificates_path, spec.insecure
            ),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )

    exit_after(body)


def make_fork_executor(on_launch: Callable[[], None] = lambda: None) -> Any:
    """Flower's local executor, but ClientApp tasks run in a fork of this process."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import LaunchResult
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    class ForkExecutor(SubprocessExecutor):
        """Flower's local executor, but ClientApp tasks run in a fork of this process."""

        def __init__(self) -> None:
            self.children: set[int] = set()

        def launch(self, spec: Any) -> Any:
            on_launch()
            # A run that installs its own dependencies gets its own interpreter (stock).
            if spec.task_type != TaskType.CLIENT_APP or spec.runtime_dependency_install:
                return super().launch(spec)
            require_preloaded(CLIENTAPP_MODULES, what="a ClientApp")
            sys.stdout.flush()
            sys.stderr.flush()
            # Block exit signals until the child has dropped the parent's handlers.
            old = signal.pthread_sigmask(signal.SIG_BLOCK, _EXIT_SIGNALS)
            try:
                pid = os.fork()
                if pid == 0:
                    _run_forked_clientapp(spec, old)
            except OSError as err:
                return LaunchResult.failed(f"fork failed: {err}")
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            self.children.add(pid)
            return LaunchResult.accepted()

        def reconcile(self) -> None:  # called every poll: reap finished children
            for pid in list(self.children):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    self.children.discard(pid)

    return ForkExecutor()


def preload_executor() -> None:
    """Import what the SuperExec and its ClientApp forks run (no-op when already done)."""
    from flwr.supercore.cli import flower_superexec  # noqa: F401
    from flwr.supercore.superexec import run_superexec  # noqa: F401

    extra = [m.strip() for m in os.environ.get(PRELOAD_ENV, "").split(",") if m.strip()]
    # httpcore: the Runtime API client's transport, imported on its first request.
    for name in [*CLIENTAPP_MODULES, "httpcore", *extra]:
        try:
            importlib.import_module(name)
        except Exception as err:  # a missing optional library must not stop the node
            print(f"fedguard: could not preload {name}: {err}", file=sys.stderr, flush=True)


def check() -> None:
    """Raise FedguardError unless the SuperExec loop still looks as this patch expects."""
    check_flower_version()
    rs = importlib.import_module(_MODULE)
    current = getattr(rs, "time", None)
    if not callable(getattr(rs, "get_executor", None)) or not (
        current is time or isinstance(current, IdleStretchTime)
    ):
        raise FedguardError(
            "flwr run_superexec.get_executor or its `time` module is not what fedguard "
            "patches; patch is stale"
        )


def patch_superexec_fork(*, idle_interval: float = 1.0, idle_after: float = 10.0) -> None:
    """Make this process's SuperExec fork ClientApps, polling slower once idle. Idempotent."""
    check()
    from flwr.supercore.constant import ExecutorType

    rs = importlib.import_module(_MODULE)
    if isinstance(rs.time, IdleStretchTime):
        return
    original = rs.get_executor
    clock = IdleStretchTime(idle_interval=idle_interval, idle_after=idle_after)

    def get_executor(executor_type: Any, *args: Any, **kwargs: Any) -> Any:
        if executor_type == ExecutorType.SUBPROCESS:
            return make_fork_executor(on_launch=clock.busy)
        return original(executor_type, *args, **kwargs)

    replace_attr(NAME, rs, "get_executor", get_executor)
    replace_attr(NAME, rs, "time", clock)
