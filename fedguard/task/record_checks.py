"""One record of a task's loader, checked: a (features, label) pair of numbers, the
declared shape after the transforms, finite, a label in range (#16.3).

Shared by the eager load (:mod:`fedguard.task.task_checks`) and the lazy one
(:mod:`fedguard.task.lazy_records`), which checks each record again on every read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedguard.errors import DataError
from fedguard.task.api import Task
from fedguard.task.records import array_record_bytes

__all__ = ["check_label", "checked_record", "raw_record"]


def raw_record(task: Task, obj: str, i: int, item: Any) -> tuple[np.ndarray, Any]:
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise DataError(
            f"task {task.name}: record {i} of {obj}: expected a (features, label) pair, "
            f"got {type(item).__name__}"
        )
    x, y = item
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    if hasattr(y, "item") and not isinstance(y, np.ndarray):
        y = y.item()
    try:
        # A copy: a transform working in place must not reach the loader's arrays.
        return np.array(x, dtype=np.float64, copy=True), y
    except (TypeError, ValueError):
        raise DataError(
            f"task {task.name}: record {i} of {obj}: features are not numbers ({type(x).__name__})"
        ) from None


def check_label(task: Task, obj: str, i: int, y: Any) -> int:
    k = int(task.num_classes or 0)
    value = np.asarray(y)
    if value.shape != () or value.dtype.kind not in "iuf" or not float(value).is_integer():
        raise DataError(
            f"task {task.name}: record {i} of {obj}: label must be an integer class id, got {y!r}"
        )
    label = int(value)
    if not 0 <= label < k:
        raise DataError(
            f"task {task.name}: record {i} of {obj}: label {label} is outside 0..{k - 1} "
            f"(num_classes = {k})"
        )
    return label


def checked_record(
    task: Task, obj: str, i: int, item: Any, *, keyed: bool = True
) -> tuple[np.ndarray, int, bytes]:
    """Record ``i``'s transformed features (float64), its label and its canonical bytes
    (``b""`` unless ``keyed``), checked against the task's shape, labels and finiteness."""
    shape = tuple(task.input_shape or ())
    raw, y = raw_record(task, obj, i, item)
    # The record's key is its raw bytes, so the transforms (which may work in place,
    # x -= c) get a copy: keys never follow a transform's constants (red team).
    x = raw.copy()
    for t in task.transforms:
        x = np.asarray(t.apply(x), dtype=np.float64)
    if x.shape != shape:
        after = " after the transforms" if task.transforms else ""
        raise DataError(
            f"task {task.name}: record {i} of {obj}: features have shape {x.shape}{after}, "
            f"the task declares input_shape {shape}"
        )
    if not np.isfinite(x).all():
        raise DataError(f"task {task.name}: record {i} of {obj}: features are not all finite")
    label = check_label(task, obj, i, y)
    return x, label, array_record_bytes(raw[None], np.array([label]))[0] if keyed else b""
