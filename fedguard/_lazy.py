"""PEP 562 lazy exports: a package names what it offers without importing it at once
(``fedguard budget`` and option checks must not pull in torch through a package import)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(
    package: str, names: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``names[name]`` (a submodule of ``package``) on
    first use of ``name``, then keeping the value in ``namespace`` (the package's globals)."""

    def lazy(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    return lazy
