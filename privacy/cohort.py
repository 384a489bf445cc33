"""DP-SGD for many clients at once: the same algorithm as :class:`~fedguard.privacy.DPTrainer`,
every client's copy of the model trained in one vectorised pass.

A simulation of hundreds of small clients spends most of its time in per-client, per-step
overhead when clients train one after another (a DP-SGD step of a small MLP on 16
examples is ~100 tensor operations of microseconds each). :class:`CohortDPTrainer` stacks
K clients' weights (:mod:`fedguard.privacy.stacked`) and runs each step for all of them
with one set of batched operations.

It is the same mechanism, step for step, as :meth:`DPTrainer.train` for each client:
Poisson sampling at ``q = 1 / ceil(n / batch_size)`` for ``epochs * ceil(n / batch_size)``
steps, per-example clipping to ``max_grad_norm`` (Opacus's factor ``min(1, C / (norm +
1e-6))``), N(0, (sigma C)^2) noise, division by the expected batch size ``max(1,
round(q n))``, optional FedProx term after the noise, SGD with momentum. Every client
draws from its own generator in the same order as ``DPTrainer`` (per step: the sampling
mask, then one noise tensor per parameter), so both give the same weights up to float
rounding (a test checks it) and the same event is composed into each client's accountant
before its first step (write-ahead, ``before_training``). Clients with fewer steps (less
data) simply stop updating once their steps are done.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - conventional alias
from torch import nn

from fedguard._checks import integer as _int
from fedguard._checks import real as _real
from fedguard.errors import ConfigError, invalid

from .accountants import Accountant, GaussianEvent
from .class_weights import check_class_weights
from .dpsgd import DPTrainResult, check_training_inputs, steps_per_epoch
from .stacked import StackedSequential, stacked_problems

__all__ = ["CohortClient", "CohortDPTrainer", "CohortResult"]


@dataclass(frozen=True, kw_only=True)
class CohortClient:
    """One client of a cohort: its data, noise, randomness and accountant."""

    x: torch.Tensor  # [n, ...] on the trainer's device
    y: torch.Tensor  # [n] integer labels
    noise_multiplier: float
    generator: torch.Generator  # sampling and noise, on the trainer's device type
    accountant: Accountant
    before_training: Callable[[GaussianEvent], None] | None = None


@dataclass(frozen=True)
class CohortResult:
    """One client's trained weights (``state_dict`` order, float32) and what it did."""

    weights: list[np.ndarray]
    train: DPTrainResult


