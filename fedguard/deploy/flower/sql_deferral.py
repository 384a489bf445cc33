"""Workaround 9: no SQLAlchemy or Alembic in a node's processes (~28 MB each).

Flower imports them into every SuperNode and SuperExec, which keep their state in memory
and never open a database: two of its modules import them for the SuperLink's SQL
stores. Those two are replaced, in ``sys.modules``, by stand-ins that import the real
module the first time anything of it is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from fedguard.deploy.flower._originals import replace_item
from fedguard.deploy.flower.version import check_flower_version
from fedguard.errors import FedguardError

__all__ = ["NAME", "SQL_STORES", "TARGET", "check", "defer_sql_stores"]

NAME = "defer-sql"
# Flower 1.39's modules that import SQLAlchemy/Alembic, and what other modules import
# from them (object_store_factory and linkstate_factory, only to construct one).
SQL_STORES = {
    "flwr.supercore.object_store.sql_object_store": "SqlObjectStore",
    "flwr.server.superlink.linkstate.sql_linkstate": "SqlLinkState",
}
TARGET = "sys.modules: " + ", ".join(SQL_STORES)


class DeferredModule(ModuleType):
    """Stands in for one of :data:`SQL_STORES` until something of it is used."""

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

    _module: DeferredModule

    def real(cls) -> type:
        return getattr(cls._module.load(), cls.__name__)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls.real()(*args, **kwargs)

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls.real())

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, cls.real())


def check() -> None:
    """Raise FedguardError unless both SQL store modules exist, without importing them
    (finding a submodule's spec would import its package, which imports the module)."""
    check_flower_version()
    spec = importlib.util.find_spec("flwr")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for name in SQL_STORES:
        relative = Path(*name.split(".")[1:]).with_suffix(".py")
        if not any((Path(root) / relative).is_file() for root in roots):
            raise FedguardError(f"flwr has no module {name}; patch is stale")


def defer_sql_stores() -> None:
    """Keep SQLAlchemy and Alembic out of this process until a SQL store is built.

    For a node's processes only (a SuperLink builds its SQL state at once, so it would
    only pay the import later). Call before Flower's modules are imported; a module
    already imported for real is left as it is. Idempotent.
    """
    check()
    for name, cls in SQL_STORES.items():
        if name not in sys.modules:
            replace_item(NAME, sys.modules, name, DeferredModule(name, cls))
