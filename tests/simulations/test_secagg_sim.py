"""`fedguard simulate --secagg`: the SecAgg+ protocol in-process, against the plain engine."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedguard.config import SimulationConfig
from fedguard.errors import ConfigError
from fedguard.simulations.runner import simulate


def config(tmp_path: Path, name: str, **changes) -> SimulationConfig:
    base = dict(dataset="digits", model="logreg", clients=6, rounds=4, epsilon=3.0)
    base.update(changes)
    return SimulationConfig(out=tmp_path / name, **base)


def rows(cfg: SimulationConfig) -> list[dict]:
    return [json.loads(line) for line in (cfg.out / "metrics.jsonl").read_text().splitlines()]


def test_secure_rounds_track_plain_fedavg_and_spend_the_same_epsilon(tmp_path: Path):
    plain, secure = config(tmp_path, "plain"), config(tmp_path, "secure", secagg=True)
    simulate(plain)
    simulate(secure)
    p, s = rows(plain), rows(secure)
    # Every client's update is in every round's sum; privacy is spent exactly as without.
    assert [r["clients"] for r in s] == [6, 6, 6, 6]
    assert [r["epsilon_max"] for r in s] == [r["epsilon_max"] for r in p]
    # Quantisation (16 bits over [-1, 1]) moves the model by ~1e-5 per coordinate per
    # round: the trajectories agree closely but are not bit-identical.
    for a, b in zip(p, s, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=2e-3)
        assert abs(b["accuracy"] - a["accuracy"]) <= 0.02
    assert any(a["loss"] != b["loss"] for a, b in zip(p, s, strict=True))


def test_coarse_quantisation_is_visible_in_the_result(tmp_path: Path):
    """A 2-bit encoding is far from the plain mean: the secure path really is what trains."""
    plain = config(tmp_path, "plain", rounds=2)
    coarse = config(tmp_path, "coarse", rounds=2, secagg=True, secagg_bits=2, secagg_clip_range=4.0)
    simulate(plain)
    simulate(coarse)
    gap = abs(rows(coarse)[-1]["loss"] - rows(plain)[-1]["loss"])
    assert gap > 1e-3


def test_secure_runs_are_reproducible_from_the_seed(tmp_path: Path):
    a = config(tmp_path, "a", secagg=True, rounds=2)
    b = config(tmp_path, "b", secagg=True, rounds=2)
    simulate(a)
    simulate(b)
    # Masks come from fresh OS randomness each run, yet cancel exactly: the result depends
    # only on the seeded stochastic rounding.
    la = [r["loss"] for r in rows(a)]
    lb = [r["loss"] for r in rows(b)]
    assert np.array_equal(la, lb)


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"engine": "flower"}, ["--engine", "inprocess with --secagg", "flower"]),
        ({"clients_per_round": 1}, ["--clients-per-round", "at least 2", "1"]),
        ({"secagg_bits": 31}, ["--secagg-bits", "[1, 30]", "31"]),
        ({"secagg_clip_range": 0.0}, ["--secagg-clip-range", "> 0", "0.0"]),
        ({"secagg_dropout_tolerance": 0.2}, ["--secagg-dropout-tolerance", "[1/3, 1/2)"]),
    ],
)
def test_bad_secagg_settings_name_option_allowed_and_received(tmp_path, changes, fragments):
    with pytest.raises(ConfigError) as info:
        config(tmp_path, "bad", secagg=True, **changes)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_client_level_dp_reports_its_own_epsilon_per_round(tmp_path: Path):
    from fedguard.privacy.client_dp import client_level_spent

    cfg = config(tmp_path, "cdp", secagg=True, client_dp=True, client_noise=0.8, rounds=3)
    summary = simulate(cfg)
    r = rows(cfg)
    expected = [
        client_level_spent(
            noise_multiplier=0.8, num_clients=6, cohort_size=6, rounds=k, delta=cfg.delta
        ).epsilon
        for k in (1, 2, 3)
    ]
    assert [x["client_epsilon"] for x in r] == pytest.approx(expected)
    assert summary.final_client_epsilon == pytest.approx(expected[-1])
    # The sample-level budget is counted separately and as before.
    assert 0.97 * 3.0 <= r[-1]["epsilon_max"] <= 3.0


def test_client_level_dp_needs_secure_aggregation(tmp_path: Path):
    with pytest.raises(ConfigError, match="--client-dp"):
        config(tmp_path, "x", client_dp=True)
