"""Workaround 6: the SuperLink's SQLite connections wait 30 s for a lock, not 5 s.

Under load (22+ nodes on a busy 2-core box) a connection that waited longer answered the
node "Internal server error" (``database is locked``). Only the ``busy_timeout`` pragma of
``flwr.supercore.sql_mixin`` changes; it applies to connections opened afterwards, so
apply it before the SuperLink starts.
"""

from __future__ import annotations

import importlib

from fedguard.deploy.flower._originals import replace_attr
from fedguard.deploy.flower.version import check_flower_version
from fedguard.errors import FedguardError

__all__ = ["NAME", "TARGET", "check", "patch_sqlite_busy_timeout"]

NAME = "sqlite-busy-timeout"
_MODULE = "flwr.supercore.sql_mixin"
TARGET = f"{_MODULE}.SQLITE_PRAGMAS"


def check() -> None:
    """Raise FedguardError unless Flower still sets its pragmas from ``SQLITE_PRAGMAS``."""
    check_flower_version()
    pragmas = getattr(importlib.import_module(_MODULE), "SQLITE_PRAGMAS", None)
    if not isinstance(pragmas, tuple) or "busy_timeout" not in dict(pragmas):
        raise FedguardError("flwr sql_mixin.SQLITE_PRAGMAS has no busy_timeout; patch is stale")


def patch_sqlite_busy_timeout(*, milliseconds: int = 30_000) -> None:
    """Let the SuperLink's SQLite connections wait ``milliseconds`` for a lock (Flower: 5 s)."""
    if not 1000 <= milliseconds <= 600_000:
        raise ValueError(f"milliseconds: expected 1000-600000, got {milliseconds!r}")
    check()
    mixin = importlib.import_module(_MODULE)
    pragmas = tuple(
        (k, str(milliseconds) if k == "busy_timeout" else v) for k, v in mixin.SQLITE_PRAGMAS
    )
    replace_attr(NAME, mixin, "SQLITE_PRAGMAS", pragmas)
