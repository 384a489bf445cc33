"""Numeric validators for keyword arguments, config keys and state fields (util layer).

One home for "an integer >= n" and "a finite number with a property": every fedguard
layer, ``privacy`` included, checks numbers here. It imports only the standard library and
:mod:`fedguard.errors`, so ``privacy`` may use it without reaching above itself.

``bool`` is an ``int`` subclass: ``True`` must not pass for a batch size of 1 or a noise
multiplier of 1.0, so both checks refuse it. NaN and infinities are refused by ``real``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedguard.errors import invalid

__all__ = ["integer", "real"]


def _any(_: float) -> bool:
    return True


def integer(key: str, value: object, *, minimum: int, source: str | Path | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) ``>= minimum``.

    Raises
    ------
    ConfigError
        ``key: expected an integer >= minimum, got value``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise invalid(key, allowed=f"an integer >= {minimum}", got=value, source=source)
    return int(value)


def real(
    key: str,
    value: object,
    *,
    allowed: str,
    ok: Callable[[float], bool] = _any,
    source: str | Path | None = None,
) -> float:
    """``value`` as a finite ``float`` (not a bool) for which ``ok`` holds.

    Raises
    ------
    ConfigError
        ``key: expected allowed, got value``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise invalid(key, allowed=allowed, got=value, source=source)
    out = float(value)
    if not math.isfinite(out) or not ok(out):
        raise invalid(key, allowed=allowed, got=value, source=source)
    return out


def _plain_path(key: str, value: object, source: str | Path | None) -> Path:
    if not isinstance(value, str | Path):
        raise invalid(key, allowed="a folder path", got=value, source=source)
    return Path(value)


def coerce(
    key: str,
    value: object,
    annotation: object,
    *,
    source: str | Path | None,
    finite: bool = False,
    path: Callable[[str, object, str | Path | None], Path] = _plain_path,
) -> Any:
    """Turn a TOML/CLI ``value`` into the type a dataclass field's ``annotation`` names.

    The one engine behind ``fedguard.config`` (simulation) and ``fedguard.deploy_config``
    (federation.toml, node.toml): fields are annotated ``bool``, ``int``, ``float``,
    ``str``, ``Path``, ``list[...]`` (``| None`` allowed). Lossy or odd conversions are
    refused (a bool is not an int, an int is not a string). ``finite`` refuses NaN and
    infinities for float fields here rather than in a later range check; ``path`` turns a
    path value into a ``Path`` (deployment resolves it next to its file).

    Raises
    ------
    ConfigError
        ``key: expected <kind>, got value``.
    """
    kind = str(annotation).removesuffix(" | None")  # optional keys: present means a value
    if "Path" in kind:
        return path(key, value, source)
    if kind.startswith("list"):
        if not isinstance(value, list):
            raise invalid(key, allowed="a list", got=value, source=source)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise invalid(key, allowed="true or false", got=value, source=source)
        return value
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(key, allowed="an integer", got=value, source=source)
        return value
    if kind == "float":
        if finite:
            return real(key, value, allowed="a finite number", source=source)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid(key, allowed="a number", got=value, source=source)
        return float(value)
    if isinstance(value, bool) or (value is not None and not isinstance(value, str)):
        raise invalid(key, allowed="a string", got=value, source=source)
    return value
