"""#13.1 in simulation: each virtual client scales its ``scaling = "dp"`` columns with its
own DP estimate, its accountant is charged the release before training, and the noise
calibration reserves it, so the final epsilon lands at, never above, the target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedguard.config import SimulationConfig
from fedguard.errors import ConfigError
from fedguard.fl.data import clear_data_cache, federated_data
from fedguard.fl.local import PrivacyBudget, noise_for_budget
from fedguard.fl.scaling import SCALING_NOISE
from fedguard.privacy import (
    Accountant,
    AccountantStore,
    GaussianEvent,
    sample_rate_for,
    steps_per_epoch,
)
from fedguard.simulations.runner import STATE_DIR, simulate
from fedguard.simulations.virtual_clients import client_state_dir
from fedguard.simulations.virtual_scaling import reserve_scaling

TARGET = 2.0
SCHEMA = """
[target]
column = "label"
labels = ["neg", "pos"]
[columns.rid]
type = "identifier"
[columns.x1]
type = "numeric"
range = [-4, 4]
scaling = "dp"
[columns.x2]
type = "numeric"
centre = 10
scale = 3
"""


def _dp_schema(tmp_path: Path, rows: int = 800) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    lines = ["rid,x1,x2,label"]
    for i in range(rows):
        pos = bool(rng.integers(0, 2))
        # x1 carries the signal, far from the range's midpoint: badly scaled unless scaled.
        x1 = rng.normal(2.5 if pos else 1.5, 0.3)
        x2 = rng.normal(10, 3)
        lines.append(f"r{i},{x1:.4f},{x2:.4f},{'pos' if pos else 'neg'}")
    data, schema = tmp_path / "data.csv", tmp_path / "schema.toml"
    data.write_text("\n".join(lines) + "\n")
    schema.write_text(SCHEMA)
    return data, schema


def _config(tmp_path: Path, data: Path, schema: Path, **changes: object) -> SimulationConfig:
    base: dict[str, object] = {
        "dataset": str(data),
        "schema": schema,
        "clients": 4,
        "rounds": 3,
        "batch_size": 16,
        "epsilon": TARGET,
        "out": tmp_path / "out",
    }
    base.update(changes)
    return SimulationConfig(**base)  # type: ignore[arg-type]


def test_each_client_is_charged_its_scaling_and_still_lands_within_the_target(tmp_path: Path):
    clear_data_cache()
    data, schema = _dp_schema(tmp_path)
    config = _config(tmp_path, data, schema, epsilon=TARGET)
    plan = federated_data(config).dataset.dp_scaling
    assert plan is not None and plan.names == ("x1",)
    summary = simulate(config)
    for cid in range(config.clients):
        path = client_state_dir(tmp_path / "out" / STATE_DIR, cid) / "accountant.json"
        acc = AccountantStore(path=path).load(method="rdp")
        first = acc.events[0]
        # The release, charged before any training step: Gaussian, sample rate 1, one step.
        assert (first.sample_rate, first.steps) == (1.0, 1)
        assert first.noise_multiplier == SCALING_NOISE
        assert len(acc.events) == 2  # then the rounds (identical ones merge into one)
        eps = acc.get_privacy_spent(delta=config.delta).epsilon
        assert 0.95 * TARGET <= eps <= TARGET
    assert summary.final_accuracy > 0.6  # trained on sensibly scaled features
    clear_data_cache()


def test_without_the_reservation_the_release_would_push_a_client_over_its_target():
    """Why the calibration must reserve the event: the plain calibration spends the whole
    target on training, and the release on top overshoots it."""
    budget = PrivacyBudget(target_epsilon=TARGET, delta=1e-5, accountant="rdp", planned_rounds=3)
    reserved = reserve_scaling(budget, plan=_plan())
    assert reserved is not None and len(reserved.reserved) == 1
    args = {"num_examples": 200, "batch_size": 16, "local_epochs": 1}
    plain, with_room = (
        noise_for_budget(budget=budget, **args),
        noise_for_budget(budget=reserved, **args),
    )
    assert with_room > plain

    q = sample_rate_for(num_examples=200, batch_size=16)
    steps = 3 * steps_per_epoch(num_examples=200, batch_size=16)

    def final(sigma: float) -> float:
        acc = Accountant(method="rdp")
        acc.compose(reserved.reserved[0])
        acc.compose(GaussianEvent(noise_multiplier=sigma, sample_rate=q, steps=steps))
        return acc.get_privacy_spent(delta=1e-5).epsilon

    assert final(plain) > TARGET  # the attack on the old calibration: over the target
    assert 0.99 * TARGET <= final(with_room) <= TARGET


def test_the_flower_engine_refuses_dp_columns_in_one_line(tmp_path: Path):
    clear_data_cache()
    data, schema = _dp_schema(tmp_path)
    with pytest.raises(ConfigError) as info:
        federated_data(_config(tmp_path, data, schema, engine="flower"))
    assert "--engine" in str(info.value) and "x1" in str(info.value)
    assert "\n" not in str(info.value)
    clear_data_cache()


def test_the_servers_eval_rows_are_standardised_by_their_own_statistics(tmp_path: Path):
    clear_data_cache()
    data, schema = _dp_schema(tmp_path)
    ds = federated_data(_config(tmp_path, data, schema)).dataset
    col = ds.dp_scaling.columns[0]
    assert abs(float(np.mean(ds.x_test[:, col]))) < 1e-4
    assert float(np.std(ds.x_test[:, col])) == pytest.approx(1.0, rel=1e-3)
    assert abs(float(np.mean(ds.x_train[:, col]))) < 4  # training rows: clipped, unscaled
    clear_data_cache()


def _plan():
    from fedguard.task.schema import DPScalingPlan

    return DPScalingPlan(columns=(0,), names=("x1",), ranges=((-4.0, 4.0),))
