"""A rare positive class is reported by the figures that show it (#17.5).

With 3% positives a model that says "no" for every row is 97% accurate; the console,
``summary.json``, ``metrics.jsonl`` and the sweep's tables must lead with ROC-AUC, PR-AUC
and the positive class's F1 (and its threshold), not with accuracy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification

from fedguard.config import SimulationConfig
from fedguard.errors import ConfigError
from fedguard.simulations.progress import format_round
from fedguard.simulations.runner import simulate
from fedguard.simulations.sweep import load_sweep, run_sweep

BINARY_FIELDS = ("pr_auc", "f1_pos", "precision_pos", "recall_pos", "threshold")


@pytest.fixture(scope="module")
def rare_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = make_classification(
        n_samples=2000, n_features=8, n_informative=4, weights=[0.97], flip_y=0, random_state=3
    )
    path = tmp_path_factory.mktemp("rare") / "rare.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(f"x{i}" for i in range(x.shape[1])), "label"])
        w.writerows([*np.round(row, 5), int(label)] for row, label in zip(x, y, strict=True))
    assert 0.02 < y.mean() < 0.04
    return path


def test_simulate_records_and_leads_with_the_rare_class_figures(
    rare_csv: Path, tmp_path: Path
) -> None:
    config = SimulationConfig(
        dataset=str(rare_csv), target="label", clients=3, rounds=4, out=tmp_path / "run"
    )
    lines: list[str] = []
    summary = simulate(config, on_round=lambda r: lines.append(format_round(r)))
    rows = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    for field in BINARY_FIELDS:
        assert rows[-1][field] is not None, field
        assert on_disk[f"final_{field}"] == rows[-1][field], field
    assert summary.final_f1_pos == rows[-1]["f1_pos"]
    assert 0 < on_disk["final_threshold"] < 1
    # The console leads with what the rare class needs; accuracy comes after.
    for line in lines:
        order = [line.index(k) for k in ("ROC-AUC", "PR-AUC", "positive F1", "accuracy")]
        assert order == sorted(order), line
        assert "threshold" in line


def test_sweep_tables_lead_with_the_rare_class_figures(rare_csv: Path, tmp_path: Path) -> None:
    (tmp_path / "sweep.toml").write_text(
        f'dataset = "{rare_csv}"\ntarget = "label"\nclients = 3\nrounds = 2\n'
        'epsilon = [3.0, "non-private"]\nseed = [0]\n'
    )
    result = run_sweep(plan=load_sweep(path=tmp_path / "sweep.toml", out=tmp_path / "out"))
    with result.results_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        summary = json.loads((result.out / "runs" / r["run"] / "summary.json").read_text())
        for field in BINARY_FIELDS:
            assert float(r[f"final_{field}"]) == summary[f"final_{field}"], field
    report = result.report.read_text()
    assert (
        "| partitioning | clients/round | target epsilon | seeds | ROC-AUC | PR-AUC | "
        "positive F1 | final accuracy |" in report
    )
    assert "| run | seed | ROC-AUC | PR-AUC | positive F1 (precision, recall) | threshold |" in (
        report
    )


def test_class_weights_change_the_model_not_the_epsilon(rare_csv: Path, tmp_path: Path) -> None:
    runs = {}
    for weights in (None, "0.05,1"):
        config = SimulationConfig(
            dataset=str(rare_csv),
            target="label",
            clients=3,
            rounds=2,
            class_weights=weights,
            out=tmp_path / str(weights),
        )
        runs[weights] = simulate(config)
    plain, weighted = runs[None], runs["0.05,1"]
    assert weighted.final_epsilon_max == plain.final_epsilon_max  # same mechanism, same C
    assert weighted.config["class-weights"] == "0.05,1"  # recorded with the results
    assert (weighted.final_roc_auc, weighted.final_threshold) != (
        plain.final_roc_auc,
        plain.final_threshold,
    )


def test_class_weights_must_match_the_classes(rare_csv: Path, tmp_path: Path) -> None:
    config = SimulationConfig(
        dataset=str(rare_csv), target="label", class_weights="0.1,0.5,1", out=tmp_path / "x"
    )
    with pytest.raises(ConfigError, match=r"^--class-weights: expected 2 weights .*'0.1,0.5,1'"):
        simulate(config)
    assert not (tmp_path / "x").exists()  # refused before the output folder is made
