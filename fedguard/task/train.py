"""Batch samplers, non-private local training and evaluation.

The private training loop lives in ``fedguard.privacy``; it reuses :func:`poisson_batches`,
the sampling that the DP-SGD privacy analysis assumes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from fedguard._checks import integer
from fedguard._record_reads import dataset_size, read_records
from fedguard.errors import DataError, invalid
from fedguard.task.metrics import Metrics, compute_metrics

__all__ = [
    "TrainStats",
    "evaluate",
    "poisson_batches",
    "shuffled_batches",
    "train_plain",
]


@dataclass(frozen=True)
class TrainStats:
    """What one call of local training did: optimizer steps, examples seen, mean loss."""

    steps: int
    examples: int
    mean_loss: float


def poisson_batches(
    *, num_examples: int, sample_rate: float, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Yield ``steps`` Poisson-sampled batches of example indices.

    Each example joins each batch independently with probability ``sample_rate``, so
    batch sizes vary and a batch may be empty. This is the sampling under which the
    subsampled-Gaussian DP accounting holds; fixed-size shuffled batches are not.

    Yields
    ------
    torch.Tensor
        Sorted int64 indices, on ``generator``'s device.
    """
    integer("num_examples", num_examples, minimum=0)
    integer("steps", steps, minimum=0)
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, int | float)
        or not 0.0 < sample_rate <= 1.0
    ):
        raise invalid("sample_rate", allowed="a number in (0, 1]", got=sample_rate)
    for _ in range(steps):
        draws = torch.rand(num_examples, generator=generator, device=generator.device)
        yield torch.nonzero(draws < sample_rate).flatten()


def shuffled_batches(
    *, num_examples: int, batch_size: int, epochs: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Yield index batches of one fresh permutation per epoch (the last may be short).

    Yields
    ------
    torch.Tensor
        int64 indices, on ``generator``'s device.
    """
    integer("num_examples", num_examples, minimum=0)
    integer("--batch-size", batch_size, minimum=1)
    integer("--epochs", epochs, minimum=0)
    for _ in range(epochs):
        perm = torch.randperm(num_examples, generator=generator, device=generator.device)
        yield from perm.split(batch_size)


def train_plain(
    *,
    model: nn.Module,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    data: Any = None,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    generator: torch.Generator,
    prox_mu: float = 0.0,
    class_weights: Sequence[float] | None = None,
) -> TrainStats:
    """Train ``model`` in place with non-private minibatch SGD on cross-entropy.

    Parameters
    ----------
    model
        Trained in place; its train/eval mode is restored afterwards.
    x, y
        Examples ``(N, ...)`` and int class ids ``(N,)`` on the model's device.
    data
        Instead of ``x, y``: a map-style data set (``len``, ``data[i] -> (x, y)``);
        only each batch's records are read (:mod:`fedguard._record_reads`).
    epochs, batch_size
        Passes over the data and examples per step (>= 1 each).
    lr, momentum
        SGD learning rate (> 0) and momentum (in [0, 1)).
    generator
        Orders the examples; the only randomness used.
    prox_mu
        FedProx (Li et al. 2020): adds ``(prox_mu / 2) * ||w - w_start||^2`` to the loss,
        ``w_start`` being the weights at the call (the global model); 0 turns it off.
    class_weights
        Per-class loss weights (``fedguard.privacy.class_weights``), as the DP trainer
        applies them, so a non-private reference trains the same objective.

    Raises
    ------
    ConfigError
        A bad option, or the loss became NaN/inf (the message says to lower ``--lr``).
    """
    integer("--epochs", epochs, minimum=1)
    integer("--batch-size", batch_size, minimum=1)
    if not _is_real(lr) or not math.isfinite(lr) or lr <= 0:
        raise invalid("--lr", allowed="a finite number > 0", got=lr)
    if not _is_real(momentum) or not 0.0 <= momentum < 1.0:
        raise invalid("--momentum", allowed="a number in [0, 1)", got=momentum)
    if not _is_real(prox_mu) or not math.isfinite(prox_mu) or prox_mu < 0:
        raise invalid("prox-mu", allowed="a finite number >= 0", got=prox_mu)
    if data is None:
        if x is None or y is None:
            raise ValueError("train_plain: pass the tensors x, y or a data set")
        _check_xy(x, y)
        y = y.long()
        n = len(x)
    elif x is not None or y is not None:
        raise ValueError("train_plain: pass the tensors x, y or a data set, not both")
    else:
        n = dataset_size(data)
    device = next(iter(model.parameters()), torch.empty(0)).device
    weight = None if class_weights is None else torch.tensor(class_weights, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    # FedProx anchor: the weights this call starts from (the global model).
    anchor = [(p, p.detach().clone()) for p in model.parameters()] if prox_mu > 0 else []
    was_training = model.training
    model.train()
    steps = examples = 0
    loss_sum = 0.0
    try:
        for idx in shuffled_batches(
            num_examples=n, batch_size=batch_size, epochs=epochs, generator=generator
        ):
            if data is None:
                idx = idx.to(x.device)  # type: ignore[union-attr]
                bx, by = x[idx], y[idx]  # type: ignore[index]
            else:
                bx, by = read_records(data, idx.tolist())
                bx, by = bx.to(device), by.to(device).long()
            optimizer.zero_grad(set_to_none=True)
            logits = model(bx)
            loss = (
                F.cross_entropy(logits, by)
                if weight is None
                # Sum over the batch size, the DP trainer's scale (a weighted "mean" would
                # divide by the batch's total weight instead).
                else F.cross_entropy(logits, by, weight=weight, reduction="sum") / len(idx)
            )
            value = float(loss.detach())
            if not math.isfinite(value):
                # Stop before the step: one NaN update would corrupt every weight.
                raise invalid(
                    "--lr",
                    allowed="a smaller learning rate",
                    got=lr,
                    hint=f"the training loss became {value} at step {steps + 1}",
                )
            loss.backward()
            if prox_mu > 0:
                with torch.no_grad():  # gradient of the proximal term, mu * (w - w_start)
                    for p, w0 in anchor:
                        if p.grad is not None:
                            p.grad.add_(p.detach() - w0, alpha=prox_mu)
            optimizer.step()
            steps += 1
            examples += len(idx)
            loss_sum += value * len(idx)
    finally:
        model.train(was_training)
    return TrainStats(steps=steps, examples=examples, mean_loss=loss_sum / examples)


@torch.no_grad()
def evaluate(
    *, model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, batch_size: int = 2048
) -> Metrics:
    """Evaluate ``model`` on ``(x, y)`` in eval mode, restoring its previous mode.

    Returns
    -------
    Metrics
        See :func:`fedguard.task.metrics.compute_metrics`.
    """
    integer("batch_size", batch_size, minimum=1)
    _check_xy(x, y)
    was_training = model.training
    model.eval()
    try:
        logits = [model(chunk).detach().float().cpu() for chunk in x.split(batch_size)]
    finally:
        model.train(was_training)
    return compute_metrics(
        y_true=y.detach().cpu().numpy().astype(np.int64),
        logits=torch.cat(logits).numpy(),
        num_classes=num_classes,
    )


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise DataError(
            f"expected examples x (N, ...) and labels y (N,) with N >= 1, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(f"labels y must be integer class ids, got dtype {y.dtype}")
