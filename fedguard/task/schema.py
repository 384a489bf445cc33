"""A declared feature schema for tabular data: every transform is per record.

Anything a node computes from its records before DP-SGD is part of the mechanism: a mean
and std fitted to the node's rows let one record move every other example's features,
so the clipped-gradient sensitivity is no longer 2C. A schema therefore fixes, in public,
how each column becomes features:

- ``numeric``: ``range = [lo, hi]`` (clip to the range, scale to [-1, 1]) or ``centre`` and
  ``scale`` (optionally ``clip = [lo, hi]`` first); ``scaling = "dp"`` (needs ``range``)
  estimates centre and scale with the Gaussian mechanism instead, charged to the node's
  budget (:mod:`fedguard.privacy.dp_scaling`);
- ``categorical``: the declared ``levels``, one-hot encoded;
- ``binary``: two declared ``values`` (default ``false``/``true``), encoded 0 and 1;
- ``identifier`` and ``ignore``: dropped.

``missing`` says what a missing value (``""``, ``NA``, ``N/A``, ``null``) becomes: a public
fill value, or ``"error"`` (the default). The server's task and every node share the file;
:meth:`Schema.digest` lets them compare it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedguard._toml import read_toml
from fedguard.errors import DataError, invalid

__all__ = [
    "COLUMN_TYPES",
    "MISSING_TOKENS",
    "Column",
    "DPScalingPlan",
    "Schema",
    "canonical_text",
    "load_schema",
]

COLUMN_TYPES: tuple[str, ...] = ("numeric", "categorical", "binary", "identifier", "ignore")
MISSING_TOKENS: tuple[str, ...] = ("", "NA", "N/A", "null")
"""Cell values read as missing (and a Parquet null)."""

_SCALINGS = ("public", "dp")
_KEYS = {
    "numeric": {"type", "range", "centre", "scale", "clip", "missing", "scaling"},
    "categorical": {"type", "levels", "missing"},
    "binary": {"type", "values", "missing"},
    "identifier": {"type"},
    "ignore": {"type"},
}
_DEFAULT_BINARY = ("false", "true")


def canonical_text(value: object) -> str | None:
    """One record value as text, whatever type a reader inferred for its column.

    ``None`` for a missing value. Integral numbers print as integers (``1.0`` -> ``"1"``)
    so a column read as float because another row holds ``1.5`` keeps every other row's
    text, and so its record identity (:func:`fedguard.task.data.record_keys`).
    """
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        f = float(value)
        if math.isnan(f):
            return None
        if math.isfinite(f) and f.is_integer() and abs(f) < 2**63:
            return str(int(f))
        return repr(f)
    text = str(value)
    return None if text.strip() in MISSING_TOKENS else text


@dataclass(frozen=True)
class Column:
    """One declared column. ``width`` is how many features it encodes to."""

    name: str
    type: str
    low: float | None = None  # numeric: clip range (range or clip)
    high: float | None = None
    centre: float = 0.0  # numeric: (clipped value - centre) / scale
    scale: float = 1.0
    dp: bool = False  # numeric: centre/scale from the Gaussian mechanism
    levels: tuple[str, ...] = ()  # categorical levels, or binary's two values
    missing: float | str | None = None  # fill value (raw units / a level); None = error

    @property
    def width(self) -> int:
        if self.type == "categorical":
            return len(self.levels)
        return 1 if self.type in ("numeric", "binary") else 0


@dataclass(frozen=True)
class DPScalingPlan:
    """Feature columns whose centre/scale must come from the Gaussian mechanism.

    The loader leaves these columns clipped to ``ranges`` but NOT scaled; the caller
    estimates centre/scale (:func:`fedguard.privacy.dp_scaling.dp_centre_scale`), charges
    the event, then calls :func:`fedguard.task.data.apply_scaling`.
    """

    columns: tuple[int, ...]  # indices into the encoded feature vector
    names: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Schema:
    """A parsed schema file (see the module docstring)."""

    source: Path
    target: str
    labels: tuple[str, ...]
    columns: tuple[Column, ...]  # declared order = feature order

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (sum(c.width for c in self.columns),)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def dp_plan(self) -> DPScalingPlan | None:
        """The columns with ``scaling = "dp"`` (None when there are none)."""
        cols, names, ranges, at = [], [], [], 0
        for c in self.columns:
            if c.dp and c.low is not None and c.high is not None:  # dp implies a range
                cols.append(at)
                names.append(c.name)
                ranges.append((c.low, c.high))
            at += c.width
        if not cols:
            return None
        return DPScalingPlan(columns=tuple(cols), names=tuple(names), ranges=tuple(ranges))

    def canonical(self) -> dict[str, Any]:
        """What :meth:`digest` hashes: every setting, nothing about the file's path."""
        return {
            "format": 1,
            "target": self.target,
            "labels": list(self.labels),
            "columns": [
                [c.name, c.type, c.low, c.high, c.centre, c.scale, c.dp, list(c.levels), c.missing]
                for c in self.columns
            ],
        }

    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical schema: equal on every party that shares it."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def encode(
        self, table: dict[str, list[object]], *, source: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode raw columns (name -> values per row) into ``(x float32, y int64)``.

        Every column of the table must be declared. Values are handled row by row with
        the schema's public constants only; dp-scaled columns are clipped, not scaled.
        """
        declared = {c.name for c in self.columns} | {self.target}
        for name in table:
            if name not in declared:
                raise DataError(
                    f"{source}: column {name!r} is not declared in {self.source} "
                    f"(add [columns.{json.dumps(name)}] with a type: {', '.join(COLUMN_TYPES)})"
                )
        for name in sorted(declared - set(table)):
            raise DataError(f"{source}: column {name!r} declared in {self.source} is missing")
        n = len(table[self.target])
        y = np.empty(n, dtype=np.int64)
        label_ids = {lab: i for i, lab in enumerate(self.labels)}
        for row, value in enumerate(table[self.target]):
            text = canonical_text(value)
            if text not in label_ids:
                raise DataError(
                    f"{source}: row {row + 1}: target {self.target!r} is {value!r}, expected "
                    f"one of the labels declared in {self.source}: {', '.join(self.labels)}"
                )
            y[row] = label_ids[text]
        parts = [_encode_column(c, table[c.name], source=source) for c in self.columns if c.width]
        x = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))
        return x.astype(np.float32), y


def _encode_column(col: Column, values: list[object], *, source: str) -> np.ndarray:
    def missing(row: int) -> object:
        if col.missing is None:
            raise DataError(
                f"{source}: row {row + 1}: column {col.name!r} is missing "
                f"(declare missing = <a fill value> for it in the schema)"
            )
        return col.missing

    texts = [canonical_text(v) for v in values]
    if col.type == "numeric":
        out = np.empty(len(texts), dtype=np.float64)
        for row, text in enumerate(texts):
            raw = missing(row) if text is None else text
            try:
                f = float(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                f = math.nan
            if not math.isfinite(f):
                raise DataError(
                    f"{source}: row {row + 1}: column {col.name!r} must be a finite number, "
                    f"got {values[row]!r}"
                )
            out[row] = f
        if col.low is not None and col.high is not None:
            out = np.clip(out, col.low, col.high)
        if not col.dp:
            out = (out - col.centre) / col.scale
        return out[:, None]
    levels = {lev: i for i, lev in enumerate(col.levels)}
    out = np.zeros((len(texts), len(col.levels) if col.type == "categorical" else 1))
    for row, text in enumerate(texts):
        value = str(missing(row)) if text is None else text
        if value not in levels:
            raise DataError(
                f"{source}: row {row + 1}: column {col.name!r} is {values[row]!r}, expected "
                f"one of {', '.join(col.levels)} (the {col.type} values declared for it)"
            )
        if col.type == "categorical":
            out[row, levels[value]] = 1.0
        else:
            out[row, 0] = float(levels[value])
    return out


# --------------------------------------------------------------------------- parsing


def load_schema(path: Path) -> Schema:
    """Read and validate a schema file; every error names the file and the key."""
    path = Path(path)
    return parse_schema(read_toml(path, option="schema"), source=path)


def parse_schema(raw: dict[str, Any], *, source: Path) -> Schema:
    """Validate a schema already read as a TOML table."""
    for key in raw:
        if key not in ("target", "columns"):
            raise invalid(key, allowed="a known key: columns, target", got=key, source=source)
    target = _table(raw.get("target"), "target", source)
    for key in target:
        if key not in ("column", "labels"):
            raise invalid(
                f"target.{key}", allowed="a known key: column, labels", got=key, source=source
            )
    column = target.get("column")
    if not isinstance(column, str) or not column:
        raise invalid("target.column", allowed="the label column's name", got=column, source=source)
    labels = _levels(target.get("labels"), "target.labels", source, minimum=2)
    declared = _table(raw.get("columns"), "columns", source)
    if not declared:
        raise invalid("columns", allowed="at least one [columns.NAME] table", got={}, source=source)
    if column in declared:
        raise invalid(
            f"columns.{column}",
            allowed="no entry for the target column (it is declared in [target])",
            got=column,
            source=source,
        )
    columns = tuple(
        _column(name, _table(spec, f"columns.{name}", source), source)
        for name, spec in declared.items()
    )
    if not any(c.width for c in columns):
        raise invalid("columns", allowed="at least one feature column", got="none", source=source)
    return Schema(source=source, target=column, labels=labels, columns=columns)


def _table(value: object, key: str, source: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(key, allowed="a [table]", got=value, source=source)
    return value


def _number(value: object, key: str, source: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(key, allowed="a finite number", got=value, source=source)
    return float(value)


def _pair(value: object, key: str, source: Path) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise invalid(key, allowed="[low, high]", got=value, source=source)
    low, high = (_number(v, key, source) for v in value)
    if not low < high:
        raise invalid(key, allowed="[low, high] with low < high", got=value, source=source)
    return low, high


def _levels(value: object, key: str, source: Path, *, minimum: int) -> tuple[str, ...]:
    items = value if isinstance(value, list) else []
    ok = isinstance(value, list) and all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in items
    )
    texts = tuple(str(v) for v in items) if ok else ()
    if not ok or len(texts) < minimum or len(set(texts)) != len(texts):
        raise invalid(
            key,
            allowed=f"a list of at least {minimum} distinct strings or integers",
            got=value,
            source=source,
        )
    return texts


def _column(name: str, spec: dict[str, Any], source: Path) -> Column:
    key = f"columns.{name}"
    kind = spec.get("type")
    if kind not in COLUMN_TYPES:
        raise invalid(f"{key}.type", allowed=COLUMN_TYPES, got=kind, source=source)
    for k in spec:
        if k not in _KEYS[kind]:
            allowed = "a key of a " + kind + " column: " + ", ".join(sorted(_KEYS[kind]))
            raise invalid(f"{key}.{k}", allowed=allowed, got=k, source=source)
    fill = spec.get("missing", "error")
    if kind == "numeric":
        return _numeric(name, spec, source, fill)
    if kind in ("identifier", "ignore"):
        return Column(name=name, type=kind)
    if kind == "categorical":
        levels = _levels(spec.get("levels"), f"{key}.levels", source, minimum=1)
    else:
        raw_values = spec.get("values", list(_DEFAULT_BINARY))
        levels = _levels(raw_values, f"{key}.values", source, minimum=2)
        if len(levels) != 2:
            raise invalid(f"{key}.values", allowed="two values", got=raw_values, source=source)
    if fill == "error":
        return Column(name=name, type=kind, levels=levels)
    if isinstance(fill, bool) or not isinstance(fill, str | int) or str(fill) not in levels:
        raise invalid(
            f"{key}.missing",
            allowed="'error' or one of the declared values: " + ", ".join(levels),
            got=fill,
            source=source,
        )
    return Column(name=name, type=kind, levels=levels, missing=str(fill))


def _numeric(name: str, spec: dict[str, Any], source: Path, fill: object) -> Column:
    key = f"columns.{name}"
    scaling = spec.get("scaling", "public")
    if scaling not in _SCALINGS:
        raise invalid(f"{key}.scaling", allowed=_SCALINGS, got=scaling, source=source)
    has_range, has_centre = "range" in spec, "centre" in spec or "scale" in spec
    if has_range == has_centre:
        raise invalid(
            key,
            allowed="either range = [low, high] or centre and scale (public constants)",
            got=sorted(k for k in spec if k in ("range", "centre", "scale")),
            source=source,
        )
    if scaling == "dp" and not has_range:
        raise invalid(
            f"{key}.scaling",
            allowed="'public' unless range is declared ('dp' clips to it)",
            got=scaling,
            source=source,
        )
    low: float | None
    high: float | None
    if has_range:
        if "clip" in spec:
            clip = spec["clip"]
            raise invalid(f"{key}.clip", allowed="no clip with range", got=clip, source=source)
        low, high = _pair(spec["range"], f"{key}.range", source)
        centre, scale = (low + high) / 2, (high - low) / 2
    else:
        centre = _number(spec.get("centre"), f"{key}.centre", source)
        scale = _number(spec.get("scale"), f"{key}.scale", source)
        if scale <= 0:
            raise invalid(f"{key}.scale", allowed="a number > 0", got=scale, source=source)
        low, high = _pair(spec["clip"], f"{key}.clip", source) if "clip" in spec else (None, None)
    missing: float | None = None
    if fill != "error":
        if isinstance(fill, str):
            raise invalid(
                f"{key}.missing", allowed="'error' or a finite number", got=fill, source=source
            )
        missing = _number(fill, f"{key}.missing", source)
    return Column(
        name=name,
        type="numeric",
        low=low,
        high=high,
        centre=centre,
        scale=scale,
        dp=scaling == "dp",
        missing=missing,
    )
