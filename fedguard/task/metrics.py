"""Classification metrics from raw logits, shared by clients, server and simulation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["Metrics", "compute_metrics"]


@dataclass(frozen=True)
class Metrics:
    """Evaluation of one model on one set of examples.

    ``precision_macro``/``recall_macro``/``f1_macro`` average over every class
    ``0..num_classes-1``, counting a class never predicted as 0. ``roc_auc`` is only
    set for binary tasks whose labels contain both classes.
    """

    loss: float
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    roc_auc: float | None
    examples: int

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain ``{field: value}`` dict, e.g. for JSON or Flower ``MetricRecord``s."""
        return dataclasses.asdict(self)


def compute_metrics(*, y_true: np.ndarray, logits: np.ndarray, num_classes: int) -> Metrics:
    """Compute loss, accuracy, macro precision/recall/F1 and (binary) ROC AUC.

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
        model) give a non-finite loss and ``roc_auc=None`` rather than an error.
    """
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

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
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, labels=list(range(num_classes)), average="macro", zero_division=0
    )
    roc_auc: float | None = None
    if num_classes == 2 and len(np.unique(y)) == 2:
        prob1 = np.exp(z[:, 1] - log_norm)
        if np.isfinite(prob1).all():
            roc_auc = float(roc_auc_score(y, prob1))
    return Metrics(
        loss=loss,
        accuracy=float(np.mean(pred == y)),
        precision_macro=float(precision),
        recall_macro=float(recall),
        f1_macro=float(f1),
        roc_auc=roc_auc,
        examples=len(y),
    )
