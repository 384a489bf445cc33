"""Every workaround fedguard applies to Flower's internals lives here, pinned to one version.

A deployment round with trivial work takes ~6 s in stock Flower 1.39, almost all of it
waiting (see ../shared/FLOWER-NOTES.md):

1. ``HttpGrid.send_and_receive`` sleeps a hard-coded 3 s between pulls for replies.
   :func:`send_and_receive` replaces it using only the PUBLIC ``Grid.push_messages`` /
   ``Grid.pull_messages``; no patch, so it works on any Flower version.
2. The SuperNode's Fleet loop sleeps a hard-coded 3 s when the SuperLink has nothing for
   it, and 0.5 s between checks for the ClientApp's reply
   (``flwr/supernode/start_client_internal.py``). :func:`patch_supernode_polling` caps
   these sleeps (that module's ``time`` reference only): 0.1 s while messages come, 1 s
   once the node has been idle for 10 s (polls are what an idle node costs the server).
3. A message (or reply) is visible before its payload has been uploaded, and the puller
   then backs off 1 s, 2 s, ... (``pull_objects``' ``initial_backoff``). With fast polls
   this race is the common case. :func:`patch_object_pull_backoff` starts it at 0.05 s;
   call it in the ServerApp's process (the SuperNode gets it from :func:`supernode_main`).
4. The SuperExec that starts the ClientApp polls every 1 s for a task. Flower reads
   ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` for this: :data:`FAST_POLL_ENV` sets it (no patch).
5. Every message starts a fresh ``flwr-clientapp`` process that re-imports flwr and the
   app's libraries (~3.6 s with torch). :func:`supernode_main` makes the SuperNode start
   ``python -m fedguard.flower_compat superexec`` instead of ``flower-superexec``: Flower's
   own SuperExec, whose local executor forks an already-imported process per ClientApp
   task and runs Flower's own ClientApp runner in it; its task poll (4.) slows to 1 s
   after 10 s without a task. Preload extra libraries
   (``torch,opacus``) with ``FEDGUARD_CLIENTAPP_PRELOAD``.

Two more keep a federation alive under load (seen with 22+ nodes on a busy 2-core box):

6. The SuperLink's SQLite connections wait at most 5 s for a lock; longer, and it answers
   the node "Internal server error" (``database is locked``).
   :func:`patch_sqlite_busy_timeout` lets them wait 30 s; launch the SuperLink with
   ``python -m fedguard.flower_compat superlink <args of flower-superlink>``.
7. A SuperNode's heartbeat thread retries only UNAVAILABLE and DEADLINE_EXCEEDED: any
   other error (such as that INTERNAL) ends it for good, the SuperLink marks the node
   offline, and it is never sent a message again although its process lives.
   :func:`patch_heartbeat_retry` retries INTERNAL and UNKNOWN like a lost connection.

11. A SuperNode heartbeats every 30 s and the SuperLink holds it online for 60 s after the
    last one, refusing to activate its key again meanwhile: a node restarted after a crash
    was refused for up to a minute. :func:`patch_heartbeat_interval` (with 7.) sets 10 s,
    Flower's minimum, so a crashed session is released within ~20 s.

12. A SuperNode installs and imports whatever code a run's app bundle (FAB) carries.
    :func:`patch_supernode_bundle_check` wraps ``_pull_and_store_message`` so that the
    bundle is checked (a callable the node's launcher passes in) as soon as it is fetched,
    before the run is stored or any task created; a refused run gets an error reply
    (``INVALID_FAB``) with the reason, and nothing of it is imported. :func:`supernode_main`
    refuses to start without this check.

One bounds what an outsider can make the SuperLink allocate:

10. The Fleet API accepts gRPC messages up to 2 GiB, and authentication is checked only
    once a message has been received: three unauthenticated 512 MB ``PushMessages`` calls
    took a SuperLink from 387 MB to a 2.3 GB peak. ``superlink --fedguard-max-message-bytes
    N`` (:func:`superlink_main`) sets ``flower_superlink.GRPC_MAX_MESSAGE_LENGTH`` (read when
    the Fleet server is built), so gRPC refuses a longer message from its length prefix
    with RESOURCE_EXHAUSTED before reading it.

And one keeps a node's memory to one copy of its libraries (~330 MB of flwr, torch,
Opacus, SciPy per node: what limits how many nodes one machine holds):

8. The SuperExec of 5. is not a new interpreter either: :class:`_ExecutorZygote` forks
   it from the SuperNode before Flower starts a thread, after importing what both run
   (:func:`preload_supernode` lets a launcher import it all once and fork the SuperNode
   too). The garbage collector's view of those objects is frozen first, and again in
   each ClientApp fork, so that no collection writes to (and copies) their pages.
9. Flower imports SQLAlchemy and Alembic (~28 MB) into every SuperNode and SuperExec,
   which keep their state in memory and never open a database: two of its modules
   import them for the SuperLink's SQL stores. :func:`defer_sql_stores` replaces those
   two with stand-ins that import the real module the first time anything of it is
   used.

(Over the 400-line guide on purpose: FLOWER-NOTES.md asks that every workaround touching
Flower's internals live in one module pinned to one version; splitting it would split
the pin.)

Launch a patched SuperNode with ``python -m fedguard.flower_compat supernode <args of
flower-supernode>``; it applies 2, 3, 5 with 8, 7 and 9 unless
``FEDGUARD_SUPERNODE_PATCHES`` names fewer (comma-separated from
``poll,backoff,warm,heartbeat,nosql``; empty: none). Patches 2, 3 and 5 to 9 touch
private Flower code: they refuse to run on any Flower but
:data:`FLWR_VERSION` (:func:`check_flower_version`) and check that what they replace still
looks as expected.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

from fedguard._procs import exit_after
from fedguard.errors import FedguardError

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.serverapp import Grid

__all__ = [
    "FAST_POLL_ENV",
    "FLWR_VERSION",
    "PATCHES_ENV",
    "PRELOAD_ENV",
    "check_flower_version",
    "defer_sql_stores",
    "patch_heartbeat_interval",
    "patch_supernode_bundle_check",
    "patch_heartbeat_retry",
    "patch_object_pull_backoff",
    "patch_sqlite_busy_timeout",
    "patch_supernode_polling",
    "patch_supernode_warm_clientapp",
    "preload_supernode",
    "send_and_receive",
    "superexec_main",
    "superlink_main",
    "supernode_main",
]

FLWR_VERSION = "1.39.0"
"""The only Flower version whose internals the patches below were written against."""

FAST_POLL_ENV: dict[str, str] = {
    # SuperExec task poll (flwr/supercore/superexec/run_superexec.py; default 1 s, range
    # 0.01-60). Read by the SuperExec the SuperNode starts (ClientApp tasks) and by the one
    # the SuperLink starts (ServerApp). The only poll/interval setting Flower 1.39 reads
    # from the environment. 0.1 s costs ~10 cheap loopback HTTP calls/s per SuperExec.
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
}
"""Environment for every Flower process fedguard starts (merged by the launchers)."""

PATCHES_ENV = "FEDGUARD_SUPERNODE_PATCHES"
"""Which patches :func:`supernode_main` applies: comma-separated ``poll,backoff,warm,...``."""

_ALL_PATCHES = ("poll", "backoff", "warm", "heartbeat", "nosql")

PRELOAD_ENV = "FEDGUARD_CLIENTAPP_PRELOAD"
"""Comma-separated modules the warm executor imports once (e.g. ``torch,opacus``)."""

_SUPERNODE_MODULE = "flwr.supernode.start_client_internal"


def _installed_flower_version() -> str | None:
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return None


def check_flower_version() -> None:
    """Refuse to patch a Flower other than :data:`FLWR_VERSION`.

    Raises:
        FedguardError: naming the installed and the pinned version.
    """
    installed = _installed_flower_version()
    if installed != FLWR_VERSION:
        raise FedguardError(
            f"flwr {installed or 'is not installed'}"
            f"{' is installed' if installed else ''}, but fedguard.flower_compat is"
            f" written for flwr=={FLWR_VERSION} (it patches Flower internals); install"
            f" flwr=={FLWR_VERSION} or review fedguard/flower_compat.py for the new version"
        )


# ---------------------------------------------------------------- 1. ServerApp replies


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float,
    poll_interval: float = 0.05,
) -> list[Message]:
    """Push ``messages`` and pull replies until all are in or ``timeout`` s have passed.

    Same contract as ``Grid.send_and_receive`` (replies in arrival order, possibly fewer
    than sent on timeout) but pulls every ``poll_interval`` s instead of every 3 s. Uses
    only the public ``push_messages``/``pull_messages``. Each pull is one local HTTP call
    from the ServerApp to the SuperLink.
    """
    if not timeout >= 0:
        raise ValueError(f"timeout: expected a number of seconds >= 0, got {timeout!r}")
    if not poll_interval > 0:
        raise ValueError(f"poll_interval: expected seconds > 0, got {poll_interval!r}")
    deadline = time.monotonic() + timeout
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        time.sleep(min(poll_interval, remaining))
    return replies


# ---------------------------------------------------------------- 2. SuperNode idle poll


class _CappedSleepTime:
    """Stands in for the ``time`` module inside one Flower module: ``sleep`` is capped.

    Flower's idle poll (``sleep(3)``, the SuperLink had nothing) waits ``cap`` while the
    node is busy, and ``idle_cap`` once no message has come for ``idle_after`` seconds;
    a pulled message (:meth:`busy`) makes it busy again.
    """

    def __init__(self, cap: float, *, idle_cap: float, idle_after: float) -> None:
        self.cap, self.idle_cap, self.idle_after = cap, idle_cap, idle_after
        self.last_message = time.monotonic()

    def busy(self) -> None:
        self.last_message = time.monotonic()

    def sleep(self, seconds: float) -> None:
        idle = seconds >= _IDLE_SLEEP and time.monotonic() - self.last_message > self.idle_after
        time.sleep(min(seconds, self.idle_cap if idle else self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_IDLE_SLEEP = 3  # Flower 1.39's sleep when the SuperLink had no message for the node


def _supernode_module() -> ModuleType:
    check_flower_version()
    return importlib.import_module(_SUPERNODE_MODULE)


def patch_supernode_polling(
    *, interval: float = 0.1, idle_interval: float = 1.0, idle_after: float = 10.0
) -> None:
    """Cap every ``time.sleep`` in Flower's SuperNode main loop at ``interval`` seconds,
    or at ``idle_interval`` once no message has come for ``idle_after`` seconds.

    Flower 1.39 hard-codes ``time.sleep(3)`` when the SuperLink has no message for the
    node and ``time.sleep(0.5)`` while waiting for the ClientApp's reply (and its
    payload). Only that module's ``time`` name is replaced, and its
    ``_pull_and_store_message`` wrapped to see messages arrive, so nothing else in the
    process changes. Each poll is one TLS gRPC call the SuperLink answers: at 0.1 s an
    idle node costs the SuperLink ~5% of a core (measured, 2-core box), so 50 idle nodes
    would keep it busy; idle nodes poll every ``idle_interval`` instead, and a round's
    later messages (secure aggregation's stages, the next round) still come at
    ``interval``. Idempotent; a later call changes the settings.
    """
    if not 0 < interval <= idle_interval <= 3:
        raise ValueError(
            f"interval, idle_interval: expected seconds with 0 < interval <= idle_interval"
            f" <= 3, got {interval!r}, {idle_interval!r}"
        )
    if not idle_after >= 0:
        raise ValueError(f"idle_after: expected seconds >= 0, got {idle_after!r}")
    module = _supernode_module()
    current = getattr(module, "time", None)
    if isinstance(current, _CappedSleepTime):
        current.cap, current.idle_cap, current.idle_after = interval, idle_interval, idle_after
        return
    pull = getattr(module, "_pull_and_store_message", None)
    if current is not time or not callable(pull):
        raise FedguardError(
            f"{_SUPERNODE_MODULE}: `time` is not the time module or "
            "`_pull_and_store_message` is missing; patch is stale"
        )
    clock = _CappedSleepTime(interval, idle_cap=idle_interval, idle_after=idle_after)

    @functools.wraps(pull)
    def pull_and_store_message(*args: Any, **kwargs: Any) -> Any:
        run_id = pull(*args, **kwargs)
        if run_id is not None:  # a message came: poll fast for the ones that follow
            clock.busy()
        return run_id

    module._pull_and_store_message = pull_and_store_message  # type: ignore[attr-defined]
    module.time = clock  # type: ignore[attr-defined]


# ---------------------------------------------------------------- 3. payload back-off


def patch_object_pull_backoff(*, initial: float = 0.05) -> None:
    """Start Flower's object-pull retry back-off at ``initial`` s instead of 1 s.

    ``pull_objects`` retries an object that is announced but not yet uploaded with
    exponential back-off (1, 2, 4, ... s, cap 10 s, 500 tries). The patch changes only
    the default of ``initial_backoff`` (no caller passes it); cap and tries stay.
    """
    if not 0 < initial <= 1:
        raise ValueError(f"initial: expected seconds in (0, 1], got {initial!r}")
    check_flower_version()
    utils = importlib.import_module("flwr.supercore.inflatable.inflatable_utils")
    for fn in (utils.pull_objects, utils.pull_and_inflate_object_from_tree):
        defaults = fn.__kwdefaults__
        if not defaults or "initial_backoff" not in defaults:
            raise FedguardError(f"flwr {fn.__name__} has no initial_backoff; patch is stale")
        defaults["initial_backoff"] = initial


# ---------------------------------------------------------------- 5. warm ClientApp


class _SuperExecRedirect:
    """Stands in for ``subprocess`` in the SuperNode module: starts our SuperExec, as the
    SuperNode's :class:`_ExecutorZygote` when it has one, else as a new interpreter."""

    zygote: _ExecutorZygote | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @classmethod
    def Popen(cls, args: Any, *rest: Any, **kwargs: Any) -> Any:  # noqa: N802
        if isinstance(args, list) and args[:1] == ["flower-superexec"]:
            zygote, cls.zygote = cls.zygote, None
            if zygote is not None and not rest and not kwargs and zygote.launch(args[1:]):
                return zygote  # Flower 1.39 drops what Popen returns
            args = [sys.executable, "-m", "fedguard.flower_compat", "superexec", *args[1:]]
        return subprocess.Popen(args, *rest, **kwargs)


def patch_supernode_warm_clientapp() -> None:
    """Make the SuperNode start :func:`superexec_main` instead of ``flower-superexec``.

    Flower 1.39's SuperNode (``--isolation subprocess``, the default) runs
    ``subprocess.Popen(["flower-superexec", ...])`` once at start-up; only that module's
    ``subprocess`` name is replaced. ``--isolation process`` is unaffected.
    """
    module = _supernode_module()
    current = getattr(module, "subprocess", None)
    if isinstance(current, _SuperExecRedirect):
        return
    if current is not subprocess:
        raise FedguardError(f"{_SUPERNODE_MODULE}.subprocess is not subprocess; stale patch")
    module.subprocess = _SuperExecRedirect()  # type: ignore[attr-defined]


class _IdleStretchTime:
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


_EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)


