"""Binary metrics for a rare positive class, against sklearn on fixed arrays (#17.5)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from fedguard.task.metrics import best_f1_threshold, compute_metrics

# 40 rows, 4 positives (10%): a fixed, seeded score column with ties and overlap.
_RNG = np.random.default_rng(20261204)
Y = np.zeros(40, dtype=np.int64)
Y[[3, 11, 22, 35]] = 1
MARGIN = np.round(_RNG.normal(size=40) + 1.5 * Y, 1)  # rounded: ties between rows
LOGITS = np.stack([np.zeros(40), MARGIN], axis=1)
PROB1 = 1 / (1 + np.exp(-MARGIN))


def _f1_at(y: np.ndarray, scores: np.ndarray, cut: float) -> float:
    return float(f1_score(y, (scores >= cut).astype(int), zero_division=0))


def test_roc_and_pr_auc_are_sklearns() -> None:
    got = compute_metrics(y_true=Y, logits=LOGITS, num_classes=2)
    assert got.roc_auc == pytest.approx(roc_auc_score(Y, PROB1), rel=1e-12)
    assert got.pr_auc == pytest.approx(average_precision_score(Y, PROB1), rel=1e-12)
    # Accuracy still reported, but no longer the only figure: "always 0" scores 0.9 here.
    assert got.accuracy == pytest.approx(np.mean((MARGIN > 0).astype(int) == Y))


def test_threshold_has_the_best_f1_of_every_cut_sklearn_scores() -> None:
    cut = best_f1_threshold(y_true=Y, scores=MARGIN)
    candidates = np.unique(MARGIN)
    best = max(_f1_at(Y, MARGIN, c) for c in candidates)
    assert _f1_at(Y, MARGIN, cut) == pytest.approx(best, rel=1e-12)
    # Between two distinct scores, never on one: a new row at a seen score is not a coin toss.
    assert cut not in set(MARGIN.tolist())
    got = compute_metrics(y_true=Y, logits=LOGITS, num_classes=2)
    assert got.threshold == pytest.approx(1 / (1 + np.exp(-cut)), rel=1e-12)


def test_positive_class_figures_are_cross_fitted_and_match_sklearn() -> None:
    # The reference: choose the cut on one half (alternating rows within each class),
    # score the other half with it, both ways, and pool; sklearn counts the result.
    fold = np.zeros(40, dtype=int)
    for label in (0, 1):
        rows = np.flatnonzero(label == Y)
        fold[rows[1::2]] = 1
    called = np.zeros(40, dtype=int)
    for fit in (0, 1):
        cut = best_f1_threshold(y_true=Y[fold == fit], scores=MARGIN[fold == fit])
        called[fold != fit] = MARGIN[fold != fit] >= cut
    got = compute_metrics(y_true=Y, logits=LOGITS, num_classes=2)
    assert got.precision_pos == pytest.approx(precision_score(Y, called, zero_division=0))
    assert got.recall_pos == pytest.approx(recall_score(Y, called))
    assert got.f1_pos == pytest.approx(f1_score(Y, called))
    # Not tuned on the rows it scores: here strictly below the in-sample best F1.
    in_sample = _f1_at(Y, MARGIN, best_f1_threshold(y_true=Y, scores=MARGIN))
    assert got.f1_pos is not None and got.f1_pos < in_sample


def test_always_no_scores_zero_positive_f1_despite_high_accuracy() -> None:
    # The bank's report: 97% accuracy from predicting "No" for everyone.
    y = np.zeros(100, dtype=np.int64)
    y[::33] = 1  # rows 0, 33, 66, 99
    logits = np.tile([3.0, 0.0], (100, 1))  # every row the same: nothing is ranked
    got = compute_metrics(y_true=y, logits=logits, num_classes=2)
    assert got.accuracy == pytest.approx(0.96)
    assert got.roc_auc == pytest.approx(0.5) and got.pr_auc == pytest.approx(0.04)
    # One tie: the only cut calls every row positive; precision is the positive rate.
    assert got.f1_pos == pytest.approx(f1_score(y, np.ones(100, dtype=int)))


def test_binary_fields_absent_for_multiclass_and_single_class() -> None:
    three = compute_metrics(y_true=np.array([0, 1, 2]), logits=np.eye(3), num_classes=3)
    one = compute_metrics(y_true=np.array([1, 1]), logits=np.eye(2), num_classes=2)
    for m in (three, one):
        assert (m.pr_auc, m.f1_pos, m.threshold) == (None, None, None)


def test_best_f1_threshold_refuses_labels_without_a_positive() -> None:
    with pytest.raises(ValueError, match="no positive row"):
        best_f1_threshold(y_true=np.zeros(3, dtype=int), scores=np.arange(3.0))
