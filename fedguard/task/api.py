"""The task API: bring your own model and data (#16.3).

A task is a :class:`Task`: a model factory, a loader of one node's (or one simulated
federation's) records, what one record looks like (input shape, number of classes), and
optionally per-record transforms and evaluation metrics. It is named in TOML and on the
command line as ``package.module:attribute`` (Flower's convention), for example
``task = "credit_task:task"``; :func:`load_task` imports it. The built-in models and data
sets are tasks too (:func:`fedguard.task.builtin.builtin_task`): ``model =``/``dataset =``
keys mean a built-in task, and every simulation runs through
:mod:`fedguard.task.task_checks` (``make_model``, ``load_task_data``).

Checked at load, each refusal one line naming the task, the object and what is wrong:

- the model passes Opacus's ``ModuleValidator`` (BatchNorm and other layers that mix
  the examples of a batch void per-example clipping); ``fix = true`` lets
  ``ModuleValidator.fix`` replace them with GroupNorm, and says so;
- the records match the declared shape and label range (:mod:`fedguard.task.task_checks`);
- transforms are per record with public constants. Anything computed from records
  before DP-SGD is part of the mechanism, so a transform declared ``fitted`` (a mean or
  scale computed from the data) is refused: compute its constants from public data, or
  declare the columns ``scaling = "dp"`` in the schema, where fedguard computes them with
  a DP estimate charged to every record's budget. A transform that keeps state across
  records (a running mean) is caught by a neighbouring-records probe.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedguard.errors import ConfigError, invalid

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "SPEC_FORMAT",
    "LoadRequest",
    "RecordTransform",
    "Task",
    "TaskArrays",
    "is_task_spec",
    "load_task",
]

SPEC_FORMAT = "package.module:attribute naming a fedguard.task.api.Task"
_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")  # fullmatch: no trailing newline
_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RecordTransform:
    """A function of ONE record's features (an array of the declared input shape before
    the transform) with public constants, e.g. ``lambda x: (x - 0.5) / 0.25``.

    ``fitted=True`` declares that its constants were computed from the records (a data
    set mean): such a transform is refused (see the module docstring for the DP way).
    """

    name: str
    apply: Callable[[np.ndarray], np.ndarray]
    fitted: bool = False


@dataclass(frozen=True, kw_only=True)
class LoadRequest:
    """What a task's loader is asked for.

    ``source`` is what the user named as the data (``dataset =`` of the simulation, a
    node's ``[data] dataset``): a file or folder, or a built-in set's name. ``seed`` is
    the run's seed. ``split``/``test_fraction``/``split_key`` only matter to loaders that
    return a ready :class:`~fedguard.task.data.Dataset` (the built-ins); fedguard splits
    what the others return, per record by a keyed hash.
    """

    source: str
    seed: int
    split: str = "holdout"
    test_fraction: float = 0.2
    split_key: bytes | None = None


@dataclass(frozen=True, eq=False)
class TaskArrays:
    """Records as arrays: ``x`` of shape ``(N, *raw_shape)``, ``y`` integer class ids."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True, kw_only=True)
class Task:
    """A federated learning task fedguard trains with DP-SGD.

    Parameters
    ----------
    name
        What errors and results call the task.
    model
        ``model(input_shape=..., num_classes=...) -> torch.nn.Module`` returning logits;
        fedguard seeds the global torch RNG around the call.
    load
        ``load(LoadRequest) -> TaskArrays | torch.utils.data.Dataset`` (map-style: each
        item ``(features, label)``), or a ready ``fedguard.task.data.Dataset`` (built-ins).
    input_shape, num_classes
        One record's features after the transforms (``(F,)`` or ``(C, H, W)``) and the
        number of classes (labels are ``0..num_classes-1``). ``None`` only for built-in
        tasks, whose data says it.
    transforms
        Applied in order to each record on its own (:class:`RecordTransform`).
    metrics
        Optional ``metrics(y_true, probabilities) -> {name: float}`` computed on the
        evaluation rows at the end of a simulation (``summary.json: task_metrics``).
    fix
        Let Opacus's ``ModuleValidator.fix`` replace layers it cannot train privately.
    class_names
        Each class id's label (``()``: the ids).
    lazy
        Keep the records where ``load`` found them (a map-style data set larger than
        memory): fedguard reads them once to check them, key them and split them, keeps
        only the labels and keys, and training reads each step's sampled records
        (:mod:`fedguard.task.lazy_records`). Training is then one client at a time.
    """

    name: str
    model: Callable[..., nn.Module]
    load: Callable[[LoadRequest], Any]
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    transforms: tuple[RecordTransform, ...] = ()
    metrics: Callable[[np.ndarray, np.ndarray], Mapping[str, float]] | None = None
    fix: bool = False
    class_names: tuple[str, ...] = ()
    lazy: bool = False
    builtin: bool = False

    def __post_init__(self) -> None:
        where = f"task {self.name}"
        if not self.builtin:
            shape = self.input_shape
            if (
                not isinstance(shape, tuple)
                or len(shape) not in (1, 3)
                or not all(isinstance(d, int) and d >= 1 for d in shape)
            ):
                raise invalid(
                    f"{where}: input_shape", allowed="(F,) or (C, H, W) of ints >= 1", got=shape
                )
            k = self.num_classes
            if isinstance(k, bool) or not isinstance(k, int) or k < 2:
                raise invalid(f"{where}: num_classes", allowed="an integer >= 2", got=k)
        for t in self.transforms:
            if not isinstance(t, RecordTransform):
                raise invalid(
                    f"{where}: transforms", allowed="RecordTransform objects", got=type(t).__name__
                )
            if t.fitted:
                raise ConfigError(
                    f"{where}: transform {t.name!r} is declared fitted to the records; "
                    "anything computed from records before DP-SGD is part of the mechanism: "
                    'use constants from public data, or mark the columns scaling = "dp" in '
                    "the schema (a DP estimate charged to every record's budget)"
                )


def is_task_spec(spec: object) -> bool:
    """Whether ``spec`` reads as ``package.module:attribute`` (nothing imported)."""
    return isinstance(spec, str) and _SPEC.fullmatch(spec) is not None


def load_task(spec: str, *, fix: bool | None = None, key: str = "task") -> Task:
    """Import the :class:`Task` that ``spec`` (``package.module:attribute``) names.

    ``fix`` overrides the task's own ``fix`` (the ``fix = true`` config key).
    """
    task = _import_task(spec, key)
    if fix is None or fix == task.fix:
        return task
    import dataclasses

    return dataclasses.replace(task, fix=fix)


@functools.lru_cache(maxsize=8)
def _import_task(spec: str, key: str) -> Task:
    if not is_task_spec(spec):
        raise invalid(key, allowed=SPEC_FORMAT, got=spec)
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{key}: cannot import {module_name!r} for task {spec!r} ({exc}); install the "
            "task's package (or put its folder on PYTHONPATH)"
        ) from None
    task = getattr(module, attr, None)
    if not isinstance(task, Task):
        raise invalid(key, allowed=SPEC_FORMAT, got=f"{spec} ({type(task).__name__})")
    return task
