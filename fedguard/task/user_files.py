"""The user's own files: CSV / Parquet tables and NumPy ``.npz`` arrays.

Tables go through a declared schema (:mod:`fedguard.task.schema`) when one is given.
Without one a table still loads if every feature column is numeric (used AS IS: anything
fitted to the data is forbidden, so nothing is scaled) and the labels are integer class
ids or booleans. Labels are never mapped through the set of values the node happens to
hold (``np.unique``): that numbering would depend on the other records.

CSV cells are read as text and parsed per record: a reader's column type inference looks
at every row, so one record could otherwise change how the others are read.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from fedguard.class_labels import default_names
from fedguard.errors import DataError, invalid
from fedguard.task.records import array_record_bytes, table_record_bytes
from fedguard.task.schema import DPScalingPlan, Schema, canonical_text

__all__ = ["Arrays", "Table", "load_npz", "load_table"]

_SCHEMA_HINT = (
    "declare the columns in a schema file (--schema FILE, or schema = in [data]/[task]): "
    "categorical levels, binary values, identifier or ignore"
)


@dataclass(frozen=True)
class Table:
    x: np.ndarray
    y: np.ndarray
    records: list[bytes]
    num_classes: int
    plan: DPScalingPlan | None
    classes: tuple[str, ...] = ()  # each class id's label (class_labels.class_mapping)


@dataclass(frozen=True)
class Arrays:
    x: np.ndarray
    y: np.ndarray
    records: list[bytes]
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int


def read_columns(path: Path) -> dict[str, list[object]]:
    """Column name -> raw values of a CSV (every cell as text) or Parquet file."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pa_pq

    raw = _with_file(path, lambda fh: fh.read(), errors=())
    if path.suffix.lower() == ".parquet":

        def parquet(fh: IO[bytes]) -> Any:
            return pa_pq.read_table(fh)

        table = _parse(path, lambda: parquet(io.BytesIO(raw)), (pa.ArrowException, OSError))
    else:
        try:
            header = next(csv.reader(io.StringIO(raw.decode("utf-8-sig").split("\n", 1)[0])))
        except (UnicodeDecodeError, StopIteration, csv.Error) as exc:
            raise DataError(f"{path}: cannot parse (no readable header line: {exc})") from None
        if len(set(header)) != len(header):
            raise DataError(f"{path}: column names must be distinct, got {header}")
        options = pa_csv.ConvertOptions(column_types={name: pa.string() for name in header})
        table = _parse(
            path,
            lambda: pa_csv.read_csv(io.BytesIO(raw), convert_options=options),
            (pa.ArrowException,),
        )
    return {name: table.column(name).to_pylist() for name in table.column_names}


def load_table(path: Path, *, target: str | None, schema: Schema | None) -> Table:
    columns = read_columns(path)
    skip = frozenset(
        c.name for c in (schema.columns if schema else ()) if c.type in ("identifier", "ignore")
    )
    records = table_record_bytes(columns, skip=skip)
    if schema is not None:
        if target is not None and target != schema.target:
            raise invalid(
                "--target",
                allowed=f"no --target, or the schema's target column {schema.target!r}",
                got=target,
                source=schema.source,
            )
        x, y = schema.encode(columns, source=str(path))
        return Table(x, y, records, schema.num_classes, schema.dp_plan(), schema.labels)
    names = list(columns)
    if target is None or target not in names:
        raise invalid("--target", allowed=names, got=target, source=path)
    features = [c for c in names if c != target]
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    for c in features:
        _refuse_identifier(path, c, columns[c])
    matrix = [_numbers(path, c, columns[c]) for c in features]
    y = np.array([_label(path, row, v, target) for row, v in enumerate(columns[target])])
    y = y.astype(np.int64)
    num_classes = max(int(y.max()) + 1 if y.size else 0, 2)
    classes = default_names(num_classes)
    if {canonical_text(v) for v in columns[target]} & {"false", "true"}:
        classes = ("false", "true", *classes[2:])
    x = np.stack(matrix, axis=1).astype(np.float32)
    return Table(x, y, records, num_classes, None, classes)


def _looks_like_id(name: str) -> bool:
    low = name.strip().lower()
    return low in ("id", "uuid", "key", "index") or low.endswith(("_id", "-id", " id", "uuid"))


