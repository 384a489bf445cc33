"""Workaround 8: the SuperNode's SuperExec is a fork of the SuperNode, not an interpreter.

Stock Flower starts the SuperExec as a new interpreter, and fedguard's (workaround 5)
then imports flwr, torch and Opacus itself: a node held flwr twice (SuperNode and
SuperExec, ~55 MB each) beside torch and Opacus. Here the SuperNode imports what its
SuperExec will run, freezes the garbage collector's view of it, and forks once, while it
is still single-threaded (asserted: Flower has started neither its Runtime API thread nor
its gRPC channel): the two processes, and every ClientApp forked from the SuperExec,
share those pages copy-on-write. The child waits on a pipe; when Flower launches
``flower-superexec`` (:class:`~fedguard.deploy.flower.warm_clientapp.SuperExecRedirect`)
it is handed the arguments and runs the SuperExec, exactly as the new interpreter would.
If the SuperNode ends first, the pipe closes and the child exits.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from fedguard.deploy.flower._process import (
    require_preloaded,
    require_single_thread,
    set_process_name,
)
from fedguard.deploy.flower.superexec_fork import CLIENTAPP_MODULES, preload_executor
from fedguard.deploy.procs import exit_after

__all__ = ["ExecutorZygote"]

SuperExecMain = Callable[[list[str]], None]


class ExecutorZygote:
    """A forked, waiting SuperExec; :meth:`launch` hands it its arguments."""

    def __init__(self, *, pid: int, fd: int) -> None:
        self.pid, self._fd = pid, fd

    @classmethod
    def fork(cls, *, run: SuperExecMain) -> ExecutorZygote:
        """Fork now; the child runs ``run(args)`` once :meth:`launch` gives it ``args``.

        Raises
        ------
        FedguardError
            Another Python thread runs in this process, or the executor's modules could
            not be imported first (the fork would copy neither safely).
        """
        require_single_thread("the SuperNode's SuperExec")
        preload_executor()
        require_preloaded(CLIENTAPP_MODULES, what="the SuperNode's SuperExec")
        gc.collect()
        gc.freeze()  # neither process's collector writes to these objects' pages again
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            _zygote_main(read_fd, run)
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


def _zygote_main(fd: int, run: SuperExecMain) -> NoReturn:
    """Child side: wait for the arguments, run the SuperExec.

    No arguments (the pipe closed empty): the SuperNode ended, or started its SuperExec
    another way; exit 0.
    """

    def body() -> None:
        set_process_name(b"fg-superexec")
        with os.fdopen(fd, "rb") as pipe:
            data = pipe.read()
        if data:
            run(json.loads(data))

    exit_after(body)
