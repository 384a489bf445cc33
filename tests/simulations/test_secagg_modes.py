"""The two secure-aggregation simulation modes and batched secure rounds (#19).

``--secagg-protocol sum`` must give exactly what ``full`` gives (masks cancel in the ring),
so a sweep may use it; and a secure round trained as one batched cohort must give the
updates (to float tolerance) and the privacy spend of one trained client by client.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from fedguard.config import SimulationConfig
from fedguard.files import METRICS_FILE, MODEL_FILE
from fedguard.simulations.runner import simulate

FIGURES = ("loss", "accuracy", "epsilon_max", "clients")


def run(tmp_path: Path, name: str, **changes) -> tuple[list[dict], dict]:
    base = dict(dataset="digits", model="logreg", clients=6, rounds=2, epsilon=3.0, secagg=True)
    cfg = SimulationConfig(out=tmp_path / name, **(base | changes))
    simulate(cfg)
    rows = [json.loads(line) for line in (cfg.out / METRICS_FILE).read_text().splitlines()]
    return [{k: r.get(k) for k in FIGURES} for r in rows], load_file(cfg.out / MODEL_FILE)


@pytest.mark.parametrize(
    ("model", "vectorize"), [("logreg", "auto"), ("mlp", "off"), ("cnn", "off")]
)
def test_the_sum_without_masks_gives_the_full_protocols_model_bit_for_bit(
    tmp_path: Path, model: str, vectorize: str
):
    kw = dict(model=model, vectorize=vectorize, hidden=16)
    full_rows, full_model = run(tmp_path, "full", secagg_protocol="full", **kw)
    sum_rows, sum_model = run(tmp_path, "sum", secagg_protocol="sum", **kw)
    assert sum_rows == full_rows
    assert full_model.keys() == sum_model.keys()
    for name, tensor in full_model.items():
        assert tensor.tobytes() == sum_model[name].tobytes(), name


def test_a_batched_secure_round_matches_one_trained_client_by_client(tmp_path: Path):
    one_rows, one_model = run(tmp_path, "one", vectorize="off", model="mlp", hidden=16)
    batch_rows, batch_model = run(tmp_path, "batch", vectorize="on", model="mlp", hidden=16)
    for a, b in zip(one_rows, batch_rows, strict=True):
        assert b["epsilon_max"] == a["epsilon_max"] and b["clients"] == a["clients"]
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-3)
    for name, tensor in one_model.items():
        # float32 sums in another order, then 16-bit stochastic rounding: a level at most
        assert batch_model[name] == pytest.approx(tensor, abs=1e-3), name


def test_an_unknown_mode_is_refused_naming_the_option(tmp_path: Path):
    from fedguard.config import load_simulation_config
    from fedguard.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--secagg-protocol: expected one of sum, full"):
        load_simulation_config(overrides={"secagg": True, "secagg-protocol": "fast"})
