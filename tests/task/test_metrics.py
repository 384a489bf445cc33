"""Metrics against hand-computed values."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fedguard.task.metrics import Metrics, compute_metrics, macro_prf


def test_loss_is_mean_cross_entropy() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    y = np.array([0, 2])
    row0 = -(2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(-1.0)))
    row1 = math.log(3.0)
    got = compute_metrics(y_true=y, logits=logits, num_classes=3)
    assert got.loss == pytest.approx((row0 + row1) / 2, rel=1e-12)
    assert got.examples == 2


def test_macro_scores_by_hand_with_a_never_predicted_class() -> None:
    # y = 0 0 1 2, predicted 0 1 1 1.
    y = np.array([0, 0, 1, 2])
    logits = np.eye(3)[[0, 1, 1, 1]]
    got = compute_metrics(y_true=y, logits=logits, num_classes=3)
    # class 0: P 1/1, R 1/2, F1 2/3; class 1: P 1/3, R 1, F1 1/2; class 2: P 0 (never
    # predicted: zero_division=0), R 0, F1 0.
    assert got.accuracy == pytest.approx(0.5)
    assert got.precision_macro == pytest.approx(4 / 9)
    assert got.recall_macro == pytest.approx(1 / 2)
    assert got.f1_macro == pytest.approx(7 / 18)
    assert got.roc_auc is None


def test_classes_absent_from_the_labels_still_count_in_the_macro_average() -> None:
    y = np.array([0, 1, 0, 1])
    logits = np.eye(4)[y]  # perfect on classes 0 and 1; classes 2 and 3 never occur
    got = compute_metrics(y_true=y, logits=logits, num_classes=4)
    assert got.accuracy == 1.0 and got.f1_macro == pytest.approx(0.5)


def test_binary_roc_auc_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    margin = np.array([-2.0, 1.0, -1.0, 3.0])  # class-1 logit; class-0 logit is 0
    logits = np.stack([np.zeros(4), margin], axis=1)
    # Positive/negative pairs ranked correctly: (-1>-2) yes, (-1>1) no, (3>-2), (3>1) yes.
    got = compute_metrics(y_true=y, logits=logits, num_classes=2)
    assert got.roc_auc == pytest.approx(0.75)
    assert got.accuracy == pytest.approx(0.5)  # predicted 0 1 0 1


def test_roc_auc_is_none_with_a_single_class_present() -> None:
    got = compute_metrics(y_true=np.array([1, 1]), logits=np.zeros((2, 2)), num_classes=2)
    assert got.roc_auc is None


def test_huge_logits_stay_finite() -> None:
    logits = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]], dtype=np.float32)
    got = compute_metrics(y_true=np.array([0, 0]), logits=logits, num_classes=2)
    assert got.loss == pytest.approx(1000.0)  # (0 + 2000) / 2
    assert got.roc_auc is None


def test_as_dict_and_frozen() -> None:
    got = compute_metrics(y_true=np.array([0, 1]), logits=np.eye(2), num_classes=2)
    assert got.as_dict() == {
        "loss": pytest.approx(math.log(1 + math.exp(-1))),
        "accuracy": 1.0,
        "precision_macro": 1.0,
        "recall_macro": 1.0,
        "f1_macro": 1.0,
        "roc_auc": 1.0,
        "examples": 2,
        "pr_auc": 1.0,
        "threshold": 0.5,  # halfway between the two rows' margins, -1 and 1
        # One row of each class: no second fold to choose a threshold on.
        "precision_pos": None,
        "recall_pos": None,
        "f1_pos": None,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.loss = 0.0  # type: ignore[misc]
    assert isinstance(got, Metrics)


@pytest.mark.parametrize(
    ("y", "logits", "k", "match"),
    [
        (np.array([0, 1]), np.zeros((2, 3)), 2, r"logits \(N, 2\)"),
        (np.array([0, 2]), np.zeros((2, 2)), 2, r"class ids in 0\.\.1"),
        (np.array([0.0, 1.0]), np.zeros((2, 2)), 2, r"class ids"),
        (np.zeros(0, dtype=int), np.zeros((0, 2)), 2, r"no examples"),
        (np.array([0]), np.zeros((1, 1)), 1, r"num_classes must be an integer >= 2"),
    ],
)
def test_bad_inputs(y: np.ndarray, logits: np.ndarray, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(y_true=y, logits=logits, num_classes=k)


@pytest.mark.parametrize("case", range(40))
def test_macro_figures_are_scikit_learns_to_the_last_bit(case: int) -> None:
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(case)
    k = int(rng.integers(2, 12))
    n = int(rng.integers(1, 400))
    y = rng.integers(0, max(1, k - int(rng.integers(0, 3))), n)  # some classes absent
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    want = precision_recall_fscore_support(
        y, pred, labels=list(range(k)), average="macro", zero_division=0
    )[:3]
    assert macro_prf(y_true=y, y_pred=pred, num_classes=k) == tuple(float(w) for w in want)
