"""One chunk of a cohort: its plan (rates, steps, noise) and each step's random draws.

A client trained one at a time (:class:`~fedguard.privacy.DPTrainer`) draws, per step,
its Poisson sampling mask over its n examples and then one N(0, (sigma C)^2) tensor per
parameter, from its own generator. :class:`ChunkDraws` makes exactly these draws for
every client of a chunk, client after client (the generators cannot be batched), and
does everything else once for the chunk: the chunk's data are concatenated once, every
client's uniforms land in one buffer, and one comparison, one gather and one scatter
build the padded ``[K, B, ...]`` batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedguard._checks import real as _real

from .dpsgd import steps_per_epoch

__all__ = ["ChunkDraws", "ChunkPlan", "Hyper", "NoiseBuffers"]


@dataclass(frozen=True)
class Hyper:
    """The checked hyperparameters of one cohort's training."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    clip: float
    mu: float
    class_weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ChunkPlan:
    """Each client's record count, sampling rate, steps, expected batch and noise."""

    sizes: list[int]
    rates: list[float]
    steps: list[int]
    expected: torch.Tensor  # max(1, round(q n)) per client: the divisor of its sum
    sigmas: list[float]

    @classmethod
    def of(
        cls, *, sizes: list[int], noise: Sequence[float], h: Hyper, device: torch.device
    ) -> ChunkPlan:
        per_epoch = [steps_per_epoch(num_examples=n, batch_size=h.batch_size) for n in sizes]
        rates = [1.0 / p for p in per_epoch]
        expected = torch.tensor(
            [max(1, round(q * n)) for q, n in zip(rates, sizes, strict=True)],
            dtype=torch.float32,
            device=device,
        )
        # Each distinct value checked once (a cohort's clients mostly share one), keyed by
        # type too: True == 1.0 hashes alike, and a bool must be refused wherever it stands.
        checked: dict[tuple[type, object], float] = {}
        sigmas = []
        for s in noise:
            sigma = checked.get((type(s), s))
            if sigma is None:
                sigma = _real(
                    "noise_multiplier", s, allowed="a finite number > 0", ok=lambda v: v > 0
                )
                checked[(type(s), s)] = sigma
            sigmas.append(sigma)
        return cls(
            sizes=sizes,
            rates=rates,
            steps=[h.epochs * p for p in per_epoch],
            expected=expected,
            sigmas=sigmas,
        )


class NoiseBuffers:
    """Each parameter's stacked noise buffer ``[K, *shape]`` and every client's row of it.

    Made once per chunk size and reused by every step of every round: the row views cost
    ~1.4 us each, at 700 clients and 4 parameters a tenth of an MLP round. A step
    overwrites every row (zeros for finished clients) before anything reads it.
    """

    def __init__(self, *, k: int, shapes: Sequence[tuple[int, ...]], device: torch.device) -> None:
        self.k, self.shapes, self.device = k, list(shapes), device
        self.buffers = [torch.empty((k, *shape), device=device) for shape in self.shapes]
        self.rows = [buffer.unbind(0) for buffer in self.buffers]

    def fits(self, *, k: int, shapes: Sequence[tuple[int, ...]], device: torch.device) -> bool:
        return (self.k, self.shapes, self.device) == (k, list(shapes), device)


class ChunkDraws:
    """Each step's padded batch, validity mask and noise for one chunk of clients."""

    def __init__(
        self,
        *,
        xs: Sequence[torch.Tensor],
        ys: Sequence[torch.Tensor],
        generators: Sequence[torch.Generator],
        plan: ChunkPlan,
        shapes: Sequence[tuple[int, ...]],
        clip: float,
        device: torch.device,
        noise: NoiseBuffers | None = None,
    ) -> None:
        self.k, self.device = len(xs), device
        if noise is None or not noise.fits(k=self.k, shapes=shapes, device=device):
            noise = NoiseBuffers(k=self.k, shapes=shapes, device=device)
        self.noise = noise
        self.generators, self.plan, self.shapes, self.clip = generators, plan, shapes, clip
        self.x = torch.cat(list(xs))
        self.y = torch.cat(list(ys)).long()
        sizes = torch.tensor(plan.sizes, device=device)
        self.owner = torch.repeat_interleave(torch.arange(self.k, device=device), sizes)
        rates = torch.tensor(plan.rates, dtype=torch.float32, device=device)
        self.rate = torch.repeat_interleave(rates, sizes)  # each example's client's q
        self.bounds = [0]
        for n in plan.sizes:
            self.bounds.append(self.bounds[-1] + n)
        self.uniforms = torch.empty(self.bounds[-1], device=device)

    def step(
        self, active: Sequence[bool]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One step's samples (padded to the largest), validity mask and noise per param.

        Each active client draws from its own generator exactly as ``DPTrainer`` does:
        n uniforms (example i is sampled when its uniform is below q), then one noise
        tensor per parameter. Finished clients draw nothing (their generators are not
        advanced), sample nothing and get zero noise.
        """
        k, dev, u = self.k, self.device, self.uniforms
        noise, rows = self.noise.buffers, self.noise.rows  # rows[j][i]: client i's slice
        for i, (g, sigma, on) in enumerate(
            zip(self.generators, self.plan.sigmas, active, strict=True)
        ):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            if not on:
                u[lo:hi] = 2.0  # above any rate: never sampled
                for row in rows:
                    row[i].zero_()
                continue
            u[lo:hi].uniform_(generator=g)  # torch.rand's numbers
            std = sigma * self.clip
            for row in rows:
                # Into the stacked buffer: the same numbers as DPTrainer's own draw
                # (torch.normal(..., out=) is the same kernel with ~1 us more dispatch).
                row[i].normal_(0.0, std, generator=g)
        chosen = (u < self.rate).nonzero(as_tuple=True)[0]
        owner = self.owner[chosen]
        counts = torch.bincount(owner, minlength=k)
        width = int(counts.max()) if chosen.numel() else 0
        # Position of each chosen example within its client's batch, in data order.
        pos = torch.arange(chosen.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[owner]
        xb = torch.zeros((k, width, *self.x.shape[1:]), dtype=self.x.dtype, device=dev)
        yb = torch.zeros((k, width), dtype=torch.long, device=dev)
        valid = torch.zeros((k, width), device=dev)
        xb[owner, pos] = self.x[chosen]
        yb[owner, pos] = self.y[chosen]
        valid[owner, pos] = 1.0
        return xb, yb, valid, noise