def _refuse_identifier(path: Path, name: str, values: list[object]) -> None:
    """A column named like an identifier whose every row holds a distinct value is
    refused as a feature, not merely warned about: a node runs unattended (a warning in
    its log is read by no one), a customer number carries nothing a model should learn,
    and declaring it takes one schema line."""
    if len(values) < 2 or not _looks_like_id(name):
        return
    texts = [canonical_text(v) for v in values]
    if None in texts or len(set(texts)) != len(texts):
        return
    raise DataError(
        f"{path}: column {name!r} looks like an identifier (named like one, a distinct value "
        f"in each of its {len(texts)} rows) and is not used as a feature without a schema: "
        f'declare it in a schema file ([columns.{name}] type = "identifier", or "ignore"; '
        "--schema FILE or schema = in [data]/[task]), or rename the column if it is a "
        "measurement"
    )


def _numbers(path: Path, name: str, values: list[object]) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values):
        text = canonical_text(value)
        if text is None:
            raise DataError(
                f"{path}: row {row + 1}: feature column {name!r} is missing "
                f"(declare missing = <a fill value> for it in a schema: {_SCHEMA_HINT})"
            )
        try:
            f = float(text)
        except ValueError:
            raise DataError(
                f"{path}: row {row + 1}: feature column {name!r} holds text {value!r}, and "
                f"without a schema every feature must be numeric ({_SCHEMA_HINT})"
            ) from None
        if not math.isfinite(f):
            raise DataError(
                f"{path}: row {row + 1}: feature column {name!r} has a NaN or infinite value"
            )
        out[row] = f
    return out


def _label(path: Path, row: int, value: object, target: str) -> int:
    text = canonical_text(value)
    if text in ("false", "true"):
        return int(text == "true")
    if text is not None and text.isdigit():
        return int(text)
    raise DataError(
        f"{path}: row {row + 1}: target {target!r} is {value!r}; without a schema labels must "
        f"be integer class ids >= 0 or booleans (declare [target] labels = [...] in a schema "
        f"to name string labels: --schema FILE)"
    )


def load_npz(path: Path) -> Arrays:
    def read(fh: IO[bytes]) -> dict[str, np.ndarray]:
        # allow_pickle=False: a pickled array would run code from the file.
        with np.load(fh, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    arrays = _with_file(path, read, errors=(ValueError, EOFError))
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: needs arrays 'x' and 'y', found {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: 'x_test' and 'y_test' must come together, found {sorted(arrays)}")
    pairs = [("x", "y")] + ([("x_test", "y_test")] if "x_test" in arrays else [])
    raw_x = arrays["x"]
    for xk, yk in pairs:
        x, y = arrays[xk], arrays[yk]
        if x.ndim not in (2, 3, 4) or y.shape != (len(x),):
            raise DataError(
                f"{path}: {xk!r} must be (N, F), (N, H, W) or (N, C, H, W) and {yk!r} (N,), "
                f"got {x.shape} and {y.shape}"
            )
        if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
            raise DataError(f"{path}: {xk!r} must hold finite numbers (dtype {x.dtype})")
        if x.ndim == 3:  # (N, H, W): one channel
            arrays[xk] = x[:, None]
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_) or (
            y.size and y.min() < 0
        ):
            raise DataError(
                f"{path}: {yk!r} must hold integer class ids >= 0 or booleans, got dtype "
                f"{y.dtype} (map labels to ids 0..K-1 yourself: a mapping computed from the "
                f"records would depend on them)"
            )
    y_all = np.concatenate([arrays[yk].astype(np.int64) for _, yk in pairs])
    num_classes = max(int(y_all.max()) + 1 if y_all.size else 0, 2)
    x = arrays["x"].astype(np.float32)
    y_tr = arrays["y"].astype(np.int64)
    x_te = y_te = None
    if len(pairs) == 2:
        x_te, y_te = arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int64)
        if x_te.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{path}: 'x_test' examples {x_te.shape[1:]} differ from 'x' {x.shape[1:]}"
            )
    return Arrays(x, y_tr, array_record_bytes(raw_x, y_tr), x_te, y_te, num_classes)


def _parse(path: Path, parse: Any, errors: tuple[type[BaseException], ...]) -> Any:
    try:
        return parse()
    except errors as exc:
        reason = " ".join(str(exc).split())  # parsers put newlines in their messages
        raise DataError(f"{path}: cannot parse ({reason})") from None


def _with_file(path: Path, read: Any, *, errors: tuple[type[BaseException], ...]) -> Any:
    """Open ``path`` ourselves so OS errors carry a clean reason; wrap parser errors."""
    try:
        with path.open("rb") as fh:
            return read(fh)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except errors as exc:
        reason = " ".join(str(exc).split())
        raise DataError(f"{path}: cannot parse ({reason})") from None
