"""``fedguard simulate``: validate everything, run an engine, write the results.

Everything that can be wrong with the input (options, config file, data set, partition)
is checked before the output folder is touched, so bad input leaves no partial files.
Results are written atomically: ``metrics.jsonl`` is rewritten after every round (a
reader never sees half a line), ``summary.json`` and the final global model
(``model.safetensors``: tensors named as the model's ``state_dict``, never pickle) once
at the end.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedguard._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from fedguard.class_labels import default_names
from fedguard.config import SimulationConfig
from fedguard.errors import ConfigError
from fedguard.files import METRICS_FILE, MODEL_FILE, SUMMARY_FILE
from fedguard.fl.data import FederatedData, federated_data, initial_model, simulation_task
from fedguard.fl.loop import RoundRecord
from fedguard.task.lazy_records import LazyDataset, record_logits

__all__ = ["SimulationSummary", "simulate"]

MODEL_FORMAT = "fedguard-model/1"
STATE_DIR = "state"


@dataclass(frozen=True)
class SimulationSummary:
    """What ``summary.json`` holds."""

    # Binary tasks lead with the figures a rare positive class needs (null otherwise):
    # fedguard.task.metrics.Metrics says how each is computed.
    final_roc_auc: float | None
    final_pr_auc: float | None
    final_f1_pos: float | None
    final_precision_pos: float | None
    final_recall_pos: float | None
    final_threshold: float | None  # class-1 probability chosen on the evaluation rows
    final_accuracy: float
    final_f1_macro: float
    final_epsilon_max: float | None
    final_client_epsilon: float | None  # client-level DP (--client-dp), at the same delta
    delta: float | None
    accountant: str | None
    clients: int
    clients_per_round: int
    rounds: int
    engine: str
    wall_seconds: float
    config: dict[str, Any]
    # --client-dp: the figure and what it assumes (accountant, neighbours, sampling).
    client_level_dp: dict[str, object] | None = None
    # Each class id's label (#17.4): classes[i] is the label the model calls class i.
    classes: list[str] | None = None
    # A user task's own metrics (fedguard.task.api.Task.metrics) on the evaluation rows.
    task_metrics: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def simulate(
    config: SimulationConfig,
    *,
    overwrite: bool = False,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> SimulationSummary:
    """Run one simulation and write ``metrics.jsonl`` and ``summary.json`` in ``config.out``."""
    started = time.perf_counter()
    data = federated_data(config)
    _check_fits(config, data)
    out = _prepare_out(config.out, overwrite=overwrite)
    records: list[RoundRecord] = []
    final: list[list[np.ndarray]] = []

    def record_round(record: RoundRecord, weights: list[np.ndarray]) -> None:
        records.append(record)
        final[:] = [weights]
        lines = "".join(json.dumps(r.as_dict(), allow_nan=False) + "\n" for r in records)
        atomic_write_text(out / METRICS_FILE, lines)
        if on_round is not None:
            on_round(record)

    state_dir = out / STATE_DIR
    if config.engine == "flower":
        from fedguard.simulations.flower_engine import run_flower  # imports Flower and Ray

        run_flower(config=config, state_dir=state_dir, on_round=record_round)
    else:
        from fedguard.simulations.inprocess import run_inprocess

        run_inprocess(config=config, data=data, state_dir=state_dir, on_round=record_round)
    if len(records) != config.rounds:
        raise RuntimeError(
            f"engine {config.engine} finished {len(records)} of "
            f"{config.rounds} rounds; see the log above"
        )
    last = records[-1]
    summary = SimulationSummary(
        final_roc_auc=last.roc_auc,
        final_pr_auc=last.pr_auc,
        final_f1_pos=last.f1_pos,
        final_precision_pos=last.precision_pos,
        final_recall_pos=last.recall_pos,
        final_threshold=last.threshold,
        final_accuracy=last.accuracy,
        final_f1_macro=last.f1_macro,
        final_epsilon_max=last.epsilon_max,
        final_client_epsilon=last.client_epsilon,
        delta=None if config.no_dp else config.delta,
        accountant=None if config.no_dp else config.accountant,
        clients=config.clients,
        clients_per_round=config.cohort_size,
        rounds=config.rounds,
        engine=config.engine,
        wall_seconds=time.perf_counter() - started,
        config=config.to_dict(),
        client_level_dp=None if last.client_epsilon is None else _client_level(config, last.round),
        classes=list(data.dataset.class_names or default_names(data.dataset.num_classes)),
        task_metrics=_task_metrics(config, data, final[0]),
    )
    save_model(out / MODEL_FILE, config=config, data=data, weights=final[0])
    atomic_write_json(out / SUMMARY_FILE, summary.as_dict())
    return summary


def _task_metrics(
    config: SimulationConfig, data: FederatedData, weights: list[np.ndarray]
) -> dict[str, float] | None:
    """The task's own metrics of the final model on the evaluation rows (None: it has none)."""
    task = simulation_task(config)
    ds = data.dataset
    if task.metrics is None or not len(ds.y_test):
        return None
    import torch

    from fedguard.task import set_weights

    model = initial_model(config, data)
    set_weights(model, weights)
    model.eval()
    with torch.no_grad():
        if isinstance(ds, LazyDataset):  # the holdout read in batches
            logits = torch.from_numpy(record_logits(model=model, data=ds.test))
        else:
            logits = model(torch.from_numpy(ds.x_test))
        probs = torch.softmax(logits, dim=1).numpy()
    out = task.metrics(ds.y_test, probs)
    return {str(k): float(v) for k, v in out.items()}


