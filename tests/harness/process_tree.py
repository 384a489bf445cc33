"""Every process a test started, and every process those started, stopped at teardown.

A `fedguard server` starts its SuperLink in a session of its own (so that the SuperLink can
be stopped as a group), and the SuperLink starts Flower's ServerApp process. Stopping the
server's process group leaves the SuperLink to die with its parent (PR_SET_PDEATHSIG), but
the ServerApp it started has no such tie: it outlived its test, retrying a SuperLink that
was gone (found under two pytest-xdist workers, still running an hour later). So the tree
is read before anything is stopped, and what is left of it afterwards is killed by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

__all__ = ["Proc", "kill_leftovers", "tree"]

Proc = tuple[int, int]
"""A process as (pid, start time in clock ticks): a PID the kernel reused is not it."""


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid``, or None when it is gone."""
    try:
        text = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def tree(root: int) -> list[Proc]:
    """Every living descendant of ``root`` (not ``root`` itself), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
    found: list[Proc] = []
    todo = [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            if (st := _stat(pid)) is not None:
                found.append((pid, st[1]))
                todo.append(pid)
    return found


def kill_leftovers(procs: list[Proc]) -> list[int]:
    """SIGKILL each of ``procs`` still running (the same process, not a reused PID);
    returns the PIDs killed."""
    killed = []
    for pid, started in procs:
        st = _stat(pid)
        if st is not None and st[1] == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed
