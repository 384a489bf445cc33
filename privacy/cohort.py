"""DP-SGD for many clients at once: the same algorithm as :class:`~fedguard.privacy.DPTrainer`,
every client's copy of the model trained in one vectorised pass.

A simulation of hundreds of small clients spends most of its time in per-client, per-step
overhead when clients train one after another (a DP-SGD step of a small MLP on 16
examples is ~100 tensor operations of microseconds each). :class:`CohortDPTrainer` stacks
K clients' weights and runs each step for all of them with one set of batched operations:
layer by layer for a Sequential of known layers (:mod:`fedguard.privacy.stacked`), by
``torch.func.vmap`` for any other model without buffers (:mod:`fedguard.privacy.vmapped`).
Each step's per-client draws are in :mod:`fedguard.privacy.cohort_draws`.

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
from .cohort_draws import ChunkDraws, ChunkPlan, Hyper, NoiseBuffers
from .dpsgd import DPTrainResult, check_training_inputs
from .stacked import StackedSequential, stacked_problems
from .vmapped import VmappedModel, vmapped_problems

__all__ = ["ENGINES", "CohortClient", "CohortDPTrainer", "CohortResult"]

ENGINES = ("auto", "stacked", "vmap")
"""How a cohort is batched: ``stacked`` (:mod:`fedguard.privacy.stacked`, Sequentials of
known layers), ``vmap`` (:mod:`fedguard.privacy.vmapped`, any model without buffers) or
``auto``: stacked where the model allows, else vmap."""


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
        Any model without buffers or frozen parameters. An ``nn.Sequential`` of Linear,
        Conv2d, GroupNorm and parameter-free layers is stacked
        (:func:`~fedguard.privacy.stacked.stacked_problems` says why another is not);
        another is vmapped (:mod:`fedguard.privacy.vmapped`; :meth:`probe` tells whether
        its forward pass allows it). Only its architecture and device are used.
    max_floats : int
        Rough bound on the floats one step of one chunk may hold (per-example gradients of
        convolutions and activations): sets how many clients train at once.
    engine : str
        One of :data:`ENGINES`.

    Raises
    ------
    ConfigError
        The model can be neither stacked nor vmapped; every problem is listed.
    """

    def __init__(
        self, *, model: nn.Module, max_floats: int = 1 << 25, engine: str = "auto"
    ) -> None:
        if engine not in ENGINES:
            raise invalid("engine", allowed=ENGINES, got=engine)
        stack_problems = stacked_problems(model)
        vmap_problems = vmapped_problems(model)
        self._stacked: StackedSequential | None = None
        self._vmapped: VmappedModel | None = None
        if engine in ("auto", "stacked") and not stack_problems:
            self._stacked = StackedSequential(model)
        elif engine in ("auto", "vmap") and not vmap_problems:
            self._vmapped = VmappedModel(model)
        else:
            why = [f"stacked: {'; '.join(stack_problems) or 'not asked for'}"]
            why.append(f"vmap: {'; '.join(vmap_problems) or 'not asked for'}")
            raise ConfigError(
                f"model: expected a model without buffers or frozen parameters (vmap) or an "
                f"nn.Sequential of Linear, Conv2d, GroupNorm and parameter-free layers "
                f"(stacked) for cohort training, got {' / '.join(why)}"
            )
        self.engine = "stacked" if self._stacked is not None else "vmap"
        params = list(model.parameters())
        self.device = params[0].device
        self._shapes = [tuple(p.shape) for p in params]
        self._max_floats = _int("max_floats", max_floats, minimum=1)
        # Floats one example costs in a step beyond its activations (forward and
        # backward): what stacked clipping holds (StackedSequential.held_floats, from a
        # probe) or, vmapped, one per-example copy of every parameter and its clipped copy.
        self._per_example = 2 * sum(math.prod(s) for s in self._shapes)
        self._model = model
        self._noise: NoiseBuffers | None = None

    def probe(self, example: torch.Tensor) -> None:
        """Compute one client's step on ``example`` ``[1, ...]`` (ConfigError: it cannot).

        A vmapped model's forward pass may use what ``torch.func`` cannot batch; only
        running it tells.
        """
        if self._vmapped is None:
            return
        try:
            self._vmapped.probe(example.to(self.device))
        except Exception as exc:  # whatever the model's code raises under vmap
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(
                f"model: expected a forward pass torch.func.vmap can batch for cohort "
                f"training, got {type(exc).__name__}: {first[:200]}"
            ) from exc

    def _chunk_size(self, example_shape: tuple[int, ...], batch: float) -> int:
        probe = torch.zeros((1, 1, *example_shape), device=self.device)
        with torch.no_grad():
            if self._stacked is not None:
                weights = [torch.zeros((1, *s), device=self.device) for s in self._shapes]
                _, records = self._stacked.forward(weights, probe)
                activations = sum(r.z.numel() + r.a.numel() for r in records)
                held = self._stacked.held_floats(records)
            else:
                activations = _activation_floats(self._model, probe[0])
                held = self._per_example
        per_example = 2 * activations + held
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
        hyper = Hyper(
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
        # A step's padded batch is about the largest expected one (q n <= batch_size),
        # half again for Poisson's spread.
        largest = max(min(int(c.x.shape[0]), batch_size) for c in clients)
        size = self._chunk_size(tuple(clients[0].x.shape[1:]), largest * 1.5 + 2)
        for i in range(0, len(clients), size):
            yield from self._train_chunk(first, clients[i : i + size], hyper)

    def _train_chunk(
        self, start: list[torch.Tensor], chunk: Sequence[CohortClient], h: Hyper
    ) -> Iterator[CohortResult]:
        k, dev = len(chunk), self.device
        plan = ChunkPlan.of(
            sizes=[int(c.x.shape[0]) for c in chunk],
            noise=[c.noise_multiplier for c in chunk],
            h=h,
            device=dev,
        )
        # Write-ahead: every client's release is counted (and persisted by the caller)
        # before any gradient of its data is computed.
        events: dict[tuple[float, float, int], GaussianEvent] = {}  # mostly one per chunk
        for c, sigma, q, s in zip(chunk, plan.sigmas, plan.rates, plan.steps, strict=True):
            event = events.get((sigma, q, s))
            if event is None:
                event = events[(sigma, q, s)] = GaussianEvent(
                    noise_multiplier=sigma, sample_rate=q, steps=s
                )
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
        counted = torch.zeros(k, dtype=torch.int64, device=dev)
        draws = ChunkDraws(
            xs=[c.x for c in chunk],
            ys=[c.y for c in chunk],
            generators=[c.generator for c in chunk],
            plan=plan,
            shapes=self._shapes,
            clip=h.clip,
            device=dev,
            noise=self._noise,
        )
        self._noise = draws.noise  # reused by the next chunk of the same size
        for step in range(max(plan.steps)):
            active = [step < s for s in plan.steps]
            xb, yb, valid, noise = draws.step(active)
            if xb.shape[1] > 0:
                sums, losses = self._clipped_sums(params, xb, yb, valid, h)
                loss_sum += losses.detach().sum(1).double()
                counted += valid.sum(1).long()
            else:  # nobody sampled an example: noise-only steps
                sums = [torch.zeros_like(p) for p in params]
            with torch.no_grad():
                buffers = self._descend(params, sums, noise, plan, active, h, buffers, anchor)
        arrays = [p.detach().cpu().numpy() for p in params]
        examples = counted.tolist()
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
        h: Hyper,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each client's sum of clipped per-example gradients, and its per-example losses."""
        weight = (
            None
            if h.class_weights is None
            else torch.tensor(h.class_weights, dtype=torch.float32, device=self.device)
        )
        if self._vmapped is not None:
            return self._vmapped.clipped_sums(
                params, xb, yb, valid=valid, max_grad_norm=h.clip, class_weight=weight
            )
        stacked = self._stacked
        if stacked is None:  # cannot happen: __init__ sets one of the two
            raise RuntimeError("cohort trainer without an engine")
        for p in params:
            p.requires_grad_(True)
        logits, records = stacked.forward(params, xb)
        losses = (
            F.cross_entropy(
                logits.flatten(0, 1), yb.flatten(), weight=weight, reduction="none"
            ).view(valid.shape)
            * valid
        )
        grads = torch.autograd.grad(losses.sum(), [r.z for r in records])
        sums, _ = stacked.clipped_sums(records, grads, max_grad_norm=h.clip, valid=valid)
        return sums, losses

    def _descend(
        self,
        params: list[torch.Tensor],
        sums: list[torch.Tensor],
        noise: list[torch.Tensor],
        plan: ChunkPlan,
        active: list[bool],
        h: Hyper,
        buffers: list[torch.Tensor] | None,
        anchor: list[torch.Tensor],
    ) -> list[torch.Tensor] | None:
        """One SGD step of the active clients: noise, average, FedProx, momentum; the
        momentum buffers after it."""
        for p in params:
            p.requires_grad_(False)
        # In place, two passes over each stacked tensor where there were five: the noise
        # buffer becomes the gradient (these tensors are K copies of the model).
        inverse = 1.0 / plan.expected
        grads_now = []
        for i, (p, summed, z) in enumerate(zip(params, sums, noise, strict=True)):
            g = z.add_(summed).mul_(inverse.view(-1, *([1] * (p.ndim - 1))))
            if h.mu > 0:
                g.add_(p - anchor[i], alpha=h.mu)
            grads_now.append(g)
        if h.momentum > 0:
            if buffers is None:
                buffers = [g.clone() for g in grads_now]
            else:
                for b, g in zip(buffers, grads_now, strict=True):
                    b.mul_(h.momentum).add_(g)
            grads_now = buffers
        # Finished clients step by 0 (their noise rows are zeros, their buffers unused).
        step = torch.tensor(active, dtype=torch.float32, device=self.device) * h.lr
        for p, g in zip(params, grads_now, strict=True):
            p.addcmul_(g, step.view(-1, *([1] * (p.ndim - 1))), value=-1.0)
        return buffers


def _activation_floats(model: nn.Module, example: torch.Tensor) -> int:
    """Floats of every leaf module's output for one example ``[1, ...]``."""
    total = 0

    def count(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        model(example)
    except Exception:  # probe() says why; size a chunk by the parameters alone
        total = 0
    finally:
        for hook in hooks:
            hook.remove()
    return total
