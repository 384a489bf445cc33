"""Reading a deployment TOML file (``federation.toml``, ``node.toml``) into typed sections.

One set of helpers for both files: a ``[section]`` becomes a frozen dataclass whose
fields are its keys (``max-epsilon`` is ``max_epsilon``); unknown keys are refused; path
values are resolved against the config file's folder, so a config can be moved with its
certificates. Every error is one line naming the file, the ``section.key``, what is
allowed and the value received.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from fedguard._checks import coerce
from fedguard.errors import invalid

__all__ = [
    "check_key",
    "check_task_spec",
    "config_path",
    "only_keys",
    "path_exists",
    "read_section",
]

T = TypeVar("T")


def only_keys(raw: dict[str, Any], allowed: set[str], path: Path, prefix: str) -> None:
    """Refuse a key of ``raw`` not in ``allowed`` (``prefix``: its section, for the error)."""
    for key in raw:
        if key not in allowed:
            raise invalid(
                f"{prefix}{key}",
                allowed="a known key: " + ", ".join(sorted(allowed)),
                got=key,
                source=path,
            )


def read_section(raw: dict[str, Any], name: str, cls: type[T], path: Path) -> T:
    """``[name]`` of ``raw`` as a ``cls``; every value coerced to its field's type."""
    values = raw.get(name, {})
    if not isinstance(values, dict):
        raise invalid(name, allowed="a [section]", got=values, source=path)
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    only_keys(values, set(fields), path, f"{name}.")
    kwargs = {
        fields[k].name: coerce(
            f"{name}.{k}", v, fields[k].type, source=path, finite=True, path=config_path
        )
        for k, v in values.items()
    }
    return cls(**kwargs)


def config_path(key: str, value: object, source: str | Path | None) -> Path:
    """A path value, ``~`` expanded, relative to the config file ``source``."""
    if not isinstance(value, str):
        raise invalid(key, allowed="a path string", got=value, source=source)
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user of a user this machine does not know
        raise invalid(key, allowed="a path (~user must exist)", got=value, source=source) from None
    return p if p.is_absolute() else (Path(source or ".").resolve().parent / p)


def path_exists(path: Path) -> bool:
    """Whether ``path`` exists; False for a name the file system cannot even look up."""
    try:
        return path.exists()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        return False


def check_key(path: Path, key: str, ok: bool, allowed: str | tuple[str, ...], got: object) -> None:
    """Refuse ``key`` of the file ``path`` unless ``ok``: one line, what is allowed, ``got``."""
    if not ok:
        raise invalid(key, allowed=allowed, got=got, source=path)


def check_task_spec(path: Path, key: str, spec: str | None) -> None:
    """Refuse a user task that is not ``package.module:attribute``."""
    from fedguard.task.api import SPEC_FORMAT, is_task_spec

    check_key(path, key, spec is None or is_task_spec(spec), SPEC_FORMAT, spec)