def _run_forked_clientapp(spec: Any, sigmask: Iterable[int]) -> NoReturn:
    """Child side of the fork: what ``flwr-clientapp`` would do, minus the imports."""

    def body() -> None:
        from flwr.supercore.exit import exit_handler
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        # Leave the parent's objects to reference counting: a collection here would
        # write to every page holding one and copy it (~55 MB per task, measured).
        gc.freeze()
        _set_process_name(b"fg-clientapp")
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


def _make_fork_executor(on_launch: Callable[[], None] = lambda: None) -> Any:
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


def superexec_main(argv: list[str] | None = None) -> None:
    """``flower-superexec`` whose ClientApp tasks run in forks of a pre-imported process."""
    check_flower_version()
    from flwr.supercore.cli import flower_superexec
    from flwr.supercore.constant import ExecutorType
    from flwr.supercore.superexec import run_superexec as rs

    if "nosql" in _wanted_patches():  # as the SuperNode that starts it
        defer_sql_stores()
    _preload_executor()
    patch_object_pull_backoff()  # the node announces a task before its payload is in
    original = rs.get_executor
    if not callable(original) or getattr(rs, "time", None) is not time:
        raise FedguardError(
            "flwr run_superexec.get_executor or its `time` module is not what fedguard "
            "patches; patch is stale"
        )
    # Its task poll (FLWR_SUPEREXEC_TASK_POLL_INTERVAL) stretches to 1 s once idle 10 s.
    clock = _IdleStretchTime(idle_interval=1.0, idle_after=10.0)

    def get_executor(executor_type: Any, *args: Any, **kwargs: Any) -> Any:
        if executor_type == ExecutorType.SUBPROCESS:
            return _make_fork_executor(on_launch=clock.busy)
        return original(executor_type, *args, **kwargs)

    rs.get_executor = get_executor
    rs.time = clock  # type: ignore[assignment]
    sys.argv = ["flower-superexec", *(sys.argv[1:] if argv is None else argv)]
    flower_superexec()


