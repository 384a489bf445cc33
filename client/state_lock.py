"""Exclusive locks on a node's state folder: one writer per folder.

``flock`` locks belong to an open file description: they are released when the last
process holding it (forked children inherit it) closes it or exits, so a crashed holder
never leaves a stale lock. The lock file holds the PID of the process that took it, for
the message a second process prints.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fedguard.errors import FedguardError

__all__ = ["StateFolderInUseError", "hold_lock", "lock_file"]


class StateFolderInUseError(FedguardError):
    """Another process holds the state folder's lock."""


def lock_file(path: Path, *, wait: bool) -> int:
    """Open ``path`` (0600) and take an exclusive ``flock`` on it; return the descriptor.

    With ``wait=False`` a lock held elsewhere raises ``StateFolderInUseError`` naming the
    folder and the PID written in the file.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StateFolderInUseError(
                f"state folder {path.parent} is in use by PID {holder} (another fedguard client?)"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the ``with`` block (waiting for it)."""
    fd = lock_file(path, wait=True)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock
