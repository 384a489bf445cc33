"""The in-process engine end to end: files written, epsilon cumulative and within budget."""

import json
from pathlib import Path

import pytest
import torch

from fedguard.config import SimulationConfig
from fedguard.errors import BudgetExceededError
from fedguard.fl.data import federated_data, initial_model
from fedguard.fl.local import LocalTrainer
from fedguard.fl.loop import client_generator, request_for
from fedguard.privacy import AccountantStore
from fedguard.simulations.runner import simulate
from fedguard.simulations.virtual_clients import budget_for
from fedguard.task import get_weights


def small(tmp_path: Path, **changes) -> SimulationConfig:
    base = dict(
        dataset="digits",
        model="logreg",
        clients=4,
        rounds=3,
        batch_size=32,
        lr=0.5,
        epsilon=2.0,
        out=tmp_path / "run",
    )
    base.update(changes)
    return SimulationConfig(**base)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dp_run_writes_results_and_spends_the_budget_cumulatively(tmp_path: Path):
    config = small(tmp_path)
    summary = simulate(config)
    rows = read_metrics(config.out)
    assert [r["round"] for r in rows] == [1, 2, 3]
    for key in ("accuracy", "loss", "epsilon_max", "epsilon_mean", "seconds", "f1_macro"):
        assert all(key in r for r in rows)
    eps = [r["epsilon_max"] for r in rows]
    # Cumulative: each round adds to every client's epsilon (all clients train each round).
    assert eps[0] < eps[1] < eps[2]
    # Calibrated to land just under the target after the planned rounds, never above.
    assert 0.97 * config.epsilon <= eps[2] <= config.epsilon
    assert rows[-1]["epsilon_mean"] == pytest.approx(eps[2])
    saved = json.loads((config.out / "summary.json").read_text())
    assert saved["final_epsilon_max"] == pytest.approx(eps[2])
    assert saved["delta"] == config.delta and saved["accountant"] == "rdp"
    assert saved["clients"] == 4 and saved["rounds"] == 3 and saved["wall_seconds"] > 0
    assert summary.final_accuracy == pytest.approx(rows[-1]["accuracy"])
    # Each client's accountant is on disk and reproduces the reported epsilon.
    for cid in range(4):
        store = AccountantStore(path=config.out / "state" / f"client-{cid:05d}" / "accountant.json")
        spent = store.load(method="rdp").get_privacy_spent(delta=config.delta)
        assert spent.epsilon == pytest.approx(eps[2], rel=1e-9)


def test_partial_cohorts_spend_less_for_clients_that_sit_out(tmp_path: Path):
    config = small(tmp_path, clients=6, clients_per_round=2, rounds=3)
    simulate(config)
    rows = read_metrics(config.out)
    assert all(r["clients"] == 2 for r in rows)
    assert rows[-1]["epsilon_mean"] < rows[-1]["epsilon_max"] <= config.epsilon


def test_non_private_run_learns_and_reports_no_epsilon(tmp_path: Path):
    config = small(tmp_path, no_dp=True, rounds=5, model="mlp", lr=0.1)
    summary = simulate(config)
    assert summary.final_epsilon_max is None and summary.delta is None
    assert summary.final_accuracy > 0.9
    assert read_metrics(config.out)[-1]["epsilon_max"] is None


def test_same_seed_same_result_other_seed_differs(tmp_path: Path):
    a = simulate(small(tmp_path, out=tmp_path / "a", seed=3))
    b = simulate(small(tmp_path, out=tmp_path / "b", seed=3))
    c = simulate(small(tmp_path, out=tmp_path / "c", seed=4))
    assert a.final_accuracy == b.final_accuracy
    assert read_metrics(tmp_path / "a") == [
        {**r, "seconds": a_r["seconds"]}
        for r, a_r in zip(read_metrics(tmp_path / "b"), read_metrics(tmp_path / "a"), strict=True)
    ]
    assert read_metrics(tmp_path / "c")[-1]["loss"] != read_metrics(tmp_path / "a")[-1]["loss"]
    # The seed also keys the per-record test holdout, so client sizes (and the calibrated
    # noise) differ a little between seeds; each still spends about its whole budget.
    assert c.final_epsilon_max == pytest.approx(a.final_epsilon_max, rel=0.01)


def test_a_client_refuses_rounds_beyond_its_budget(tmp_path: Path):
    """After a finished run the client's budget is spent: one more round is refused with
    the figures, and the refusal spends nothing."""
    config = small(tmp_path, rounds=2)
    simulate(config)
    data = federated_data(config)
    trainer = LocalTrainer(model=initial_model(config, data), dp=True)
    idx = data.partitions[0]
    store = AccountantStore(path=config.out / "state" / "client-00000" / "accountant.json")
    before = store.path.read_bytes()
    with pytest.raises(
        BudgetExceededError,
        match=r"round 3 refused: epsilon would reach .* > budget 2 .*spent so far",
    ):
        trainer.run(
            global_weights=get_weights(trainer.model),
            x=torch.from_numpy(data.dataset.x_train[idx]),
            y=torch.from_numpy(data.dataset.y_train[idx]),
            request=request_for(config, 3),
            generator=client_generator(seed=0, server_round=3, client_id=0),
            budget=budget_for(config),
            store=store,
        )
    assert store.path.read_bytes() == before