def _client_level(config: SimulationConfig, rounds: int) -> dict[str, object]:
    from fedguard.simulations.inprocess import client_level  # --client-dp: in-process only

    return client_level(config).after(rounds).as_dict()


def save_model(
    path: Path, *, config: SimulationConfig, data: FederatedData, weights: list[np.ndarray]
) -> None:
    """The final global model as safetensors, with what is needed to rebuild it."""
    from safetensors.numpy import save as st_save

    names = list(initial_model(config, data).state_dict())
    if len(names) != len(weights):
        raise RuntimeError(f"final model: {len(weights)} arrays for {len(names)} parameters")
    tensors = {n: np.ascontiguousarray(w) for n, w in zip(names, weights, strict=True)}
    ds = data.dataset
    metadata = {
        "format": MODEL_FORMAT,
        "model": config.model,
        "task": config.task or "",
        "hidden": str(config.hidden),
        "input-shape": json.dumps(list(ds.input_shape)),
        "num-classes": str(ds.num_classes),
        "rounds": str(config.rounds),
        "dataset": config.dataset,
    }
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def _check_fits(config: SimulationConfig, data: FederatedData) -> None:
    k, weights = data.dataset.num_classes, config.class_weight_values
    if weights and len(weights) != k:
        raise ConfigError(
            f"--class-weights: expected {k} weights (one per class of {config.dataset}), "
            f"got {config.class_weights!r}"
        )
    if isinstance(data.dataset, LazyDataset) and config.engine != "inprocess":
        # Flower's and Ray's workers are handed row arrays; only this process's engine
        # reads a lazy task's records per step so far.
        raise ConfigError(
            f"--engine: expected 'inprocess' for a lazy task (lazy = True), got {config.engine!r}"
        )
    smallest = min(len(p) for p in data.partitions)
    if smallest < 1:
        raise ConfigError(
            f"--clients: a client got no training example "
            f"(got {config.clients} clients for {len(data.dataset.y_train)} samples)"
        )


def _prepare_out(out: Path, *, overwrite: bool) -> Path:
    """Create ``out``; refuse to mix results with an earlier run's unless told to."""
    previous = [out / METRICS_FILE, out / SUMMARY_FILE, out / MODEL_FILE, out / STATE_DIR]
    if any(p.exists() for p in previous):
        if not overwrite:
            raise ConfigError(
                f"--out: expected a new or empty folder, got {str(out)!r} "
                f"which holds an earlier run (pass --overwrite to replace it)"
            )
        for p in previous:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"--out: cannot create folder {str(out)!r}: {exc.strerror or exc}"
        ) from None
    return out
