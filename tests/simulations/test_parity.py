"""The same seeded federation on the in-process engine and on Flower's simulation engine
(real ServerApp + ClientApp on Ray): accuracies within 2 points, epsilons equal."""

import json
from pathlib import Path

import pytest

from fedguard.config import SimulationConfig
from fedguard.simulations.runner import simulate

pytestmark = pytest.mark.flower


def test_inprocess_and_flower_engines_agree(tmp_path: Path):
    base = SimulationConfig(
        dataset="digits",
        model="logreg",
        clients=3,
        rounds=3,
        batch_size=32,
        lr=0.5,
        epsilon=3.0,
        seed=11,
        out=tmp_path / "inprocess",
    )
    fast = simulate(base)
    flower = simulate(base.replace(engine="flower", out=tmp_path / "flower"))

    assert abs(fast.final_accuracy - flower.final_accuracy) <= 0.02
    assert flower.final_epsilon_max == pytest.approx(fast.final_epsilon_max, rel=1e-12)
    rows = {
        name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("inprocess", "flower")
    }
    assert len(rows["flower"]) == 3
    for a, b in zip(rows["inprocess"], rows["flower"], strict=True):
        assert b["clients"] == a["clients"] == 3
        assert b["epsilon_max"] == pytest.approx(a["epsilon_max"], rel=1e-12)
    # Every virtual client's accountant history was written by the ClientApp, identically.
    for cid in range(3):
        rel = Path("state") / f"client-{cid:05d}" / "accountant.json"
        assert (tmp_path / "flower" / rel).read_text() == (tmp_path / "inprocess" / rel).read_text()
    # The model learned on both engines.
    assert fast.final_accuracy > 0.5 and flower.final_accuracy > 0.5