def _preload_executor() -> None:
    """Import what the SuperExec and its ClientApp forks run (no-op when already done)."""
    from flwr.supercore.cli import flower_superexec  # noqa: F401
    from flwr.supercore.superexec import run_superexec  # noqa: F401

    extra = [m.strip() for m in os.environ.get(PRELOAD_ENV, "").split(",") if m.strip()]
    # httpcore: the Runtime API client's transport, imported on its first request.
    for name in ["flwr.supernode.runtime.run_clientapp", "httpcore", *extra]:
        try:
            importlib.import_module(name)
        except Exception as err:  # a missing optional library must not stop the node
            print(f"fedguard: could not preload {name}: {err}", file=sys.stderr, flush=True)


class _ExecutorZygote:
    """The SuperNode's SuperExec, forked from the SuperNode before Flower starts.

    Stock Flower starts the SuperExec as a new interpreter, and fedguard's (5.) then
    imports flwr, torch and Opacus itself: a node held flwr twice (SuperNode and
    SuperExec, ~55 MB each) beside torch and Opacus. Here the SuperNode imports what
    its SuperExec will run, freezes the garbage collector's view of it, and forks once,
    while it is still single-threaded (Flower has started neither its Runtime API
    thread nor its gRPC channel): the two processes, and every ClientApp forked from the
    SuperExec, share those pages copy-on-write. The child waits on a pipe; when Flower
    launches ``flower-superexec`` (:class:`_SuperExecRedirect`) it is handed the
    arguments and runs :func:`superexec_main`, exactly as the new interpreter would.
    If the SuperNode ends first, the pipe closes and the child exits.
    """

    def __init__(self, *, pid: int, fd: int) -> None:
        self.pid, self._fd = pid, fd

    @classmethod
    def fork(cls) -> _ExecutorZygote:
        _preload_executor()
        gc.collect()
        gc.freeze()  # neither process's collector writes to these objects' pages again
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            _zygote_main(read_fd)
        os.close(read_fd)
        return cls(pid=pid, fd=write_fd)

    def launch(self, args: Sequence[str]) -> bool:
        """Start the SuperExec with ``args``; False if the child is gone (start it anew)."""
        if self._fd < 0:
            return False
        try:
            os.write(self._fd, json.dumps(list(args)).encode())
        except OSError:
            return False
        finally:
            os.close(self._fd)
            self._fd = -1
        return True

    def poll(self) -> int | None:
        """Like ``Popen.poll``: the SuperExec's exit status once it has ended."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        return os.waitstatus_to_exitcode(status) if pid else None


def _zygote_main(fd: int) -> NoReturn:
    """Child side of :class:`_ExecutorZygote`: wait for the arguments, run the SuperExec.

    No arguments (the pipe closed empty): the SuperNode ended, or started its SuperExec
    another way; exit 0.
    """

    def body() -> None:
        _set_process_name(b"fg-superexec")
        with os.fdopen(fd, "rb") as pipe:
            data = pipe.read()
        if data:
            superexec_main(json.loads(data))

    exit_after(body)


def _set_process_name(name: bytes) -> None:
    """Name this process in ``ps``/``/proc/PID/comm`` (its command line is the parent's)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)


# ---------------------------------------------------------------- 6, 7. under load


def patch_sqlite_busy_timeout(*, milliseconds: int = 30_000) -> None:
    """Let the SuperLink's SQLite connections wait ``milliseconds`` for a lock (Flower: 5 s).

    Only the ``busy_timeout`` pragma of ``flwr.supercore.sql_mixin`` changes; it applies to
    connections opened afterwards, so call it before the SuperLink starts.
    """
    if not 1000 <= milliseconds <= 600_000:
        raise ValueError(f"milliseconds: expected 1000-600000, got {milliseconds!r}")
    check_flower_version()
    mixin = importlib.import_module("flwr.supercore.sql_mixin")
    pragmas = getattr(mixin, "SQLITE_PRAGMAS", None)
    if not isinstance(pragmas, tuple) or "busy_timeout" not in dict(pragmas):
        raise FedguardError("flwr sql_mixin.SQLITE_PRAGMAS has no busy_timeout; patch is stale")
    mixin.SQLITE_PRAGMAS = tuple(  # type: ignore[attr-defined]
        (k, str(milliseconds) if k == "busy_timeout" else v) for k, v in pragmas
    )


def patch_heartbeat_retry() -> None:
    """Retry a SuperNode heartbeat that failed with INTERNAL or UNKNOWN (Flower: fatal).

    ``HeartbeatSender`` retries a heartbeat, with back-off, when it raises
    ``HeartbeatFailure``; Flower raises it only for a lost connection. Here a gRPC
    INTERNAL or UNKNOWN error (a server-side failure, e.g. a locked database) becomes one
    too. Authentication errors (a revoked key) still end the heartbeat. Idempotent.
    """
    check_flower_version()
    import grpc

    hb = importlib.import_module("flwr.supercore.heartbeat")
    sender = getattr(hb, "HeartbeatSender", None)
    original = getattr(sender, "_heartbeat", None)
    if getattr(original, "fedguard_retries", False):
        return
    if sender is None or not callable(original) or not hasattr(hb, "HeartbeatFailure"):
        raise FedguardError("flwr HeartbeatSender._heartbeat is missing; patch is stale")
    transient = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)

    @functools.wraps(original)
    def heartbeat(self: Any) -> None:
        try:
            original(self)
        except grpc.RpcError as err:
            if err.code() in transient:
                raise hb.HeartbeatFailure from err
            raise

    heartbeat.fedguard_retries = True  # type: ignore[attr-defined]
    sender._heartbeat = heartbeat


