"""The same small federation through both engines records the same figures.

The in-process engine and Flower's simulation engine (a real ServerApp and ClientApp on
Ray) share every piece of round logic (``fedguard.fl``: the round loop, the local round,
the strategies, the seeds), so the same seeded federation (3 clients, 2 of them a round,
2 rounds, DP-SGD, FedAdam: a strategy with server state, not the default) must record the
same figures: every field of every ``metrics.jsonl`` row and of ``summary.json`` (epsilon
per round, client-level
epsilon, accuracy and loss, the clients counted, the refusals), the final model and each
client's accountant (its sample rate and steps: the samples it trained on). Only the
timings and the engine's own name may differ.

With ``vectorize = "off"`` both engines train each client with Opacus alone, and the
figures are equal to the bit. The in-process default vectorises a round's clients
(``privacy.cohort``): the same mechanism with its sums in another order, so its figures
agree to float tolerance and its epsilons exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedguard.config import SimulationConfig
from fedguard.files import ACCOUNTANT_FILE, METRICS_FILE, MODEL_FILE, SUMMARY_FILE
from fedguard.simulations.client_state import client_state_dir
from fedguard.simulations.runner import simulate

pytestmark = pytest.mark.flower

BASE = SimulationConfig(
    dataset="digits",
    model="logreg",
    clients=3,
    clients_per_round=2,
    rounds=2,
    batch_size=32,
    lr=0.5,
    strategy="fedadam",
    server_lr=0.05,
    epsilon=3.0,
    seed=11,
    vectorize="off",
)
TIMINGS = {"seconds", "wall_seconds"}
ENGINE_NAMES = {"engine", "out"}  # in summary.json and in its config


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def _summary(out: Path) -> dict[str, Any]:
    doc = json.loads((out / SUMMARY_FILE).read_text())
    doc["config"] = {k: v for k, v in doc["config"].items() if k not in ENGINE_NAMES}
    return {k: v for k, v in doc.items() if k not in TIMINGS | ENGINE_NAMES}


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in TIMINGS}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engines")
    outs = {
        "inprocess": BASE.replace(out=root / "inprocess"),
        "vectorised": BASE.replace(vectorize="auto", out=root / "vectorised"),
        "flower": BASE.replace(engine="flower", out=root / "flower"),
    }
    for config in outs.values():
        simulate(config)
    return {name: config.out for name, config in outs.items()}


def test_every_recorded_figure_is_equal(runs: dict[str, Path]) -> None:
    a, b = runs["inprocess"], runs["flower"]
    rows_a, rows_b = _rows(a), _rows(b)
    assert len(rows_a) == len(rows_b) == BASE.rounds
    assert set(rows_a[0]) >= {"epsilon_max", "epsilon_mean", "client_epsilon", "clients"}
    assert [_figures(r) for r in rows_a] == [_figures(r) for r in rows_b]
    assert all(r["clients"] == 2 and r["refused"] == 0 for r in rows_a)
    assert _summary(a) == _summary(b)
    model_a, model_b = load_file(a / MODEL_FILE), load_file(b / MODEL_FILE)
    assert model_a.keys() == model_b.keys()
    assert all(np.array_equal(model_a[k], model_b[k]) for k in model_a)
    for cid in range(BASE.clients):  # each client's steps and sample rate, every round
        rel = client_state_dir(Path("state"), cid) / ACCOUNTANT_FILE
        assert (a / rel).read_text() == (b / rel).read_text()


def test_the_vectorised_engine_agrees_to_float_tolerance(runs: dict[str, Path]) -> None:
    fast, flower = _rows(runs["vectorised"]), _rows(runs["flower"])
    for r, s in zip(fast, flower, strict=True):
        assert r.keys() == s.keys()
        for key in r.keys() - TIMINGS:
            if isinstance(r[key], float) and key not in ("epsilon_max", "epsilon_mean"):
                assert r[key] == pytest.approx(s[key], rel=1e-6), key
            else:  # epsilons, counts, None: exactly
                assert r[key] == s[key], key
