"""Reading the sampled records of one step from a map-style data set (util layer).

A map-style data set is anything with ``__len__`` and ``__getitem__(i) -> (x, y)``, as
``torch.utils.data.Dataset``: a folder of image files, a Parquet file read by row group
(:mod:`fedguard.task.lazy_data`). Training reads only the records a step sampled, so a data
set far larger than memory trains in the memory of one batch.

:func:`read_records` reads one batch the cheapest way the data set offers: its own
``fetch(indices) -> (x, y)`` (whole batch, e.g. one read per Parquet row group), torch's
``__getitems__(indices)`` (a list of ``(x, y)``, or an ``(x, y)`` pair), else one
``__getitem__`` per index. :class:`ReadAhead` reads the next batch on one background
thread while the current one trains (file reads, image decoding and pyarrow release the
GIL). Both the DP trainer (``fedguard.privacy``) and non-private training
(``fedguard.task.train``) use them, hence this layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from fedguard.errors import DataError, invalid

__all__ = ["ReadAhead", "dataset_size", "read_records"]


def dataset_size(data: object) -> int:
    """The number of records of a map-style data set (``len``), at least 1."""
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise invalid(
            "data",
            allowed="a map-style data set (__len__ and __getitem__(i) -> (x, y), as "
            "torch.utils.data.Dataset)",
            got=type(data).__name__,
        )
    n = len(data)
    if n < 1:
        raise invalid("data", allowed="a data set with at least 1 record", got=f"{n} records")
    return int(n)


def read_records(data: Any, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Records ``indices`` of ``data`` as ``x [k, ...]`` and integer labels ``y [k]``.

    Raises
    ------
    DataError
        The data set returned something else (names the data set and what it returned).
    """
    idx = [int(i) for i in indices]
    if hasattr(data, "fetch"):
        got = data.fetch(idx)
    elif hasattr(data, "__getitems__"):
        got = data.__getitems__(idx)
    else:
        got = [data[i] for i in idx]
    if isinstance(got, list):
        got = _stack(data, got)
    if (
        not isinstance(got, tuple)
        or len(got) != 2
        or not all(isinstance(t, torch.Tensor) for t in got)
    ):
        raise DataError(
            f"{type(data).__name__}: expected a batch (x, y) of tensors, got {type(got).__name__}"
        )
    x, y = got
    if x.ndim < 1 or x.shape[0] != len(idx) or y.shape != (len(idx),):
        raise DataError(
            f"{type(data).__name__}: expected x [{len(idx)}, ...] and y [{len(idx)}] for "
            f"{len(idx)} indices, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(f"{type(data).__name__}: labels must be integer class ids, got {y.dtype}")
    return x, y


def _stack(data: object, records: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    if not records:
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    bad = next((r for r in records if not (isinstance(r, tuple | list) and len(r) == 2)), None)
    if bad is not None:
        raise DataError(
            f"{type(data).__name__}: expected each record as (x, y), got {type(bad).__name__}"
        )
    try:
        x = torch.stack([torch.as_tensor(r[0]) for r in records])
    except RuntimeError as exc:  # records of different shapes
        raise DataError(
            f"{type(data).__name__}: expected records of one shape, got {str(exc).splitlines()[0]}"
        ) from None
    return x, torch.as_tensor([int(r[1]) for r in records], dtype=torch.int64)


class ReadAhead:
    """Reads one batch ahead on a single background thread.

    ``submit(indices)`` starts reading; ``take()`` waits for that batch and returns it
    (a reading error is raised there, in the caller's thread). ``close()`` waits for a
    read in flight and stops the thread; use it as a context manager.
    """

    def __init__(self, data: Any) -> None:
        self._data = data
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedguard-read")
        self._pending: Future[tuple[torch.Tensor, torch.Tensor]] | None = None

    def submit(self, indices: Sequence[int]) -> None:
        if self._pending is not None:
            raise RuntimeError("ReadAhead: take() the batch in flight before submitting another")
        self._pending = self._pool.submit(read_records, self._data, list(indices))

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pending is None:
            raise RuntimeError("ReadAhead: nothing submitted")
        pending, self._pending = self._pending, None
        return pending.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