HEARTBEAT_INTERVAL_S = 10
"""A SuperNode's heartbeat interval (Flower's default 30 s; its minimum 10 s)."""
HEARTBEAT_PATIENCE = 2
"""Flower's ``HEARTBEAT_PATIENCE``: a node is online until PATIENCE x interval after its
last heartbeat, and a key that is online cannot be activated again (asserted below)."""


def patch_heartbeat_interval(seconds: int = HEARTBEAT_INTERVAL_S) -> None:
    """Heartbeat every ``seconds`` (11.): a crashed node's session is released sooner.

    The SuperLink keeps a node online for PATIENCE x interval after its last heartbeat and
    refuses to activate its key again meanwhile: with Flower's 30 s a restarted node was
    refused for up to a minute (`fedguard client` then waits and retries, saying so).
    Flower reads ``HEARTBEAT_DEFAULT_INTERVAL`` as a module global in the two modules that
    send it, so both are set. Idempotent.
    """
    check_flower_version()
    from flwr.common import constant

    if constant.HEARTBEAT_PATIENCE != HEARTBEAT_PATIENCE:
        raise FedguardError(f"flwr HEARTBEAT_PATIENCE is {constant.HEARTBEAT_PATIENCE}, not 2")
    if not constant.HEARTBEAT_MIN_INTERVAL <= seconds <= constant.HEARTBEAT_MAX_INTERVAL:
        raise FedguardError(f"heartbeat interval {seconds} s is outside Flower's range")
    for name in ("flwr.client.grpc_rere_client.connection", "flwr.supercore.heartbeat"):
        module = importlib.import_module(name)
        if not isinstance(getattr(module, "HEARTBEAT_DEFAULT_INTERVAL", None), int):
            raise FedguardError(f"{name}.HEARTBEAT_DEFAULT_INTERVAL is missing; patch is stale")
        setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", seconds)  # noqa: B010 (a module global)


