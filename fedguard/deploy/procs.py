"""Starting and stopping the Flower processes fedguard wraps.

Each child runs in its own session (process group) so that stopping it also stops what
it spawned (the SuperLink starts `flower-superexec` and `flwr-serverapp`). Stopping is
SIGTERM, a grace period, then SIGKILL: a SuperNode has been seen ignoring SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, NoReturn

__all__ = [
    "ForkedProcess",
    "exit_after",
    "fork_start",
    "free_port",
    "kill_stale_group",
    "start",
    "stop",
    "venv_tool",
    "wait_for_port",
]


def venv_tool(name: str) -> str:
    """A console script installed beside this interpreter (flwr, flower-superlink, ...)."""
    return str(Path(sys.executable).parent / name)


def _die_with_parent() -> None:
    # Linux: the child is killed when the process that started it dies, even by SIGKILL,
    # so a crashed `fedguard server` never leaves a SuperLink holding its ports. SIGKILL,
    # because a SuperLink with a run in progress does not act on SIGTERM for a long time.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except OSError:
        pass


def kill_stale_group(pid_file: Path, *, command: str) -> bool:
    """Kill the process group recorded in ``pid_file`` if it still runs ``command``.

    A SIGKILLed leader takes nothing with it: its children (Flower's SuperExec and
    ServerApp processes) keep running until their group is killed. Returns True if a
    stale group was found.
    """
    try:
        pgid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    found = False
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(proc.name)) == pgid and command in (proc / "cmdline").read_text(
                errors="replace"
            ):
                found = True
        except (OSError, ProcessLookupError):
            continue
    if found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return found


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
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


class ForkedProcess:
    """A child started by :func:`fork_start`: the part of ``Popen`` that :func:`stop` and
    the launchers use (``pid``, ``returncode``, ``poll``, ``wait``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost (as Popen)
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.returncode is None:
                try:  # interrupted by a signal, Python runs its handler and waits on
                    _, status = os.waitpid(self.pid, 0)
                except ChildProcessError:
                    self.returncode = 0
                else:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired([f"pid {self.pid}"], timeout)
            time.sleep(0.05)
        return code


def fork_start(
    main: Callable[[list[str]], object],
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: IO[bytes],
) -> ForkedProcess:
    """Like :func:`start`, but the child is a fork of this process that runs ``main(argv)``.

    It shares every module this process has imported, copy-on-write, instead of starting
    an interpreter that imports them again: call it from a single-threaded process that
    has imported what ``main`` needs (and frozen the garbage collector's view of it with
    ``gc.freeze()``, or the child's collections copy every page holding an object). The
    child gets its own session, dies with this process (Linux), reads nothing, writes to
    ``log``, and runs with ``env`` as its environment; its exit status is ``main``'s
    ``SystemExit`` code, 0 when it returns, 1 when it raises.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _run_forked(main, list(argv), env=env, log_fd=log.fileno())
    return ForkedProcess(pid)


def _run_forked(
    main: Callable[[list[str]], object], argv: list[str], *, env: Mapping[str, str], log_fd: int
) -> NoReturn:
    def body() -> None:
        os.setsid()
        if sys.platform == "linux":
            _die_with_parent()
        # A fresh interpreter's signal dispositions, not the parent's handlers.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(null)
        os.close(log_fd)
        # Python's own streams on those descriptors (the parent may have replaced them).
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        # Nor the parent's logging set-up (its root handler would also print every
        # DEBUG record of a library whose logger passes records up, as Flower's does).
        logging.root.handlers.clear()
        logging.root.setLevel(logging.WARNING)
        main(argv)

    exit_after(body)


def exit_after(body: Callable[[], object]) -> NoReturn:
    """In a forked child: run ``body``, then end the process as an interpreter would.

    Exit status 0 when it returns, ``sys.exit``'s code (a non-integer one is printed and
    gives 1), 1 with a traceback for any other exception. The child never returns into
    the parent's code, nor runs its atexit handlers or finalisers.
    """
    code = 1
    try:
        body()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def stop(proc: subprocess.Popen[bytes] | ForkedProcess, *, grace: float = 10.0) -> None:
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
