"""How labels map to class ids, said the same way everywhere (#17.4): the simulate,
server and node consoles print it, ``summary.json`` stores it. No torch import (the
server's launcher prints it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["class_mapping", "declared_labels", "default_names"]


def default_names(num_classes: int) -> tuple[str, ...]:
    """Without a schema, labels are the class ids themselves (booleans: false 0, true 1)."""
    return tuple(str(i) for i in range(num_classes))


def class_mapping(names: Sequence[str]) -> str:
    """``classes: 'No' -> 0, 'Yes' -> 1`` (a label's class id is its position)."""
    return "classes (label -> id): " + ", ".join(f"{n!r} -> {i}" for i, n in enumerate(names))


def declared_labels(schema: Path | None, num_classes: int) -> tuple[str, ...]:
    """The labels a schema declares, in class-id order (``Schema.labels``), or the
    integer ids without one. Read lightly: the schema is validated where it is used,
    and one that cannot be read here falls back to the ids."""
    if schema is None:
        return default_names(num_classes)
    from fedguard._toml import toml_loads
    from fedguard.errors import FedguardError

    try:
        raw = toml_loads(schema.read_text(encoding="utf-8"), source=schema)
    except (OSError, UnicodeDecodeError, FedguardError):
        return default_names(num_classes)
    target = raw.get("target")
    labels = target.get("labels") if isinstance(target, dict) else None
    if isinstance(labels, list) and all(isinstance(x, str | int) for x in labels):
        return tuple(str(x) for x in labels)
    return default_names(num_classes)
