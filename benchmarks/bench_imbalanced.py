"""Imbalanced binary benchmark (#17.5): 3% positives, epsilon 1/3/8 and non-private.

    make bench-imbalanced          # or: .venv/bin/python benchmarks/bench_imbalanced.py

A public, seeded data set built here: ``sklearn.datasets.make_classification`` with 10,000
rows, 3% positives and 20 features (the shape of issue #17's credit-default file), split
over 3 simulated nodes as a bank federation would be, with fedguard's default settings
(logistic regression, DP-SGD at delta 1e-5). Prints, per epsilon (mean ± std over seeds),
ROC-AUC, PR-AUC and the positive class's F1 at the threshold fedguard chooses on the
evaluation rows, next to the F1 of calling the more likely class (threshold 0.5, what the
model gave before the threshold was chosen) and accuracy, then checks that at epsilon 3
the positive-class F1 is at least 0.8 of the non-private model's (exit status 1 if not).
Runs in about a minute on 2 cores; runs and data go to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file
from sklearn.datasets import make_classification
from sklearn.metrics import f1_score

from fedguard.config import SimulationConfig
from fedguard.files import MODEL_FILE
from fedguard.fl.data import federated_data, initial_model
from fedguard.privacy.class_weights import weights_for_prevalence
from fedguard.simulations.runner import simulate
from fedguard.task import compute_metrics, set_weights
from fedguard.task.lazy_records import in_memory

POSITIVE_RATE = 0.03  # declared with the data set: public, never counted on a node


def make_data(path: Path, *, rows: int, seed: int) -> None:
    """The benchmark's CSV: ``x0..x19`` and ``label`` (1 = the rare class)."""
    x, y = make_classification(
        n_samples=rows,
        n_features=20,
        n_informative=6,
        n_redundant=4,
        weights=[1 - POSITIVE_RATE],
        flip_y=0.0,
        class_sep=1.0,
        random_state=seed,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(f"x{i}" for i in range(x.shape[1])), "label"])
        w.writerows([*np.round(r, 5), int(t)] for r, t in zip(x, y, strict=True))


def f1_at_half(config: SimulationConfig) -> float:
    """Positive-class F1 of the final model calling the more likely class (p >= 0.5)."""
    data = federated_data(config)
    model = initial_model(config, data)
    saved = load_file(str(config.out / MODEL_FILE))
    set_weights(model, [saved[name] for name in model.state_dict()])
    ds = in_memory(data.dataset, where="bench_imbalanced")
    with torch.no_grad():
        pred = model(torch.from_numpy(ds.x_test)).argmax(1).numpy()
    return float(f1_score(ds.y_test, pred, zero_division=0))


def centralised_reference(config: SimulationConfig) -> dict[str, float]:
    """sklearn's LogisticRegression on every node's training rows pooled, no DP, scored by
    fedguard's own metrics on the same evaluation rows: the best a linear model does here."""
    from sklearn.linear_model import LogisticRegression

    ds = in_memory(federated_data(config).dataset, where="bench_imbalanced")
    fit = LogisticRegression(max_iter=2000).fit(ds.x_train, ds.y_train)
    margin = fit.decision_function(ds.x_test)
    m = compute_metrics(
        y_true=ds.y_test.astype(np.int64),
        logits=np.stack([np.zeros_like(margin), margin], axis=1),
        num_classes=2,
    )
    return _row(m.as_dict(), f1_half=float(f1_score(ds.y_test, margin >= 0)), eps=math.nan)


def _row(m: dict[str, Any], *, f1_half: float, eps: float) -> dict[str, float]:
    return {
        "roc": m["roc_auc"],
        "pr": m["pr_auc"],
        "f1": m["f1_pos"],
        "p": m["precision_pos"],
        "r": m["recall_pos"],
        "thr": m["threshold"],
        "f1_half": f1_half,
        "acc": m["accuracy"],
        "eps": eps,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench-imbalanced"))
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--class-weights", action="store_true", help="also run balanced weights")
    args = p.parse_args(argv)
    # Opacus's RDP accountant at epsilon 8 hits its largest order; the bound it gives is
    # valid, only loose (issue #17.8 covers what users see of it).
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    csv_path = args.out / "imbalanced.csv"
    make_data(csv_path, rows=args.rows, seed=0)
    balanced = ",".join(
        f"{w:.4g}" for w in weights_for_prevalence([1 - POSITIVE_RATE, POSITIVE_RATE])
    )
    settings: list[tuple[str, float | None, str | None]] = [
        ("1", 1.0, None),
        ("3", 3.0, None),
        ("8", 8.0, None),
        ("non-private", None, None),
    ]
    if args.class_weights:
        settings += [("3, class-weights " + balanced, 3.0, balanced)]
    rows: dict[str, list[dict[str, float]]] = {}
    reference: list[dict[str, float]] = []
    started = time.perf_counter()
    for label, eps, weights in settings:
        for seed in range(args.seeds):
            config = SimulationConfig(
                dataset=str(csv_path),
                target="label",
                clients=args.clients,
                rounds=args.rounds,
                seed=seed,
                no_dp=eps is None,
                epsilon=eps or 3.0,
                class_weights=weights,
                out=args.out / f"eps-{label.split(',')[0]}{'-cw' if weights else ''}-seed{seed}",
            )
            s = simulate(config, overwrite=True)
            final = {k[len("final_") :]: v for k, v in s.as_dict().items()}
            eps_spent = s.final_epsilon_max or math.nan
            rows.setdefault(label, []).append(
                _row(final, f1_half=f1_at_half(config), eps=eps_spent)
            )
            if eps is None:
                reference.append(centralised_reference(config))
    print(
        f"make_classification: {args.rows} rows, {POSITIVE_RATE:.0%} positives, 20 features; "
        f"{args.clients} nodes, {args.rounds} rounds, logreg, delta 1e-5; mean ± std over "
        f"{args.seeds} seeds; {time.perf_counter() - started:.0f} s"
    )
    print(
        "| epsilon | ROC-AUC | PR-AUC | positive F1 (chosen threshold) | precision | recall "
        "| threshold | positive F1 at 0.5 | accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|---|")

    def pm(vals: list[float], digits: int = 3) -> str:
        a = np.asarray(vals)
        return f"{a.mean():.{digits}f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.{digits}f}"

    rows["centralised sklearn LogisticRegression, no DP"] = reference
    for label, runs in rows.items():
        col = {k: [r[k] for r in runs] for k in runs[0]}
        print(
            f"| {label} | {pm(col['roc'])} | {pm(col['pr'])} | {pm(col['f1'])} | "
            f"{pm(col['p'])} | {pm(col['r'])} | {pm(col['thr'])} | {pm(col['f1_half'])} | "
            f"{pm(col['acc'])} |"
        )
    f1_3 = float(np.mean([r["f1"] for r in rows["3"]]))
    f1_ref = float(np.mean([r["f1"] for r in rows["non-private"]]))
    ratio = f1_3 / f1_ref if f1_ref > 0 else math.nan
    ok = ratio >= 0.8
    print(
        f"epsilon 3 / non-private positive-class F1: {f1_3:.3f} / {f1_ref:.3f} = {ratio:.2f} "
        f"({'meets' if ok else 'BELOW'} the 0.8 target)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
