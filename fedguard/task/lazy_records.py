"""A lazy task's records: checked and keyed in one streaming pass, never held (#16.4).

A task declared ``lazy=True`` keeps its records where its loader found them (a folder of
images, a Parquet file). :func:`lazy_dataset` reads each record once, in chunks: it checks
it as an eager load does (shape, finiteness, label range), keys it by the SHA-256 of its
raw bytes, sends it to the train or holdout side by the keyed per-record hash, and keeps
its label and key, not its features. Training then reads each step's sampled records
through :class:`TaskRecords`, which applies the task's per-record transforms on each read:
no statistic of the whole set is ever computed, so one record still moves one example.

The holdout (the simulation server's evaluation rows) stays on disk too: evaluation reads
it in batches (:func:`record_logits`), so memory does not grow with the data set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from fedguard._record_reads import read_records
from fedguard.errors import ConfigError, DataError
from fedguard.task.api import LoadRequest, Task
from fedguard.task.data import Dataset
from fedguard.task.metrics import Metrics, compute_metrics
from fedguard.task.record_checks import checked_record
from fedguard.task.records import holdout_mask, record_keys, simulation_holdout_key

__all__ = [
    "LazyDataset",
    "TaskRecords",
    "evaluate_records",
    "in_memory",
    "lazy_dataset",
    "record_logits",
]

CHUNK = 256
"""Records read together in the streaming pass (one ``fetch`` where the set offers it)."""


def _items(data: Any, indices: Sequence[int]) -> list[Any]:
    """Records ``indices`` of ``data`` as ``(x, y)`` items, batched where it can."""
    if hasattr(data, "fetch"):
        x, y = data.fetch(list(indices))
        return list(zip(x, y, strict=True))
    if hasattr(data, "__getitems__"):
        got = data.__getitems__(list(indices))
        if isinstance(got, tuple) and len(got) == 2:  # a batch (x, y)
            return list(zip(got[0], got[1], strict=True))
        return list(got)
    return [data[i] for i in indices]


class TaskRecords(TorchDataset):
    """Records ``indices`` of a task's map-style data set, transformed on each read.

    Item ``i`` is ``(float32 features, label)`` of record ``indices[i]``, checked as at
    load (shape, finite, label range) and transformed by the task's per-record
    transforms, exactly the row an eager load would have put in ``x_train``.

    With ``keys`` (the training records'), each read is keyed again and refused if the
    record changed since the load: the per-record budget charges the load's keys, so a
    record rewritten on disk must not train under the key of the record it replaced.
    """

    def __init__(
        self,
        *,
        task: Task,
        data: Any,
        indices: np.ndarray,
        obj: str,
        keys: np.ndarray | None = None,
    ) -> None:
        self.task, self.data, self.obj, self.keys = task, data, obj, keys
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([i])[0]

    def __getitems__(self, idx: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        real = [int(self.indices[i]) for i in idx]
        out = []
        for i, j, item in zip(idx, real, _items(self.data, real), strict=True):
            keyed = self.keys is not None
            x, label, record = checked_record(self.task, self.obj, j, item, keyed=keyed)
            if (
                self.keys is not None
                and record_keys([record])[0].tobytes() != self.keys[i].tobytes()
            ):
                raise DataError(
                    f"task {self.task.name}: record {j} of {self.obj} changed since it was "
                    "loaded (its bytes no longer give the key its budget is charged to); "
                    "restart to load the records again"
                )
            out.append((torch.from_numpy(x.astype(np.float32)), label))
        return out


@dataclass(frozen=True, eq=False)
class LazyDataset:
    """A split data set whose records stay on disk (no ``x_train``, no ``x_test``).

    ``train`` reads training record ``i`` (label ``y_train[i]``, key
    ``train_record_keys[i]``); ``test`` reads holdout record ``i`` (label ``y_test[i]``).
    """

    name: str
    train: TaskRecords
    test: TaskRecords
    y_train: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    train_record_keys: np.ndarray
    class_names: tuple[str, ...] = ()
    dp_scaling: None = None  # a lazy task has no schema dp columns

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3


def lazy_dataset(task: Task, loaded: Any, request: LoadRequest, *, obj: str) -> LazyDataset:
    """One streaming pass over ``loaded``: check, key and split every record, keep none."""
    n = len(loaded)
    shape = tuple(task.input_shape or ())
    key = request.split_key or simulation_holdout_key(int(request.seed))
    train_idx: list[int] = []
    y_train: list[int] = []
    keys: list[np.ndarray] = []
    test_idx: list[int] = []
    y_test: list[int] = []
    for start in range(0, n, CHUNK):
        chunk = range(start, min(n, start + CHUNK))
        for i, item in zip(chunk, _items(loaded, chunk), strict=True):
            _, label, record = checked_record(task, obj, i, item)  # checked, not kept
            if request.split == "none":
                held = False
            elif request.split == "all-test":
                held = True
            else:
                held = bool(holdout_mask([record], key=key, fraction=request.test_fraction)[0])
            if held:
                test_idx.append(i)
                y_test.append(label)
            else:
                train_idx.append(i)
                y_train.append(label)
                keys.append(record_keys([record])[0])
    if request.split not in ("none", "all-test") and (not train_idx or not y_test):
        raise DataError(
            f"{request.source}: {n} rows are too few for a train/test split with "
            f"test_fraction={request.test_fraction} ({len(y_test)} held out)"
        )
    train_keys = np.stack(keys) if keys else np.zeros((0, 32), dtype=np.uint8)
    return LazyDataset(
        name=task.name,
        train=TaskRecords(
            task=task, data=loaded, indices=np.array(train_idx), obj=obj, keys=train_keys
        ),
        test=TaskRecords(task=task, data=loaded, indices=np.array(test_idx), obj=obj),
        y_train=np.array(y_train, dtype=np.int64),
        y_test=np.array(y_test, dtype=np.int64),
        num_classes=int(task.num_classes or 0),
        input_shape=shape,
        train_record_keys=train_keys,
        class_names=task.class_names,
    )


def in_memory(data: Dataset | LazyDataset, *, where: str) -> Dataset:
    """``data`` if its training rows are in memory; a lazy task is refused by ``where``
    (a path that hands rows, not a data set, to its trainers)."""
    if isinstance(data, LazyDataset):
        raise ConfigError(
            f"{where}: expected a task loaded into memory, got the lazy task {data.name} "
            "(lazy = True): train it with the in-process engine or on a deployed node"
        )
    return data


def record_logits(
    *, model: torch.nn.Module, data: TaskRecords, batch_size: int = 256
) -> np.ndarray:
    """``model``'s logits (float32, ``[len(data), classes]``) for every record of ``data``,
    read ``batch_size`` records at a time, in eval mode (its mode restored)."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                x, _ = read_records(data, range(start, min(len(data), start + batch_size)))
                out.append(model(x.to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def evaluate_records(
    *, model: torch.nn.Module, data: TaskRecords, y: np.ndarray, num_classes: int
) -> Metrics:
    """:func:`fedguard.task.train.evaluate` on records read in batches (a lazy holdout)."""
    return compute_metrics(
        y_true=np.asarray(y, dtype=np.int64),
        logits=record_logits(model=model, data=data),
        num_classes=num_classes,
    )