class CohortDPTrainer:
    """Trains any number of clients' copies of ``model`` with DP-SGD, K at a time.

    Parameters
    ----------
    model : torch.nn.Module
        An ``nn.Sequential`` of Linear, Conv2d, GroupNorm and parameter-free layers
        (:func:`~fedguard.privacy.stacked.stacked_problems` says why another is refused).
        Only its architecture and device are used.
    max_floats : int
        Rough bound on the floats one step of one chunk may hold (per-example gradients of
        convolutions and activations): sets how many clients train at once.

    Raises
    ------
    ConfigError
        The model cannot be stacked; every problem is listed.
    """

    def __init__(self, *, model: nn.Module, max_floats: int = 1 << 25) -> None:
        problems = stacked_problems(model)
        if problems:
            raise ConfigError(
                "model: expected an nn.Sequential of Linear, Conv2d, GroupNorm and "
                f"parameter-free layers for cohort training, got {'; '.join(problems)}"
            )
        self._stacked = StackedSequential(model)
        params = list(model.parameters())
        self.device = params[0].device
        self._shapes = [tuple(p.shape) for p in params]
        self._max_floats = _int("max_floats", max_floats, minimum=1)
        # Floats one example costs in a step: its activations (forward and backward) and
        # at most one per-example copy of the parameters (convolutions, GroupNorm).
        self._per_example = sum(math.prod(s) for s in self._shapes)
        self._model = model

    def _chunk_size(self, example_shape: tuple[int, ...], batch: float) -> int:
        with torch.no_grad():
            probe = torch.zeros((1, 1, *example_shape), device=self.device)
            weights = [torch.zeros((1, *s), device=self.device) for s in self._shapes]
            _, records = self._stacked.forward(weights, probe)
        activations = sum(r.z.numel() + r.a.numel() for r in records)
        per_example = 2 * activations + self._per_example
        return max(1, int(self._max_floats // (per_example * max(batch, 1.0))))

    def train(
        self,
        *,
        start: Sequence[np.ndarray | torch.Tensor],
        clients: Sequence[CohortClient],
        epochs: int,
        batch_size: int,
        lr: float,
        momentum: float = 0.0,
        max_grad_norm: float,
        prox_mu: float = 0.0,
        class_weights: Sequence[float] | None = None,
    ) -> Iterator[CohortResult]:
        """Train every client from the weights ``start``; results in ``clients`` order.

        Clients are trained a chunk at a time; a chunk's events are composed (and each
        ``before_training`` called) just before that chunk's first step.
        ``class_weights``: as :meth:`fedguard.privacy.DPTrainer.train`'s.
        """
        if len(start) != len(self._shapes):
            raise invalid("start", allowed=f"{len(self._shapes)} arrays", got=len(start))
        hyper = _Hyper(
            epochs=_int("epochs", epochs, minimum=1),
            batch_size=_int("batch_size", batch_size, minimum=1),
            lr=_real("lr", lr, allowed="a finite number > 0", ok=lambda v: v > 0),
            momentum=_real(
                "momentum",
                momentum,
                allowed="a number with 0 <= momentum < 1",
                ok=lambda v: 0 <= v < 1,
            ),
            clip=_real(
                "max_grad_norm", max_grad_norm, allowed="a finite number > 0", ok=lambda v: v > 0
            ),
            mu=_real("prox_mu", prox_mu, allowed="a finite number >= 0", ok=lambda v: v >= 0),
            class_weights=None if class_weights is None else check_class_weights(class_weights),
        )
        first = [
            torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w) for w in start
        ]
        for w, shape in zip(first, self._shapes, strict=True):
            if tuple(w.shape) != shape:
                raise invalid(
                    "start", allowed=f"arrays of shapes {self._shapes}", got=tuple(w.shape)
                )
        for c in clients:
            check_training_inputs(
                x=c.x, y=c.y, accountant=c.accountant, generator=c.generator, device=self.device
            )
        if not clients:
            return
        size = self._chunk_size(tuple(clients[0].x.shape[1:]), batch_size * 1.5)
        for i in range(0, len(clients), size):
            yield from self._train_chunk(first, clients[i : i + size], hyper)

    def _train_chunk(
        self, start: list[torch.Tensor], chunk: Sequence[CohortClient], h: _Hyper
    ) -> Iterator[CohortResult]:
        k, dev = len(chunk), self.device
        plan = _ChunkPlan.of(chunk, h, device=dev)
        # Write-ahead: every client's release is counted (and persisted by the caller)
        # before any gradient of its data is computed.
        for c, sigma, q, s in zip(chunk, plan.sigmas, plan.rates, plan.steps, strict=True):
            event = GaussianEvent(noise_multiplier=sigma, sample_rate=q, steps=s)
            c.accountant.compose(event)
            if c.before_training is not None:
                c.before_training(event)
        params = [
            w.to(device=dev, dtype=torch.float32).unsqueeze(0).repeat(k, *([1] * w.ndim))
            for w in start
        ]
        anchor = [p.clone() for p in params] if h.mu > 0 else []
        buffers: list[torch.Tensor] | None = None
        loss_sum = torch.zeros(k, dtype=torch.float64, device=dev)
        examples = [0] * k
        for step in range(max(plan.steps)):
            active = [step < s for s in plan.steps]
            xb, yb, valid, noise = self._draw(
                chunk, plan.sizes, plan.rates, plan.sigmas, active, h.clip
            )
            if xb.shape[1] > 0:
                sums, losses = self._clipped_sums(params, xb, yb, valid, h)
                loss_sum += losses.detach().sum(1).double()
                for i, count in enumerate(valid.sum(1).tolist()):
                    examples[i] += int(count)
            else:  # nobody sampled an example: noise-only steps
                sums = [torch.zeros_like(p) for p in params]
            with torch.no_grad():
                buffers = self._descend(params, sums, noise, plan, active, h, buffers, anchor)
        arrays = [p.detach().cpu().numpy() for p in params]
        for i in range(k):
            yield CohortResult(
                weights=[a[i] for a in arrays],  # views: params are never touched again
                train=DPTrainResult(
                    steps=plan.steps[i],
                    examples=examples[i],
                    mean_loss=float(loss_sum[i]) / examples[i] if examples[i] else 0.0,
                    noise_multiplier=plan.sigmas[i],
                    sample_rate=plan.rates[i],
                    max_grad_norm=h.clip,
                ),
            )

    def _clipped_sums(
        self,
        params: list[torch.Tensor],
        xb: torch.Tensor,
        yb: torch.Tensor,
        valid: torch.Tensor,
        h: _Hyper,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each client's sum of clipped per-example gradients, and its per-example losses."""
        for p in params:
            p.requires_grad_(True)
        logits, records = self._stacked.forward(params, xb)
        weight = (
            None
            if h.class_weights is None
            else torch.tensor(h.class_weights, dtype=logits.dtype, device=self.device)
        )
        losses = (
            F.cross_entropy(
                logits.flatten(0, 1), yb.flatten(), weight=weight, reduction="none"
            ).view(valid.shape)
            * valid
        )
        grads = torch.autograd.grad(losses.sum(), [r.z for r in records])
        sums, _ = self._stacked.clipped_sums(records, grads, max_grad_norm=h.clip, valid=valid)
        return sums, losses

    def _descend(
        self,
        params: list[torch.Tensor],
        sums: list[torch.Tensor],
        noise: list[torch.Tensor],
        plan: _ChunkPlan,
        active: list[bool],
        h: _Hyper,
        buffers: list[torch.Tensor] | None,
        anchor: list[torch.Tensor],
    ) -> list[torch.Tensor] | None:
        """One SGD step of the active clients: noise, average, FedProx, momentum; the
        momentum buffers after it."""
        for p in params:
            p.requires_grad_(False)
        grads_now = []
        for i, (p, summed, z) in enumerate(zip(params, sums, noise, strict=True)):
            g = (summed + z) / plan.expected.view(-1, *([1] * (p.ndim - 1)))
            if h.mu > 0:
                g = g + h.mu * (p - anchor[i])
            grads_now.append(g)
        if h.momentum > 0:
            if buffers is None:
                buffers = [g.clone() for g in grads_now]
            else:
                for b, g in zip(buffers, grads_now, strict=True):
                    b.mul_(h.momentum).add_(g)
            grads_now = buffers
        mask = torch.tensor(active, dtype=torch.float32, device=self.device)
        for p, g in zip(params, grads_now, strict=True):
            p.sub_(h.lr * g * mask.view(-1, *([1] * (p.ndim - 1))))
        return buffers

    def _draw(
        self,
        chunk: Sequence[CohortClient],
        sizes: list[int],
        rates: list[float],
        sigmas: list[float],
        active: list[bool],
        clip: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One step's samples (padded to the largest), validity mask and noise per param.

        Each active client draws from its own generator exactly as ``DPTrainer`` does:
        the Poisson mask over its n examples, then one N(0, (sigma C)^2) tensor per
        parameter. Finished clients draw nothing (their generators are not advanced).
        """
        k, dev = len(chunk), self.device
        noise = [torch.zeros((k, *shape), device=dev) for shape in self._shapes]
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        for i, (c, n, q, sigma, on) in enumerate(
            zip(chunk, sizes, rates, sigmas, active, strict=True)
        ):
            if not on:
                xs.append(c.x[:0])
                ys.append(c.y[:0])
                continue
            g = c.generator
            idx = (torch.rand(n, generator=g, device=g.device) < q).nonzero(as_tuple=True)[0]
            xs.append(c.x[idx])
            ys.append(c.y[idx])
            for j, shape in enumerate(self._shapes):
                # Into the stacked buffer: the same numbers as DPTrainer's own draw.
                torch.normal(0.0, sigma * clip, size=shape, generator=g, out=noise[j][i])
        xb = nn.utils.rnn.pad_sequence(xs, batch_first=True)
        yb = nn.utils.rnn.pad_sequence(ys, batch_first=True).long()
        counts = torch.tensor([int(t.shape[0]) for t in ys], device=dev)
        valid = (torch.arange(xb.shape[1], device=dev)[None, :] < counts[:, None]).float()
        return xb, yb, valid, noise


@dataclass(frozen=True)
class _ChunkPlan:
    """Each client's record count, sampling rate, steps, expected batch and noise."""

    sizes: list[int]
    rates: list[float]
    steps: list[int]
    expected: torch.Tensor  # max(1, round(q n)) per client: the divisor of its sum
    sigmas: list[float]

    @classmethod
    def of(cls, chunk: Sequence[CohortClient], h: _Hyper, *, device: torch.device) -> _ChunkPlan:
        sizes = [int(c.x.shape[0]) for c in chunk]
        per_epoch = [steps_per_epoch(num_examples=n, batch_size=h.batch_size) for n in sizes]
        rates = [1.0 / p for p in per_epoch]
        expected = torch.tensor(
            [max(1, round(q * n)) for q, n in zip(rates, sizes, strict=True)],
            dtype=torch.float32,
            device=device,
        )
        sigmas = [
            _real(
                "noise_multiplier",
                c.noise_multiplier,
                allowed="a finite number > 0",
                ok=lambda v: v > 0,
            )
            for c in chunk
        ]
        return cls(
            sizes=sizes,
            rates=rates,
            steps=[h.epochs * p for p in per_epoch],
            expected=expected,
            sigmas=sigmas,
        )


@dataclass(frozen=True)
class _Hyper:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    clip: float
    mu: float
    class_weights: tuple[float, ...] | None = None
