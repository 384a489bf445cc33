"""Process names and the invariants a fork relies on, checked rather than assumed.

A fork copies only the thread that calls it: a lock another thread held stays locked in
the child forever, and a gRPC channel's threads are simply gone. And a module imported
after a fork is private to the process that imports it, copying the pages its objects
land in. fedguard forks the SuperNode's SuperExec and every ClientApp; these checks make
a broken assumption a one-line error instead of a hang or a node twice its size.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from collections.abc import Iterable

from fedguard.errors import FedguardError

__all__ = ["require_preloaded", "require_single_thread", "set_process_name"]


def set_process_name(name: bytes) -> None:
    """Name this process in ``ps``/``/proc/PID/comm`` (its command line is the parent's)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)


def require_single_thread(what: str) -> None:
    """Raise FedguardError if this process runs any Python thread but the calling one.

    Parameters
    ----------
    what
        The fork about to happen, named in the error.
    """
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:
        raise FedguardError(
            f"fork of {what}: expected no thread but the caller's (a fork copies only it), "
            f"got {len(others)} more running: {', '.join(sorted(others))}"
        )


def require_preloaded(modules: Iterable[str], *, what: str) -> None:
    """Raise FedguardError unless every one of ``modules`` is imported already.

    Parameters
    ----------
    modules
        Module names the forked process runs and must share with its parent.
    what
        The fork about to happen, named in the error.
    """
    missing = [name for name in modules if name not in sys.modules]
    if missing:
        raise FedguardError(
            f"fork of {what}: expected its modules imported before the fork (shared, not "
            f"copied), got {', '.join(missing)} not imported"
        )