# ---------------------------------------------------------------- 9. no SQL in a node

# Flower 1.39's modules that import SQLAlchemy/Alembic, and what other modules import
# from them (object_store_factory and linkstate_factory, only to construct one).
_SQL_STORES = {
    "flwr.supercore.object_store.sql_object_store": "SqlObjectStore",
    "flwr.server.superlink.linkstate.sql_linkstate": "SqlLinkState",
}


class _DeferredModule(ModuleType):
    """Stands in for one of :data:`_SQL_STORES` until something of it is used."""

    def __init__(self, name: str, cls: str) -> None:
        super().__init__(name, f"fedguard stand-in for {name} (imported on first use)")
        self._real: ModuleType | None = None
        setattr(self, cls, _DeferredMeta(cls, (), {"__module__": name, "_module": self}))

    def load(self) -> ModuleType:
        if self._real is None:
            del sys.modules[self.__name__]
            try:
                self._real = importlib.import_module(self.__name__)
            except BaseException:
                sys.modules[self.__name__] = self
                raise
        return self._real

    def __getattr__(self, name: str) -> Any:  # anything else: the real module's
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.load(), name)


class _DeferredMeta(type):
    """A stand-in class: constructing or checking against it uses the real class."""

    _module: _DeferredModule

    def real(cls) -> type:
        return getattr(cls._module.load(), cls.__name__)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls.real()(*args, **kwargs)

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls.real())

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, cls.real())


def defer_sql_stores() -> None:
    """Keep SQLAlchemy and Alembic out of this process until a SQL store is built.

    For a node's processes only (a SuperLink builds its SQL state at once, so it would
    only pay the import later). Call before Flower's modules are imported; a module
    already imported for real is left as it is. Idempotent.
    """
    check_flower_version()
    for name, cls in _SQL_STORES.items():
        if name not in sys.modules:
            sys.modules[name] = _DeferredModule(name, cls)


# ---------------------------------------------------------------- entry points


UNSAFE_ANY_BUNDLE_ENV = "FEDGUARD_UNSAFE_ANY_BUNDLE"
"""``=1``: ``python -m fedguard.flower_compat supernode`` accepts any app bundle (benchmarks
of Flower's transport with their own app). `fedguard client` never reads it."""

BundleCheck = Callable[[bytes, int], "str | None"]
"""``check(fab_content, run_id)``: why the node refuses the run, or None to accept it."""


def patch_supernode_bundle_check(check: BundleCheck) -> None:
    """Check every run's app bundle where the SuperNode fetches it (12.). Idempotent."""
    check_flower_version()
    module = importlib.import_module(_SUPERNODE_MODULE)
    original = getattr(module, "_pull_and_store_message", None)
    if getattr(original, "fedguard_bundle_check", None) is not None:
        setattr(original, "fedguard_bundle_check", check)  # noqa: B010
        return
    needed = ("_insert_message", "Message", "Error", "ErrorCode", "log")
    if not callable(original) or not all(hasattr(module, n) for n in needed):
        raise FedguardError(f"{_SUPERNODE_MODULE}._pull_and_store_message changed; stale patch")

    class _RefusedError(Exception):
        pass

    @functools.wraps(original)
    def pull_and_store(*args: Any, **kwargs: Any) -> Any:
        receive, get_fab = kwargs["receive"], kwargs["get_fab"]
        seen: list[Any] = []

        def receive_and_keep() -> Any:
            got = receive()
            if got is not None:
                seen.append(got[0])
            return got

        def get_checked_fab(fab_hash: str, run_id: int) -> Any:
            fab = get_fab(fab_hash, run_id)
            reason = getattr(pull_and_store, "fedguard_bundle_check")(fab.content, run_id)  # noqa: B009
            if reason is not None:
                raise _RefusedError(reason)
            return fab

        kwargs.update(receive=receive_and_keep, get_fab=get_checked_fab)
        try:
            return original(*args, **kwargs)
        except _RefusedError as refused:
            message = seen[-1]
            module.log(40, "%s", refused)  # ERROR: one line in the node's log
            error = module.Error(module.ErrorCode.INVALID_FAB, str(refused))
            module._insert_message(
                module.Message(error, reply_to=message), kwargs["state"], kwargs["object_store"]
            )
            return message.metadata.run_id

    setattr(pull_and_store, "fedguard_bundle_check", check)  # noqa: B010
    setattr(module, "_pull_and_store_message", pull_and_store)  # noqa: B010


def _bundle_check_installed() -> bool:
    module = sys.modules.get(_SUPERNODE_MODULE)
    fn = getattr(module, "_pull_and_store_message", None)
    return getattr(fn, "fedguard_bundle_check", None) is not None


def _wanted_patches() -> set[str]:
    wanted = {p.strip() for p in os.environ.get(PATCHES_ENV, ",".join(_ALL_PATCHES)).split(",")}
    wanted.discard("")
    if unknown := wanted - set(_ALL_PATCHES):
        raise FedguardError(
            f"{PATCHES_ENV}: expected names from {','.join(_ALL_PATCHES)}, got {sorted(unknown)}"
        )
    return wanted


def preload_supernode() -> None:
    """Import what :func:`supernode_main` runs, and with ``warm`` what its executor runs.

    For a launcher that forks the SuperNode (``fedguard._procs.fork_start``) rather than
    starting an interpreter: the launcher, the SuperNode, its SuperExec and every
    ClientApp then share one copy of these modules. Reads :data:`PATCHES_ENV` and
    :data:`PRELOAD_ENV` (set them first: Flower reads some settings at import time).
    """
    check_flower_version()
    wanted = _wanted_patches()
    if "nosql" in wanted:
        defer_sql_stores()
    from flwr.supernode.cli import flower_supernode  # noqa: F401

    for name in (_SUPERNODE_MODULE, *_SUPERNODE_LATE_IMPORTS):
        with contextlib.suppress(ImportError):  # uvicorn's optional speed-ups
            importlib.import_module(name)
    if "warm" in wanted:
        _preload_executor()
        # The SuperExec and every ClientApp open a Runtime API client: httpx builds an SSL
        # context even for plain HTTP, and OpenSSL's first one costs each process ~6 MB
        # (measured) unless initialised here, once, before the forks.
        import httpx

        httpx.Client(verify=False).close()  # noqa: S501 - never connects; Flower's own is so


# What Flower 1.39's SuperNode imports only once it runs: its Runtime API app and the
# uvicorn server it runs in (uvloop, httptools and websockets when installed, as uvicorn's
# "auto" settings pick them), and the gRPC channel.
_SUPERNODE_LATE_IMPORTS = (
    "flwr.supernode.main",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.protocols.websockets.websockets_impl",
    "anyio._backends._asyncio",
    "grpc._channel",
    "grpc.experimental",
)


