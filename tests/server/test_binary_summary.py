"""The deployed server's evaluation and summary.json carry the rare-class figures (#17.5).

The server evaluates on its own file (not a node's data), so the decision threshold is
chosen there; before, its summary held accuracy only, 0.967 for a model that calls every
one of a bank's customers "no default".
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import make_classification
from sklearn.metrics import average_precision_score, roc_auc_score

from fedguard.federation_config import (
    FederationConfig,
    FederationSection,
    ServerNetwork,
    TaskSection,
    TrainingSection,
)
from fedguard.fl.loop import run_rounds
from fedguard.fl.strategies import FedAvgM
from fedguard.server.deploy_parts import BINARY_FIGURES, client_level, evaluator, run_summary
from fedguard.task import build_model, get_weights


def test_server_summary_leads_with_binary_figures_from_its_own_rows(tmp_path: Path) -> None:
    x, y = make_classification(
        n_samples=600, n_features=6, n_informative=3, weights=[0.95], flip_y=0, random_state=1
    )
    eval_csv = tmp_path / "server-eval.csv"
    with eval_csv.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(f"x{i}" for i in range(6)), "label"])
        w.writerows([*np.round(r, 5), int(t)] for r, t in zip(x, y, strict=True))
    cfg = FederationConfig(
        source=tmp_path / "federation.toml",
        federation=FederationSection(rounds=1, min_nodes=1),
        task=TaskSection(
            model="logreg",
            input_shape=[6],
            num_classes=2,
            eval_dataset=str(eval_csv),
            eval_target="label",
        ),
        training=TrainingSection(),
        server=ServerNetwork(),
        state_dir=tmp_path / "state",
        out=tmp_path / "results",
    )
    model = build_model(
        name="logreg", input_shape=(6,), num_classes=2, generator=torch.Generator().manual_seed(0)
    )
    evaluate = evaluator(cfg, model)
    weights = get_weights(model)
    got = evaluate(weights)
    # Every row of the server's file, scored as sklearn scores it.
    assert got.examples == 600
    with torch.no_grad():
        z = model(torch.from_numpy(np.asarray(x, dtype=np.float32))).double().numpy()
    margin = z[:, 1] - z[:, 0]
    assert got.roc_auc is not None and abs(got.roc_auc - roc_auc_score(y, margin)) < 1e-6
    assert got.pr_auc is not None and abs(got.pr_auc - average_precision_score(y, margin)) < 1e-6

    rows: list[dict[str, object]] = []
    run_rounds(
        first_round=1,
        last_round=1,
        seed=0,
        num_clients=1,
        cohort_size=1,
        weights=weights,
        server=FedAvgM(server_lr=1.0, server_momentum=0.0),
        train_cohort=lambda _r, _c, _w: [],
        evaluate=evaluate,
        on_round=lambda rec, _w: rows.append({**rec.as_dict(), "epsilon_by_node": {}}),
        dp=False,
    )
    summary = run_summary(
        cfg,
        run_id="r1",
        last=rows[-1],
        nodes=["bank-a"],
        seconds=1.0,
        client_level=client_level(cfg, num_clients=1, cohort_size=1),
        cohort_size=1,
    )
    for k in BINARY_FIGURES:
        assert summary[f"final_{k}"] == getattr(got, k) is not None, k
    assert 0 < summary["final_threshold"] < 1
