"""The built-in models and data sets as tasks of the task API (:mod:`fedguard.task.api`).

``model = "mlp"``, ``dataset = "digits"`` (and ``target``/``schema`` of a CSV/Parquet
file) mean :func:`builtin_task`: the same :class:`~fedguard.task.api.Task` object a user
writes, so every simulation goes through the API's model and data checks.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from fedguard.errors import RefusalError
from fedguard.task.api import LoadRequest, Task, is_task_spec, load_task
from fedguard.task.task_checks import make_model

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["build_task_model", "builtin_task", "resolve_task", "task_name"]


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

    def make(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
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


def task_name(*, task: str | None, model: str) -> str:
    """What a round's request names as its model: the user task's spec, else the built-in
    model's name (a node builds it with :func:`build_task_model`)."""
    return task if task is not None else model


def build_task_model(
    *,
    name: str,
    installed: str | None,
    input_shape: tuple[int, ...],
    num_classes: int,
    generator: torch.Generator | None = None,
    key: str = "--model",
) -> nn.Module:
    """The model ``name`` means: a user task ``package.module:attribute`` (its factory,
    checked by Opacus's validator, fixed if the task says ``fix``), or a built-in model.

    ``installed`` is the user task this process was configured with (None: built-ins
    only). A request naming any other task is refused before anything is imported: a
    node never imports a module because a server named it.
    """
    if name != installed and (installed is not None or is_task_spec(name)):
        raise RefusalError(
            f"{key}: the request names task {name!r}, this process has "
            f"{installed or 'the built-in tasks'} installed"
        )
    task = load_task(name, key=key) if is_task_spec(name) else builtin_task(model=name, key=key)
    return make_model(task, input_shape=input_shape, num_classes=num_classes, generator=generator)
