"""Simulation data (#13 point 1): each virtual client gets what a node would, and the
final model is saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from fedguard.config import SimulationConfig
from fedguard.files import MODEL_FILE
from fedguard.fl.data import clear_data_cache, federated_data
from fedguard.simulations.runner import simulate
from fedguard.task import build_model, evaluate, load_dataset

SCHEMA = """
[target]
column = "label"
labels = ["neg", "pos"]
[columns.rid]
type = "identifier"
[columns.x1]
type = "numeric"
range = [-4, 4]
[columns.x2]
type = "numeric"
centre = 10
scale = 3
[columns.kind]
type = "categorical"
levels = ["a", "b", "c"]
"""


def _table(tmp_path: Path, rows: int = 240) -> tuple[Path, Path, list[str]]:
    rng = np.random.default_rng(0)
    lines = ["rid,x1,x2,kind,label"]
    for i in range(rows):
        pos = bool(rng.integers(0, 2))
        x1 = rng.normal(1.0 if pos else -1.0)
        x2 = rng.normal(12 if pos else 8, 3)
        lines.append(f"r{i},{x1:.4f},{x2:.4f},{'abc'[i % 3]},{'pos' if pos else 'neg'}")
    data, schema = tmp_path / "data.csv", tmp_path / "schema.toml"
    data.write_text("\n".join(lines) + "\n")
    schema.write_text(SCHEMA)
    return data, schema, lines


def _config(tmp_path: Path, data: Path, schema: Path, **changes: object) -> SimulationConfig:
    base: dict[str, object] = {
        "dataset": str(data),
        "schema": schema,
        "clients": 4,
        "rounds": 3,
        "batch_size": 16,
        "epsilon": 5.0,
        "out": tmp_path / "out",
    }
    base.update(changes)
    return SimulationConfig(**base)  # type: ignore[arg-type]


def test_each_virtual_client_trains_on_what_a_node_with_its_rows_would_load(
    tmp_path: Path,
) -> None:
    clear_data_cache()
    data, schema, lines = _table(tmp_path)
    fed = federated_data(_config(tmp_path, data, schema))
    ds = fed.dataset
    assert ds.train_record_keys is not None
    for cid, idx in enumerate(fed.partitions):
        # The rows this client holds, written to its own file, loaded as a deployed node.
        own = {bytes(k) for k in ds.train_record_keys[idx]}
        node_file = tmp_path / f"node{cid}.csv"
        every = load_dataset(name=str(data), seed=0, schema=schema, split="none")
        assert every.train_record_keys is not None
        mine = [i for i, k in enumerate(every.train_record_keys) if bytes(k) in own]
        node_file.write_text("\n".join([lines[0]] + [lines[i + 1] for i in mine]) + "\n")
        node = load_dataset(name=str(node_file), seed=0, schema=schema, split="none")
        order = np.argsort([bytes(k) for k in ds.train_record_keys[idx]])
        node_order = np.argsort([bytes(k) for k in node.train_record_keys])  # type: ignore[union-attr]
        np.testing.assert_array_equal(ds.x_train[idx][order], node.x_train[node_order])
        np.testing.assert_array_equal(ds.y_train[idx][order], node.y_train[node_order])
    clear_data_cache()


def test_simulate_saves_the_final_model_it_evaluated(tmp_path: Path) -> None:
    clear_data_cache()
    data, schema, _ = _table(tmp_path)
    config = _config(tmp_path, data, schema)
    summary = simulate(config)
    path = config.out / MODEL_FILE
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    assert meta["model"] == "logreg" and meta["num-classes"] == "2"
    assert meta["input-shape"] == "[5]" and meta["rounds"] == "3"
    model = build_model(name="logreg", input_shape=(5,), num_classes=2)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(path).items()})
    ds = federated_data(config).dataset
    metrics = evaluate(
        model=model,
        x=torch.from_numpy(ds.x_test),
        y=torch.from_numpy(ds.y_test),
        num_classes=2,
    )
    assert metrics.accuracy == pytest.approx(summary.final_accuracy)
    clear_data_cache()
