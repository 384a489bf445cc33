"""A simulation's data and starting model, the same for every engine.

The data set is loaded once per process and split among the virtual clients by a seeded
partition; the global model of round 0 is seeded by the run seed. Every engine (in
process, Ray, Flower) builds both here, so their clients train on the same rows from the
same weights.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch

from fedguard.config import SimulationConfig
from fedguard.errors import ConfigError
from fedguard.fl.seeds import Stream, stream_rng
from fedguard.privacy.dp_scaling import SCALE_FLOOR
from fedguard.task import Dataset, partition
from fedguard.task.api import LoadRequest, Task
from fedguard.task.builtin import resolve_task
from fedguard.task.lazy_records import LazyDataset
from fedguard.task.task_checks import load_task_data, make_model

__all__ = [
    "FederatedData",
    "clear_data_cache",
    "federated_data",
    "initial_model",
    "load_federated_data",
    "simulation_task",
]


@dataclass(frozen=True)
class FederatedData:
    """A data set split among virtual clients (simulation: every engine splits alike)."""

    dataset: Dataset | LazyDataset  # lazy: training records read per step, never held
    partitions: tuple[np.ndarray, ...]


@functools.lru_cache(maxsize=4)
def load_federated_data(
    *,
    dataset: str,
    target: str | None,
    seed: int,
    clients: int,
    scheme: str,
    alpha: float,
    schema: str | None = None,
    task: str | None = None,
) -> FederatedData:
    """Load ``dataset`` and split its training part among ``clients``, seeded.

    Every transform is per record with public constants (:mod:`fedguard.task.data`), so
    loading the set once and partitioning it gives each virtual client exactly what a
    node loading only its own rows would get; the test holdout is drawn per record by a
    keyed hash (key from ``seed``), so no statistic crosses clients or the train/test
    boundary. Cached per process: a Flower ClientApp is rebuilt for every message, but
    the virtual node's worker process keeps the loaded data.

    Columns a schema marks ``scaling = "dp"`` stay clipped and unscaled in ``x_train``:
    each virtual client scales its own rows with its own DP estimate, charged to its
    accountant, as a deployed node does (:mod:`fedguard.simulations.virtual_scaling`). The
    test rows (the server's) are standardised with their own exact mean and std
    (:func:`standardise_eval_rows`).
    """
    data = standardise_eval_rows(
        _load_dataset_cached(name=dataset, seed=seed, target=target, schema=schema, task=task)
    )
    parts = partition(
        labels=data.y_train,
        num_clients=clients,
        scheme=scheme,
        rng=stream_rng(seed=seed, stream=Stream.PARTITION),
        alpha=alpha,
    )
    return FederatedData(dataset=data, partitions=tuple(parts))


@functools.lru_cache(maxsize=2)
def _load_dataset_cached(
    *, name: str, seed: int, target: str | None, schema: str | None, task: str | None = None
) -> Dataset | LazyDataset:
    """One copy per process for every partitioning of the same data (a sweep's IID and
    Dirichlet cells): ScatterNet features take ~45 s to compute and ~1.1 GB to hold."""
    # The data is the task's whatever its model: the built-in loader ignores the model.
    loader = resolve_task(task=task, model="logreg", target=target, schema=schema)
    return load_task_data(loader, LoadRequest(source=name, seed=seed))


def standardise_eval_rows(data: Dataset | LazyDataset) -> Dataset | LazyDataset:
    """``data`` with the dp columns of its TEST rows scaled by those rows' own exact mean
    and std (the same floor as the DP estimate); the training rows untouched.

    Why exact: the evaluation rows are the server's own (a simulation's holdout, a
    deployed server's file); their statistics never leave the server and no node's
    record is in them, so no privacy is spent. Why not the range midpoint and
    half-width: the nodes train on features standardised by their own (noisy) estimate,
    roughly mean 0 and std 1; rows scaled to [-1, 1] would measure the model on another
    distribution.
    """
    plan = data.dp_scaling
    if plan is None or isinstance(data, LazyDataset) or not len(data.x_test):
        return data
    cols = list(plan.columns)
    values = data.x_test[:, cols].astype(np.float64)
    low, high = np.asarray(plan.ranges, dtype=np.float64).T
    half = (high - low) / 2
    centre = values.mean(axis=0)
    scale = np.maximum(values.std(axis=0), SCALE_FLOOR * half)
    x_test = data.x_test.copy()
    x_test[:, cols] = ((values - centre) / scale).astype(np.float32)
    return dataclasses.replace(data, x_test=x_test)


def clear_data_cache() -> None:
    """Forget every data set and partition loaded in this process (tests; changed files)."""
    load_federated_data.cache_clear()
    _load_dataset_cached.cache_clear()


def initial_model(config: SimulationConfig, data: FederatedData) -> torch.nn.Module:
    """The global model of round 0, seeded so every engine starts from the same weights."""
    ds = data.dataset
    return make_model(
        simulation_task(config),
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        generator=torch.Generator().manual_seed(config.seed),
    )


def simulation_task(config: SimulationConfig) -> Task:
    """The task a simulation trains: ``task =`` if set, else the built-in ``model``."""
    return resolve_task(
        task=config.task,
        model=config.model,
        hidden=config.hidden,
        target=config.target,
        schema=None if config.schema is None else str(config.schema),
        fix=config.fix_model,
    )


def federated_data(config: SimulationConfig) -> FederatedData:
    """The simulation's data set and partition (cached per process)."""
    data = load_federated_data(
        dataset=config.dataset,
        target=config.target,
        seed=config.seed,
        clients=config.clients,
        scheme=config.partition,
        alpha=config.alpha,
        schema=None if config.schema is None else str(config.schema),
        task=config.task,
    )
    plan = data.dataset.dp_scaling
    if plan is not None and config.engine not in ("inprocess", "ray"):
        # Flower's virtual ClientApp does not scale or charge them yet (client/app.py).
        raise ConfigError(
            f'--engine: expected inprocess with scaling = "dp" columns ({", ".join(plan.names)}'
            f" in {config.schema}), got {config.engine}"
        )
    return data
