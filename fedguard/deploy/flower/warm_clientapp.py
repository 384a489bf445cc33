"""Workaround 5 (SuperNode half): the SuperNode starts fedguard's SuperExec.

Flower 1.39's SuperNode (``--isolation subprocess``, the default) runs
``subprocess.Popen(["flower-superexec", ...])`` once at start-up; only that module's
``subprocess`` name is replaced, by :class:`SuperExecRedirect`: it hands the arguments to
the SuperNode's :class:`~fedguard.deploy.flower.executor_zygote.ExecutorZygote` when it
has one, else starts ``python -m fedguard.deploy.flower superexec``.
``--isolation process`` is unaffected.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

from fedguard.deploy.flower._originals import replace_attr
from fedguard.deploy.flower.supernode_poll import SUPERNODE_MODULE, supernode_module
from fedguard.errors import FedguardError

if TYPE_CHECKING:
    from fedguard.deploy.flower.executor_zygote import ExecutorZygote

__all__ = ["NAME", "TARGET", "SuperExecRedirect", "check", "patch_supernode_warm_clientapp"]

NAME = "warm-clientapp"
TARGET = f"{SUPERNODE_MODULE}.subprocess"
SUPEREXEC_COMMAND = ("-m", "fedguard.deploy.flower", "superexec")
"""How a SuperExec without a zygote is started: ``python`` followed by these."""


class SuperExecRedirect:
    """Stands in for ``subprocess`` in the SuperNode module: starts our SuperExec, as the
    SuperNode's zygote when it has one, else as a new interpreter."""

    zygote: ExecutorZygote | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @classmethod
    def Popen(cls, args: Any, *rest: Any, **kwargs: Any) -> Any:  # noqa: N802
        if isinstance(args, list) and args[:1] == ["flower-superexec"]:
            zygote, cls.zygote = cls.zygote, None
            if zygote is not None and not rest and not kwargs and zygote.launch(args[1:]):
                return zygote  # Flower 1.39 drops what Popen returns
            args = [sys.executable, *SUPEREXEC_COMMAND, *args[1:]]
        return subprocess.Popen(args, *rest, **kwargs)


def check() -> None:
    """Raise FedguardError unless the SuperNode module still uses ``subprocess``."""
    current = getattr(supernode_module(), "subprocess", None)
    if current is not subprocess and not isinstance(current, SuperExecRedirect):
        raise FedguardError(f"{SUPERNODE_MODULE}.subprocess is not subprocess; stale patch")


def patch_supernode_warm_clientapp() -> None:
    """Make the SuperNode start fedguard's SuperExec instead of ``flower-superexec``."""
    check()
    module = supernode_module()
    if not isinstance(module.subprocess, SuperExecRedirect):
        replace_attr(NAME, module, "subprocess", SuperExecRedirect())
