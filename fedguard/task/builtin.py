"""The built-in models and data sets as tasks of the task API (:mod:`fedguard.task.api`).

``model = "mlp"``, ``dataset = "digits"`` (and ``target``/``schema`` of a CSV/Parquet
file) mean :func:`builtin_task`: the same :class:`~fedguard.task.api.Task` object a user
writes, so every simulation goes through the API's model and data checks.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fedguard.task.api import LoadRequest, Task, load_task

__all__ = ["builtin_task", "resolve_task"]


@functools.lru_cache(maxsize=16)
def builtin_task(
    *,
    model: str,
    hidden: int = 128,
    target: str | None = None,
    schema: str | None = None,
    key: str = "--model",
) -> Task:
    """The built-in ``model`` on a built-in data set or a CSV/Parquet/NPZ file.

    The data set is the request's ``source``; its shape and classes come from the data.
    """

    def make(*, input_shape: tuple[int, ...], num_classes: int) -> object:
        from fedguard.task.models import build_model

        return build_model(
            name=model, input_shape=input_shape, num_classes=num_classes, hidden=hidden, key=key
        )

    def load(request: LoadRequest) -> object:
        from fedguard.task.data import load_dataset

        return load_dataset(
            name=request.source,
            seed=request.seed,
            target=target,
            schema=None if schema is None else Path(schema),
            split=request.split,
            test_fraction=request.test_fraction,
            split_key=request.split_key,
        )

    return Task(name=f"builtin:{model}", model=make, load=load, builtin=True)


def resolve_task(
    *,
    task: str | None,
    model: str,
    hidden: int = 128,
    target: str | None = None,
    schema: str | None = None,
    fix: bool = False,
) -> Task:
    """The user task ``task`` names (``package.module:attribute``), else the built-in one."""
    if task is not None:
        return load_task(task, fix=fix or None)
    return builtin_task(model=model, hidden=hidden, target=target, schema=schema)