def supernode_main(argv: list[str] | None = None) -> None:
    """Run Flower's ``flower-supernode`` with ``argv`` and the patches above applied.

    The app-bundle check (12.) must have been installed (the node's launcher does it):
    without it the SuperNode would import whatever code a server sends, so it refuses."""
    check_flower_version()
    wanted = _wanted_patches()
    if not _bundle_check_installed():
        raise FedguardError(
            "no app-bundle check installed: a SuperNode would run code the server sends; "
            "start nodes with `fedguard client`"
        )
    _set_process_name(b"fg-supernode")
    if "nosql" in wanted:
        defer_sql_stores()  # first: the patches below import Flower
    if "poll" in wanted:
        patch_supernode_polling()
    if "backoff" in wanted:
        patch_object_pull_backoff()
    if "heartbeat" in wanted:
        patch_heartbeat_retry()
        patch_heartbeat_interval()
    # Imported before the fork below: a module imported after it would be private to the
    # process that imports it, and copy the shared pages its objects land in.
    preload_supernode()
    from flwr.supernode.cli import flower_supernode

    if "warm" in wanted:
        patch_supernode_warm_clientapp()
        _SuperExecRedirect.zygote = _ExecutorZygote.fork()

    sys.argv = ["flower-supernode", *(sys.argv[1:] if argv is None else argv)]
    flower_supernode()


MAX_MESSAGE_FLAG = "--fedguard-max-message-bytes"


def superlink_main(argv: list[str] | None = None) -> None:
    """Run Flower's ``flower-superlink`` with ``argv`` and patches 6 and 10 applied."""
    check_flower_version()
    patch_sqlite_busy_timeout()
    from flwr.superlink.cli import flower_superlink

    # The package exports the function under the module's name: take the module itself.
    module = sys.modules["flwr.superlink.cli.flower_superlink"]
    args = list(sys.argv[1:] if argv is None else argv)
    if MAX_MESSAGE_FLAG in args:
        at = args.index(MAX_MESSAGE_FLAG)
        limit = int(args[at + 1])
        del args[at : at + 2]
        if not isinstance(getattr(module, "GRPC_MAX_MESSAGE_LENGTH", None), int):
            raise RuntimeError(f"flwr {FLWR_VERSION}: no GRPC_MAX_MESSAGE_LENGTH to cap")
        setattr(module, "GRPC_MAX_MESSAGE_LENGTH", limit)  # noqa: B010 (a module global)
    sys.argv = ["flower-superlink", *args]
    # Its log is a file (superlink.log), shared with the SuperExec it starts: plain text,
    # colours only with --verbose (#17.8). Flower has no setting for it, so the SuperExec
    # command is ours: the stock SuperExec with the plain handler.
    _plain_console()
    build = getattr(module, "_get_superexec_command", None)
    if not callable(build):
        raise RuntimeError(f"flwr {FLWR_VERSION}: no _get_superexec_command to redirect")

    def superexec_command(*a: Any, **kw: Any) -> list[str]:
        command = list(build(*a, **kw))
        if command[:1] != ["flower-superexec"]:
            raise RuntimeError(f"flwr {FLWR_VERSION}: SuperExec command {command[:1]} unknown")
        return [sys.executable, "-m", "fedguard.flower_compat", "plain-superexec", *command[1:]]

    setattr(module, "_get_superexec_command", superexec_command)  # noqa: B010
    flower_superlink()


def _plain_console() -> None:
    from flwr.common.logger import update_console_handler

    from fedguard.console import is_verbose

    update_console_handler(colored=is_verbose())


def plain_superexec_main(argv: list[str] | None = None) -> None:
    """Flower's own ``flower-superexec`` (the SuperLink's, for ServerApps), plain logs."""
    check_flower_version()
    from flwr.supercore.cli import flower_superexec

    _plain_console()
    sys.argv = ["flower-superexec", *(sys.argv[1:] if argv is None else argv)]
    flower_superexec()


def _main(argv: Sequence[str]) -> None:
    commands = {
        "supernode": supernode_main,
        "superexec": superexec_main,
        "superlink": superlink_main,
        "plain-superexec": plain_superexec_main,
    }
    if not argv or argv[0] not in commands:
        sys.exit(
            "usage: python -m fedguard.flower_compat {supernode|superexec|superlink} ARGS...\n"
            "  ARGS are those of flower-supernode / flower-superexec"
        )
    try:
        if argv[0] == "supernode" and os.environ.get(UNSAFE_ANY_BUNDLE_ENV) == "1":
            # Benchmarks of Flower's own transport run their own app: never a node's setting.
            print(f"WARNING: {UNSAFE_ANY_BUNDLE_ENV}=1: this SuperNode runs any app bundle")
            patch_supernode_bundle_check(lambda _content, _run_id: None)
        commands[argv[0]](list(argv[1:]))
    except FedguardError as err:
        sys.exit(f"fedguard: {err}")


if __name__ == "__main__":  # run the copy other modules import, not a second __main__
    from fedguard.flower_compat import _main as main

    main(sys.argv[1:])
