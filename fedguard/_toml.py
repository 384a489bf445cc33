"""TOML text -> dict for fedguard's config loaders: every failure is a ``ConfigError``.

``tomllib`` raises more than ``TOMLDecodeError`` on hostile text: ``ValueError`` for an
integer of more than 4300 digits and ``RecursionError`` for deeply nested arrays or
tables. TOML integers are 64-bit (the spec says a parser must refuse what it cannot
represent losslessly); ``tomllib`` accepts any size, and a huge one would later overflow
a float conversion or an error message, so it is refused here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fedguard.errors import ConfigError

__all__ = ["read_toml", "toml_loads"]

_INT64 = range(-(2**63), 2**63)


def read_toml(path: Path, *, option: str = "--config") -> dict[str, Any]:
    """Read the file ``path`` (given with ``option``) and parse it with :func:`toml_loads`.

    The one reader of every fedguard TOML file (simulation, sweep, federation, node,
    feature schema): a missing, unreadable or non-UTF-8 file is one ``ConfigError`` line
    too, naming ``option``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{option}: {path} is not UTF-8 text") from None
    return toml_loads(text, source=path)


def toml_loads(text: str, *, source: Path) -> dict[str, Any]:
    """Parse ``text`` (the content of ``source``) as TOML, or raise ``ConfigError``."""
    try:
        data = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError is a ValueError
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    stack: list[tuple[str, Any]] = [("", data)]  # iterative: nesting may be deep
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
            key = where if where.isprintable() else repr(where)
            raise ConfigError(
                f"{source}: not valid TOML: {key}: an integer of {value.bit_length()} bits, "
                "outside the range TOML allows (-2**63 to 2**63 - 1)"
            )
    return data
