"""Classification metrics from raw logits, shared by clients, server and simulation.

Binary tasks also get the figures that matter when one class is rare (a 3% default rate
makes "always no" 97% accurate): ROC-AUC, PR-AUC (average precision) and the positive
class's precision, recall and F1 at a decision threshold chosen on the evaluated rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Metrics", "best_f1_threshold", "compute_metrics", "headline", "macro_prf"]


@dataclass(frozen=True)
class Metrics:
    """Evaluation of one model on one set of examples.

    ``precision_macro``/``recall_macro``/``f1_macro`` average over every class
    ``0..num_classes-1``, counting a class never predicted as 0. The binary fields are only
    set for binary tasks whose labels contain both classes (class 1 is "positive"):

    ``roc_auc``, ``pr_auc``
        Areas under the ROC and precision-recall curves of the class-1 score. PR-AUC is
        sklearn's average precision; a model that ranks at random scores the positive
        rate, not 0.5.
    ``threshold``
        The probability of class 1 at or above which a row should be called positive: the
        threshold with the best positive-class F1 on these rows (the server's evaluation
        data, never a node's).
    ``precision_pos``, ``recall_pos``, ``f1_pos``
        The positive class's figures at a threshold chosen the same way but on the OTHER
        half of the rows (two folds, stratified by label, alternating in row order), so
        no figure is tuned on the rows it scores; ``None`` with fewer than two rows of
        either class.
    """

    loss: float
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    roc_auc: float | None
    examples: int
    pr_auc: float | None = None
    precision_pos: float | None = None
    recall_pos: float | None = None
    f1_pos: float | None = None
    threshold: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain ``{field: value}`` dict, e.g. for JSON or Flower ``MetricRecord``s."""
        return dataclasses.asdict(self)


def compute_metrics(*, y_true: np.ndarray, logits: np.ndarray, num_classes: int) -> Metrics:
    """Compute loss, accuracy, macro precision/recall/F1 and the binary figures.

    Parameters
    ----------
    y_true
        Class ids, shape ``(N,)``, in ``0..num_classes-1``.
    logits
        Unnormalised scores, shape ``(N, num_classes)``.
    num_classes
        Number of classes (>= 2).

    Returns
    -------
    Metrics
        ``loss`` is the mean cross-entropy (natural log). Non-finite logits (a diverged
        model) give a non-finite loss and no binary figures rather than an error.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true)
    z = np.asarray(logits, dtype=np.float64)
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int | np.integer)
        or num_classes < 2
    ):
        raise ValueError(
            f"compute_metrics: num_classes must be an integer >= 2, got {num_classes!r}"
        )
    if y.ndim != 1 or z.shape != (len(y), num_classes):
        raise ValueError(
            f"compute_metrics: expected y_true (N,) and logits (N, {num_classes}), "
            f"got {y.shape} and {z.shape}"
        )
    if len(y) == 0:
        raise ValueError("compute_metrics: no examples to evaluate")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"compute_metrics: y_true must be class ids in 0..{num_classes - 1}")

    # Stable log-softmax: shift by the row max before exponentiating.
    shift = z.max(axis=1, keepdims=True)
    log_norm = shift[:, 0] + np.log(np.exp(z - shift).sum(axis=1))
    loss = float(np.mean(log_norm - z[np.arange(len(y)), y]))

    pred = z.argmax(axis=1)
    precision, recall, f1 = macro_prf(y_true=y, y_pred=pred, num_classes=num_classes)
    macro = Metrics(
        loss=loss,
        accuracy=float(np.mean(pred == y)),
        precision_macro=float(precision),
        recall_macro=float(recall),
        f1_macro=float(f1),
        roc_auc=None,
        examples=len(y),
    )
    if num_classes != 2 or len(np.unique(y)) != 2:
        return macro
    prob1 = np.exp(z[:, 1] - log_norm)
    # The logit margin ranks rows as prob1 does, without prob1's ties at 0 and 1.
    margin = z[:, 1] - z[:, 0]
    if not (np.isfinite(prob1).all() and np.isfinite(margin).all()):
        return macro
    b = _binary(y=y.astype(np.int64), margin=margin)
    return dataclasses.replace(
        macro,
        roc_auc=float(roc_auc_score(y, prob1)),
        pr_auc=b["pr_auc"],
        threshold=b["threshold"],
        precision_pos=b.get("precision_pos"),
        recall_pos=b.get("recall_pos"),
        f1_pos=b.get("f1_pos"),
    )


def macro_prf(
    *, y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over classes ``0..num_classes-1``, 0 where undefined.

    scikit-learn's ``precision_recall_fscore_support(average="macro", zero_division=0)``
    to the last bit (a test compares them), from three counts per class: its input
    checks cost ten times the arithmetic, every round of a simulation.
    """
    hit = np.bincount(y_true[y_pred == y_true], minlength=num_classes).astype(np.float64)
    true = np.bincount(y_true, minlength=num_classes).astype(np.float64)
    predicted = np.bincount(y_pred, minlength=num_classes).astype(np.float64)
    both = true + predicted

    def ratio(top: np.ndarray, bottom: np.ndarray) -> float:
        out = np.divide(top, bottom, out=np.zeros_like(top), where=bottom > 0)
        return float(np.mean(out))

    return ratio(hit, predicted), ratio(hit, true), ratio(2 * hit, both)


def _binary(*, y: np.ndarray, margin: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import average_precision_score

    out: dict[str, float | None] = {
        "pr_auc": float(average_precision_score(y, margin)),
        "threshold": _sigmoid(best_f1_threshold(y_true=y, scores=margin)),
    }
    folds = _two_folds(y)
    if folds is None:
        return out
    called = np.zeros(len(y), dtype=bool)
    for fit, score in (folds, folds[::-1]):
        cut = best_f1_threshold(y_true=y[fit], scores=margin[fit])
        called[score] = margin[score] >= cut
    tp = int(np.sum(called & (y == 1)))
    positives, predicted = int(np.sum(y == 1)), int(np.sum(called))
    out["precision_pos"] = tp / predicted if predicted else 0.0
    out["recall_pos"] = tp / positives
    out["f1_pos"] = 2 * tp / (predicted + positives)
    return out


def best_f1_threshold(*, y_true: np.ndarray, scores: np.ndarray) -> float:
    """The score at or above which calling rows positive gives the best F1 on these rows.

    Cuts fall halfway between distinct neighbouring scores (so the threshold carries over
    to new rows), and the highest of equally good cuts wins. ``y_true`` holds 0/1 and at
    least one 1.
    """
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], (y_true[order] == 1)
    positives = int(hits.sum())
    if positives == 0:
        raise ValueError("best_f1_threshold: no positive row to choose a threshold on")
    tp = np.cumsum(hits)
    called = np.arange(1, len(s) + 1)
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # a cut may not split rows of equal score
    f1 = np.where(last_of_tie, 2 * tp / (called + positives), -1.0)
    k = int(np.argmax(f1))  # first maximum: the fewest rows called, the highest cut
    return float(s[k] if k + 1 == len(s) else (s[k] + s[k + 1]) / 2)


def _two_folds(y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows split in two by label, alternating in row order (no randomness, no key)."""
    fold = np.zeros(len(y), dtype=np.int64)
    for label in (0, 1):
        rows = np.flatnonzero(y == label)
        if len(rows) < 2:
            return None
        fold[rows[1::2]] = 1
    return np.flatnonzero(fold == 0), np.flatnonzero(fold == 1)


def _sigmoid(t: float) -> float:
    # The margin is the log-odds of class 1, so its sigmoid is class 1's probability.
    return 1.0 / (1.0 + math.exp(-t)) if t >= 0 else math.exp(t) / (1.0 + math.exp(t))


def headline(figures: Mapping[str, Any]) -> str:
    """The figures a console line leads with, from a metrics row (``Metrics.as_dict()``,
    a ``metrics.jsonl`` line or ``summary.json``'s ``final_*`` keys without the prefix).

    Binary tasks lead with ROC-AUC, PR-AUC and the positive class's F1, precision and
    recall at the chosen threshold; accuracy comes last, since predicting the common class
    for every row already scores the common class's share. Other tasks: accuracy and
    macro F1. Missing or NaN figures (no evaluation set) are left out.
    """

    def num(key: str) -> float | None:
        v = figures.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        return float(v)

    parts: list[str] = []
    if num("roc_auc") is not None:
        parts += [f"ROC-AUC {num('roc_auc'):.4f}", f"PR-AUC {num('pr_auc') or 0.0:.4f}"]
        if num("f1_pos") is not None:
            parts.append(
                f"positive F1 {num('f1_pos'):.4f} (precision {num('precision_pos'):.4f} "
                f"recall {num('recall_pos'):.4f})"
            )
        if num("threshold") is not None:
            parts.append(f"threshold {num('threshold'):.4g}")
    if num("accuracy") is not None:
        parts.append(f"accuracy {num('accuracy'):.4f}")
    if num("roc_auc") is None and num("f1_macro") is not None:
        parts.append(f"macro F1 {num('f1_macro'):.4f}")
    return "  ".join(parts)
