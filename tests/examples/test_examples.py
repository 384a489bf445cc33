"""The two examples a user copies (#16.5) run as a user runs them: the seeded data
generator, then ``python -m fedguard simulate --config sim.toml`` with the example's
folder on PYTHONPATH (the installed fedguard, a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(folder: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(folder)}
    done = subprocess.run(
        [sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def simulate(folder: Path, data: Path, out: Path, rounds: int) -> dict:
    run(
        folder, "-m", "fedguard", "simulate", "--config", "sim.toml", "--dataset", str(data),
        "--out", str(out), "--rounds", str(rounds),
    )  # fmt: skip
    return json.loads((out / "summary.json").read_text())


def test_credit_tabular_runs_in_simulation_with_its_own_metrics(tmp_path: Path) -> None:
    folder = EXAMPLES / "credit-tabular"
    data = tmp_path / "credit.csv"
    run(folder, "make_data.py", "--out", str(data), "--rows", "1500", "--seed", "1")
    summary = simulate(folder, data, tmp_path / "run", rounds=4)
    assert summary["config"]["task"] == "credit_task:task"
    assert summary["classes"] == ["no", "yes"]
    assert set(summary["task_metrics"]) == {"default_rate", "recall_at_top10pct"}
    assert 0.01 < summary["task_metrics"]["default_rate"] < 0.2  # imbalanced, as generated
    assert summary["final_roc_auc"] is not None and summary["final_epsilon_max"] <= 3.0


def test_images_folder_runs_in_simulation_reading_its_pngs(tmp_path: Path) -> None:
    folder = EXAMPLES / "images-folder"
    data = tmp_path / "scans"
    run(folder, "make_images.py", "--out", str(data), "--per-class", "30", "--seed", "1")
    assert len(list(data.glob("*/*.png"))) == 90
    summary = simulate(folder, data, tmp_path / "run", rounds=2)
    assert summary["classes"] == ["normal", "nodule", "effusion"]
    assert summary["config"]["task"] == "images_task:task"
    assert summary["final_epsilon_max"] <= 5.0 and summary["rounds"] == 2
