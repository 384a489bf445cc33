"""Errors a user can act on.

Every message names the option/key (and the file, when there is one), what is allowed
and the value received, on one line, so a command-line user or an operator reading a log
knows what to change.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["ConfigError", "DataError", "FedguardError", "invalid"]


class FedguardError(Exception):
    """Base class of the errors fedguard raises on purpose."""


class ConfigError(FedguardError, ValueError):
    """An option, config key or argument has a value that is not allowed."""


class DataError(FedguardError, ValueError):
    """A data file or data set cannot be used as asked (missing, unreadable, malformed)."""


def invalid(
    key: str,
    *,
    allowed: str | Iterable[object],
    got: object,
    source: str | Path | None = None,
    hint: str = "",
) -> ConfigError:
    """Build a one-line ``ConfigError``: ``[file: ]key: expected <allowed>, got <value>``.

    ``allowed`` is a phrase ("a number > 0") or an iterable of allowed values, which is
    rendered as ``one of a, b, c`` (build it from the registry, never by hand).
    """
    if not isinstance(allowed, str):
        allowed = "one of " + ", ".join(str(a) for a in allowed)
    if not key.isprintable():  # e.g. a quoted TOML key with a newline: keep one line
        key = repr(key)
    where = f"{source}: " if source is not None else ""
    tail = f" ({hint})" if hint else ""
    return ConfigError(f"{where}{key}: expected {allowed}, got {got!r}{tail}")
