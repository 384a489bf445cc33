"""What a task's model and records must be before fedguard trains on them (#16.3).

Every refusal is one line naming the task, the object (a layer's module path, a record's
index in the loader's output, a transform) and what is wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from fedguard.errors import ConfigError, DataError
from fedguard.task.api import LoadRequest, Task, TaskArrays
from fedguard.task.data import Dataset, _Picker, _Rows
from fedguard.task.lazy_records import LazyDataset, lazy_dataset
from fedguard.task.record_checks import checked_record, raw_record
from fedguard.task.records import simulation_holdout_key

__all__ = [
    "check_dataset",
    "check_model",
    "check_transforms",
    "dataset_from_records",
    "load_task_data",
    "make_model",
]

_log = logging.getLogger(__name__)

PROBE_RECORDS = 4
"""Records whose transformed features are compared before and after the transform has
seen other records (a per-record transform gives the same output)."""


def _first_sentence(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text.split(". ")[0].rstrip(".")


def _problems(model: nn.Module) -> list[tuple[str, str, str]]:
    """(module path, layer type, Opacus's reason) for every layer Opacus refuses."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    was_training = model.training
    model.train()  # Opacus validates training mode
    try:
        found = [
            (name or "<model>", type(sub).__name__, _first_sentence(err))
            for name, sub in trainable_modules(model)
            for err in ModuleValidator.VALIDATORS.get(type(sub), lambda _m: [])(sub)
        ]
    finally:
        model.train(was_training)
    return found


def check_model(task: Task, model: Any) -> nn.Module:
    """``model`` if Opacus can train it per example; else ``ModuleValidator.fix(model)``
    when ``task.fix`` (logged), else a :class:`ConfigError` naming the first layer."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"task {task.name}: model() must return a torch.nn.Module, got {type(model).__name__}"
        )
    problems = _problems(model)
    if not problems:
        return model
    path, kind, why = problems[0]
    more = f" (and {len(problems) - 1} more layer(s))" if len(problems) > 1 else ""
    if not task.fix:
        raise ConfigError(
            f"task {task.name}: model layer {path} ({kind}) cannot be trained with DP-SGD: "
            f"{why}{more}; replace it with torch.nn.GroupNorm, or set fix = true to let "
            "Opacus's ModuleValidator.fix do it"
        )
    from opacus.validators import ModuleValidator

    fixed = ModuleValidator.fix(model)
    left = _problems(fixed)
    if left:
        p, k, w = left[0]
        raise ConfigError(
            f"task {task.name}: model layer {p} ({k}) cannot be trained with DP-SGD: {w}; "
            "ModuleValidator.fix cannot replace it (fix = true): change the model"
        )
    replaced = ", ".join(
        f"{p} ({k} -> {type(fixed.get_submodule(p)).__name__})" for p, k, _ in problems
    )
    _log.warning(
        "task %s: fix = true: Opacus's ModuleValidator.fix replaced %s", task.name, replaced
    )
    return fixed


def check_transforms(task: Task, first: list[np.ndarray], others: list[np.ndarray]) -> None:
    """Refuse a transform whose output for a record changes once it has seen other records
    (state kept across records: a running mean is fitted to the data, undeclared)."""
    for t in task.transforms:
        before = [np.array(t.apply(np.array(r)), copy=True) for r in first]
        for r in others:
            t.apply(np.array(r))
        after = [np.asarray(t.apply(np.array(r))) for r in first]
        for i, (a, b) in enumerate(zip(before, after, strict=True)):
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
                raise ConfigError(
                    f"task {task.name}: transform {t.name!r} gave record {i} another output "
                    "after seeing other records (it keeps state across records, e.g. a "
                    "running mean); a transform must be a function of one record with "
                    "public constants"
                )


def dataset_from_records(task: Task, loaded: Any, request: LoadRequest) -> Dataset | LazyDataset:
    """Transform, check and split what a task's loader returned (:class:`TaskArrays` or a
    map-style torch Dataset, read one record at a time)."""
    if isinstance(loaded, TaskArrays):
        obj = "TaskArrays"
        x_all, y_all = np.asarray(loaded.x), np.asarray(loaded.y)
        if x_all.ndim < 1 or y_all.shape != (len(x_all),):
            raise DataError(
                f"task {task.name}: TaskArrays x{x_all.shape} and y{y_all.shape} must hold "
                "the same number of records"
            )
        n = len(x_all)
        get: Callable[[int], Any] = lambda i: (x_all[i], y_all[i])  # noqa: E731
    elif hasattr(loaded, "__getitem__") and hasattr(loaded, "__len__"):
        obj = type(loaded).__name__
        n = len(loaded)
        get = loaded.__getitem__
    else:
        raise ConfigError(
            f"task {task.name}: load() must return TaskArrays, a map-style torch Dataset or a "
            f"fedguard Dataset, got {type(loaded).__name__}"
        )
    if n < 1:
        raise DataError(f"task {task.name}: {obj} from {request.source!r} holds no record")
    shape = tuple(task.input_shape or ())
    if task.transforms:
        probe = [raw_record(task, obj, i, get(i))[0] for i in range(min(PROBE_RECORDS, n))]
        others = [raw_record(task, obj, i, get(i))[0] for i in range(len(probe), min(n, 16))]
        # Neighbours that differ from every probe record, even when the set is tiny.
        others += [r * 2.0 + 1.0 for r in probe]
        check_transforms(task, probe, others)
    if task.lazy:
        return lazy_dataset(task, loaded, request, obj=obj)
    xs = np.empty((n, *shape), dtype=np.float32)
    ys = np.empty(n, dtype=np.int64)
    records: list[bytes] = []
    for i in range(n):
        x, ys[i], record = checked_record(task, obj, i, get(i))
        xs[i] = x
        records.append(record)
    key = request.split_key or simulation_holdout_key(int(request.seed))
    picker = _Picker(
        split=request.split, key=key, fraction=float(request.test_fraction), source=request.source
    )
    num_classes = int(task.num_classes or 0)
    return picker.dataset(
        task.name, _Rows(xs, ys, records), None, num_classes, None, task.class_names
    )


def check_dataset(task: Task, data: Dataset) -> Dataset:
    """A ready Dataset (a built-in loader's) against the task's declared shape and labels."""
    if task.input_shape is not None and tuple(data.input_shape) != tuple(task.input_shape):
        raise DataError(
            f"task {task.name}: records have shape {data.input_shape}, the task declares "
            f"input_shape {task.input_shape}"
        )
    k = task.num_classes or data.num_classes
    for split, y in (("train", data.y_train), ("test", data.y_test)):
        if y.size and (int(y.min()) < 0 or int(y.max()) >= k):
            raise DataError(
                f"task {task.name}: {split} labels {int(y.min())}..{int(y.max())} are outside "
                f"0..{k - 1} (num_classes = {k})"
            )
    return data


def make_model(
    task: Task,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """The task's model, freshly initialised (seeded by ``generator``, the global torch
    RNG left untouched) and checked by Opacus's validator (fixed if ``task.fix``)."""
    import torch

    if generator is None:
        model = task.model(input_shape=tuple(input_shape), num_classes=int(num_classes))
    else:
        # One seed drawn from the caller's generator, then the factory runs under it with
        # the global RNG restored afterwards (build_model has always seeded this way).
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = task.model(input_shape=tuple(input_shape), num_classes=int(num_classes))
    return check_model(task, model)


def load_task_data(task: Task, request: LoadRequest) -> Dataset | LazyDataset:
    """The task's records for ``request`` as a checked, split ``Dataset`` (a
    :class:`~fedguard.task.lazy_records.LazyDataset` for a ``lazy`` task)."""
    loaded = task.load(request)
    if isinstance(loaded, Dataset):
        if task.lazy:
            raise ConfigError(
                f"task {task.name}: lazy = True, but load returned a ready Dataset (its "
                "records in memory); return a map-style torch Dataset instead"
            )
        if task.transforms:
            raise ConfigError(
                f"task {task.name}: load returned a ready Dataset, so its transforms would "
                "not run; return TaskArrays or a torch Dataset instead"
            )
        return check_dataset(task, loaded)
    return dataset_from_records(task, loaded, request)
