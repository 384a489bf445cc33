"""How :class:`~fedguard.privacy.DPTrainer` gets the clipped sum of per-sample gradients.

Every mode computes the same thing, the sum over the batch of each example's gradient
clipped to L2 norm ``max_grad_norm`` (a test checks them against each other with noise
0), and hands it to Opacus's optimizer, which adds N(0, (sigma * max_grad_norm)^2) noise
and divides by the expected batch size. They differ in cost:

``hooks``
    Opacus's ``GradSampleModule``: forward/backward hooks materialise every example's
    gradient (batch x parameters floats). Cheapest for small batches and small models
    (few, small tensor operations per step).
``functorch``
    The same module computing per-sample gradients with ``torch.func`` (vmap) for every
    layer.
``ew``
    PyTorch's expanded weights (``call_for_per_sample_grads``), through Opacus's
    ``GradSampleModuleExpandedWeights``: per-sample gradients inside autograd; fast for
    convolutions.
``ghost``
    Opacus's ghost clipping (Li et al. 2022; Bu et al. 2023): per-sample gradient NORMS
    without per-sample gradients for linear layers (other layers: per-sample gradients
    one layer at a time), then a second backward pass of the loss reweighted by each
    example's clipping factor, which yields the clipped sum directly. Memory O(batch)
    instead of O(batch x parameters).
``bk``
    Book-keeping clipping (Bu et al. 2023, "Differentially Private Optimization on Large
    Model at Small Cost"): ONE backward pass, for the gradients of each trainable layer's
    OUTPUT only (no parameter gradients), with each layer's input recorded on the way
    forward. For a linear layer on flat inputs, example i's gradient is the outer product
    g_i a_i^T: its squared norm is |g_i|^2 |a_i|^2 (+ |g_i|^2 for the bias) and the
    clipped sum is one matrix product (c * g)^T a, with no per-sample gradient (ghost
    norm). Any other layer (convolutions, GroupNorm) gets its per-sample gradients from
    Opacus's own per-layer functions, one layer at a time. No second backward pass.

``bench-sim`` times them (``benchmarks.bench_dpstep``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - conventional alias
from opacus.grad_sample import (
    GradSampleModule,
    GradSampleModuleExpandedWeights,
    GradSampleModuleFastGradientClipping,
)
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from torch import nn

from fedguard.errors import ConfigError

__all__ = ["GRAD_SAMPLE_MODES", "PerSampleGradients"]

GRAD_SAMPLE_MODES: tuple[str, ...] = ("auto", "hooks", "functorch", "ew", "ghost", "bk")
"""Per-sample gradient modes :class:`~fedguard.privacy.DPTrainer` supports (see above).
``auto`` (the default) is ``bk`` where every trainable layer is linear or has an Opacus
grad sampler (all of fedguard's models), else ``hooks``: ``bk`` was the fastest measured
on 2 CPU cores for fedguard's models at the batch sizes of simulations (~16) and of
centralised training (256)."""

# Opacus sets these on parameters during a step; none may survive into the next client.
STEP_ATTRS = ("grad_sample", "summed_grad", "_current_grad_sample", "_norm_sample")


class PerSampleGradients:
    """One model wrapped once for ``mode``; per step, the clipped gradient sum.

    Per-sample gradients of the SUM of losses are the plain per-example gradients; the
    optimizer divides the noisy sum by the expected batch size itself.
    """

    def __init__(self, *, model: nn.Module, mode: str) -> None:
        if mode == "auto":
            mode = "hooks" if _unsupported(model) else "bk"
        self.mode = mode
        # Per-class loss weights in (0, 1] (fedguard.privacy.class_weights), set by the
        # trainer for one call: applied before clipping, so the bound C still holds.
        self.class_weight: torch.Tensor | None = None
        self._gsm: nn.Module
        self._bk: _BookKeeping | None = None
        if mode == "bk":
            self._bk = _BookKeeping(model)
            self._gsm = model
        elif mode == "ew":
            # No hooks: expanded weights exist only inside this module's forward.
            self._gsm = GradSampleModuleExpandedWeights(
                model, batch_first=True, loss_reduction="sum"
            )
        elif mode == "ghost":
            self._gsm = GradSampleModuleFastGradientClipping(
                model, batch_first=True, loss_reduction="sum", strict=True, use_ghost_clipping=True
            )
        else:
            self._gsm = GradSampleModule(
                model,
                batch_first=True,
                loss_reduction="sum",
                strict=True,
                force_functorch=mode == "functorch",
            )
        # Outside training the module must behave like a plain one (evaluation with grad
        # on must not collect activations or per-sample gradients).
        self.hooks(enabled=False)

    def hooks(self, *, enabled: bool) -> None:
        """Switch Opacus's hooks on (training) or off (anything else)."""
        if self._bk is not None:
            self._bk.active = enabled
        if isinstance(self._gsm, GradSampleModule | GradSampleModuleFastGradientClipping):
            if enabled:
                self._gsm.enable_hooks()
            else:
                self._gsm.disable_hooks()

    def optimizer(
        self,
        *,
        params: list[nn.Parameter],
        lr: float,
        momentum: float,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        generator: torch.Generator,
        secure_mode: bool = False,
    ) -> DPOptimizer:
        """Plain SGD on the noisy mean: clip (unless the backward did), sum, noise, scale.

        ``secure_mode``: Opacus's floating-point defence for the noise, from ``generator``
        (see :mod:`fedguard.privacy.dpsgd`).
        """
        for p in params:
            # GradSampleModule's hooks expect the attribute (Opacus adds it to Parameter).
            p.grad_sample = None  # type: ignore[attr-defined]
        # ghost and bk leave the clipped sum in p.grad: that optimizer only adds noise.
        kind = _NoiseOnlyOptimizer if self.mode in ("ghost", "bk") else DPOptimizer
        if isinstance(self._gsm, GradSampleModuleFastGradientClipping):
            self._gsm.max_grad_norm = max_grad_norm  # its clipping factors use it
        if self._bk is not None:
            self._bk.max_grad_norm = max_grad_norm
        return kind(
            optimizer=torch.optim.SGD(params, lr=lr, momentum=momentum),
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",  # divide the noisy sum by expected_batch_size
            generator=generator,
            secure_mode=secure_mode,
        )

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward and backward on one batch; returns the summed loss (not private).

        Afterwards the optimizer's ``step`` finds what it needs: per-sample gradients
        (``hooks``, ``functorch``, ``ew``) or the clipped sum in ``p.grad`` (``ghost``,
        ``bk``).
        """
        if self._bk is not None:
            return self._bk.backward(x, y, weight=self.class_weight)
        logits = self._gsm(x)
        if not isinstance(self._gsm, GradSampleModuleFastGradientClipping):
            loss = F.cross_entropy(logits, y, weight=self.class_weight, reduction="sum")
            loss.backward()
            return float(loss.detach())
        losses = F.cross_entropy(logits, y, weight=self.class_weight, reduction="none")
        losses.sum().backward(retain_graph=True)  # hooks: each example's gradient norm
        factors = self._gsm.get_clipping_coef()  # min(1, C / norm), no gradient
        for p in self._gsm.trainable_parameters:
            p.grad = None  # drop the unclipped sum of the first pass
        self.hooks(enabled=False)
        try:
            (factors * losses).sum().backward()  # = sum of clipped per-example gradients
        finally:
            self.hooks(enabled=True)
        return float(losses.detach().sum())

    def empty_batch(self, params: list[nn.Parameter]) -> None:
        """Nothing sampled: the clipped sum is 0; the optimizer still adds the noise."""
        for p in params:
            if self.mode in ("ghost", "bk"):
                p.grad = torch.zeros_like(p)
            else:
                empty = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
                p.grad_sample = empty  # type: ignore[attr-defined]


class _NoiseOnlyOptimizer(DPOptimizerFastGradientClipping):
    """Opacus's optimizer for an already clipped ``p.grad``, without its deep copies.

    Opacus's ``accumulate`` deep-copies every gradient into ``summed_grad`` each step
    (~60 us a step for four tensors, a third of a small client's DP step); a plain
    ``clone`` stores the same values. Noise, scaling and the step are Opacus's.
    """

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad)
            else:
                p.summed_grad = p.grad.detach().clone()


def _unsupported(model: nn.Module) -> list[str]:
    """Types of trainable layers ``bk`` cannot clip: neither linear nor known to Opacus."""
    return sorted(
        {
            type(m).__name__
            for m in _trainable_layers(model)
            if not isinstance(m, nn.Linear) and type(m) not in GradSampleModule.GRAD_SAMPLERS
        }
    )


def _trainable_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]


def _all_trainable(module: nn.Module) -> bool:
    return all(p.requires_grad for p in module.parameters(recurse=False))


_Record = tuple[nn.Module, torch.Tensor, torch.Tensor]


class _BookKeeping:
    """``bk`` mode: forward hooks on every trainable layer record its input and output."""

    def __init__(self, model: nn.Module) -> None:
        self.active = False
        self.max_grad_norm = 1.0
        self._records: list[_Record] = []
        other = _unsupported(model)
        if other:
            raise ConfigError(
                "grad_sample_mode: expected a model whose trainable layers are linear or "
                f"have an Opacus grad sampler for bk, got {', '.join(other)} (use hooks, ew "
                "or ghost)"
            )
        self._layers = _trainable_layers(model)
        self._model = model
        # Opacus's marker: a second DPTrainer (of any mode) on this model is refused.
        handles = [m.register_forward_hook(self._record) for m in self._layers]
        model.autograd_grad_sample_hooks = handles  # type: ignore[assignment]

    def _record(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if not self.active:
            return
        if any(m is module for m, _, _ in self._records):
            raise ConfigError(
                "grad_sample_mode: expected each trainable layer used once per forward for "
                f"bk, got {type(module).__name__} used twice (use hooks, ew or ghost)"
            )
        self._records.append((module, inputs[0].detach(), output))

    def backward(
        self, x: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None = None
    ) -> float:
        self._records.clear()
        try:
            losses = F.cross_entropy(self._model(x), y, weight=weight, reduction="none")
            outputs = [z for _, _, z in self._records]
            # Gradients of the summed loss w.r.t. each layer's output (row i: example i's),
            # and no parameter gradient at all.
            grads = torch.autograd.grad(losses.sum(), outputs)
            sq = torch.zeros(x.shape[0], dtype=losses.dtype, device=losses.device)
            per_sample: list[dict[nn.Parameter, torch.Tensor] | None] = []
            for (m, a, _), g in zip(self._records, grads, strict=True):
                if isinstance(m, nn.Linear) and a.ndim == 2 and _all_trainable(m):
                    gg = (g * g).sum(1)  # |g_i a_i^T|^2 = |g_i|^2 |a_i|^2; bias: |g_i|^2
                    sq += gg * ((a * a).sum(1) + (1.0 if m.bias is not None else 0.0))
                    per_sample.append(None)
                    continue
                # Any other layer: its per-sample gradients (Opacus's own functions), one
                # layer at a time, freed after the clipped sum.
                found = GradSampleModule.GRAD_SAMPLERS[type(m)](m, [a], g)
                samples = {p: t for p, t in found.items() if p.requires_grad}
                if set(map(id, samples)) != {id(p) for p in m.parameters() if p.requires_grad}:
                    raise ConfigError(
                        f"grad_sample_mode: Opacus's grad sampler for {type(m).__name__} "
                        "misses some of its trainable parameters (use hooks)"
                    )
                for t in samples.values():
                    sq += t.reshape(t.shape[0], -1).pow(2).sum(1)
                per_sample.append(samples)
            # Opacus's clipping factor, to the last epsilon: min(1, C / (norm + 1e-6)).
            factors = (self.max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            used = {id(m) for m, _, _ in self._records}
            for m in self._layers:  # a layer this forward did not use: clipped sum 0
                if id(m) not in used:
                    for p in m.parameters(recurse=False):
                        p.grad = torch.zeros_like(p)
            for (m, a, _), g, layer_samples in zip(self._records, grads, per_sample, strict=True):
                if layer_samples is not None:
                    for p, t in layer_samples.items():
                        p.grad = torch.einsum("i,i...->...", factors, t)
                    continue
                weighted = g * factors[:, None]
                m.weight.grad = weighted.T @ a
                if m.bias is not None:
                    m.bias.grad = weighted.sum(0)
            return float(losses.detach().sum())
        finally:
            self._records.clear()
