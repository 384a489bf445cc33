"""DP-SGD training of one model for any number of clients (Opacus underneath).

:class:`DPTrainer` wraps the model once for per-sample gradient clipping (Opacus's
``GradSampleModule`` or book-keeping ghost clipping: :mod:`fedguard.privacy.persample`)
and reuses the wrapping for every client: load that client's
weights into :attr:`DPTrainer.module`, restore its accountant, call :meth:`DPTrainer.train`.
Wrapping per client would fail (Opacus: "Trying to add hooks twice to the same model") and
cost far more than the training itself for small models.

One call of :meth:`~DPTrainer.train` is one Poisson-subsampled Gaussian event of
``epochs * ceil(n / batch_size)`` steps at sample rate ``1 / ceil(n / batch_size)``, the
same accounting as Opacus's ``DPDataLoader``. The event is composed into the caller's
accountant, and the caller's ``before_training`` hook persists it, BEFORE the first
gradient step (write-ahead): a crash during training leaves the epsilon counted as spent.

Each step samples every example independently with probability q, clips each example's
gradient to ``max_grad_norm``, sums, adds N(0, (noise_multiplier * max_grad_norm)^2) noise
and divides by the expected batch size q*n (Opacus's ``DPOptimizer``). An empty sample
still releases a noisy (noise-only) step, as the analysis assumes.

Randomness: sampling and noise come only from the ``torch.Generator`` the caller passes;
the global RNGs are never touched. Noise is drawn in floating point from that generator's
Mersenne Twister, so it is only as secret as the generator's state: torch keeps only 32
bits of a seed, and deployed nodes pass :func:`fedguard.privacy.rng.os_entropy_generator`
(the whole state from the OS) instead of a seeded generator.

``secure_mode=True`` (deployed nodes) is Opacus's defence against floating-point attacks
on Gaussian noise (Mironov 2012 for Laplace; Jin et al. 2022, arXiv:2112.05307, for
Opacus's Gaussian): every noise tensor is the sum of four independent ``N(0, std^2)``
draws halved (same distribution; one draw is thrown away first), after Holohan and
Braghin 2021 (arXiv:2107.10138, section 5.1), so that a released value no longer pins
down the one float the generator produced (Opacus puts the attack's cost at ~2^159
instead of ~2^53). It needs no ``torchcsprng``: only Opacus's ``PrivacyEngine`` uses
that, for its generator, and fedguard passes its own. What it does not do: make the
generator cryptographic (MT19937 outputs are predictable from enough of them; none is
released raw), remove timing side channels, or make the sum exact (it is float32
arithmetic, a heuristic defence, not a proof). It costs four noise draws per parameter
per step instead of one. Simulation keeps it off (the default): seeded runs
stay reproducible, and :class:`fedguard.privacy.cohort.CohortDPTrainer` draws exactly
the numbers ``DPTrainer`` draws without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedguard._checks import integer as _int
from fedguard._checks import real as _real
from fedguard._record_reads import dataset_size
from fedguard.errors import ConfigError, invalid

from .accountants import Accountant, GaussianEvent
from .class_weights import check_class_weights
from .model_check import model_problems
from .persample import GRAD_SAMPLE_MODES, STEP_ATTRS, PerSampleGradients
from .sampled_batches import poisson_steps

__all__ = [
    "GRAD_SAMPLE_MODES",
    "DPTrainResult",
    "DPTrainer",
    "sample_rate_for",
    "steps_per_epoch",
]


@dataclass(frozen=True)
class DPTrainResult:
    """What one :meth:`DPTrainer.train` call did.

    ``mean_loss`` and ``examples`` are computed on the private data and are NOT
    differentially private: release them only through a DP mechanism (or not at all).
    ``mean_loss`` is the mean cross-entropy over all sampled examples before each update,
    0.0 when no example was sampled.
    """

    steps: int
    examples: int
    mean_loss: float
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float


def steps_per_epoch(*, num_examples: int, batch_size: int) -> int:
    """``ceil(num_examples / batch_size)``: Opacus's ``DPDataLoader`` length."""
    n = _int("num_examples", num_examples, minimum=1)
    b = _int("batch_size", batch_size, minimum=1)
    return -(-n // b)


def sample_rate_for(*, num_examples: int, batch_size: int) -> float:
    """``1 / steps_per_epoch``: Opacus's Poisson sample rate for this batch size."""
    return 1.0 / steps_per_epoch(num_examples=num_examples, batch_size=batch_size)


def check_training_inputs(
    *,
    x: object,
    y: object,
    accountant: object,
    generator: object,
    device: torch.device,
) -> None:
    """One client's data, accountant and generator, as DP-SGD on ``device`` needs them."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("x, y: expected torch.Tensor")
    if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise invalid(
            "x, y",
            allowed="non-empty tensors [n, ...] and [n] with the same n",
            got=(tuple(x.shape), tuple(y.shape)),
        )
    if y.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise invalid("y", allowed="integer class labels", got=str(y.dtype))
    if x.device != device or y.device != device:
        raise invalid(
            "x, y",
            allowed=f"tensors on the model's device {device}",
            got=(str(x.device), str(y.device)),
        )
    check_accountant_and_generator(accountant=accountant, generator=generator, device=device)


def check_accountant_and_generator(
    *, accountant: object, generator: object, device: torch.device
) -> None:
    """The accountant and generator of one client, as DP-SGD on ``device`` needs them."""
    if not isinstance(accountant, Accountant):
        raise TypeError(f"accountant: expected an Accountant, got {type(accountant).__name__}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise invalid(
            "generator",
            allowed=f"a torch.Generator on the model's device type {device.type} (Opacus "
            "draws the noise on the parameters' device)",
            got=str(generator.device),
        )


class DPTrainer:
    """Wraps a model ONCE (opacus GradSampleModule) and trains any number of clients with DP-SGD.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier returning logits. Must pass Opacus's ``ModuleValidator`` (no
        BatchNorm and the like, which mix examples within a batch and void per-sample DP).
    grad_sample_mode : str
        One of :data:`GRAD_SAMPLE_MODES` (:mod:`fedguard.privacy.persample`): all compute
        the same clipped sum at different costs. ``auto``: ``bk`` (book-keeping
        clipping, one backward pass) where it applies (all of fedguard's models), else
        ``hooks``.
    secure_mode : bool
        Opacus's floating-point defence for the noise (see the module docstring), drawn
        from the caller's generator. On for deployed nodes; off (the default) in
        simulation, which must stay reproducible and match the vectorised trainer.

    Raises
    ------
    ConfigError
        The model cannot be trained with per-sample gradients (every problem listed), it
        is already wrapped by another trainer, or the mode is unknown.
    """

    def __init__(
        self, *, model: nn.Module, grad_sample_mode: str = "auto", secure_mode: bool = False
    ) -> None:
        if not isinstance(secure_mode, bool):
            raise invalid("secure_mode", allowed="True or False", got=secure_mode)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise invalid("grad_sample_mode", allowed=GRAD_SAMPLE_MODES, got=grad_sample_mode)
        problems = model_problems(model)
        if problems:
            raise ConfigError(
                f"model: expected a module Opacus can train with per-sample gradients, got "
                f"{len(problems)} problem(s): {'; '.join(problems)} "
                "(opacus.validators.ModuleValidator.fix replaces e.g. BatchNorm with GroupNorm)"
            )
        if hasattr(model, "autograd_grad_sample_hooks"):
            raise ConfigError(
                "model: expected a module not yet wrapped by Opacus, got one that already has "
                "per-sample-gradient hooks (reuse the existing DPTrainer instead of building "
                "another)"
            )
        self._per_sample = PerSampleGradients(model=model, mode=grad_sample_mode)
        self._model = model
        self._secure_mode = secure_mode
        self._clear()

    @property
    def grad_sample_mode(self) -> str:
        """How per-sample gradients are clipped (:data:`GRAD_SAMPLE_MODES`)."""
        return self._per_sample.mode

    @property
    def secure_mode(self) -> bool:
        """Whether noise is drawn with Opacus's floating-point defence."""
        return self._secure_mode

    @property
    def module(self) -> nn.Module:
        """The original (unwrapped) module, to load or read weights."""
        return self._model

    def train(
        self,
        *,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        data: Any = None,
        read_ahead: bool = False,
        epochs: int,
        batch_size: int,
        lr: float,
        momentum: float = 0.0,
        noise_multiplier: float,
        max_grad_norm: float,
        accountant: Accountant,
        generator: torch.Generator,
        before_training: Callable[[GaussianEvent], None] | None = None,
        prox_mu: float = 0.0,
        class_weights: Sequence[float] | None = None,
    ) -> DPTrainResult:
        """Train :attr:`module` in place with DP-SGD on one client's data.

        Parameters
        ----------
        x, y : torch.Tensor
            Features ``[n, ...]`` and integer class labels ``[n]``, on the model's device.
        data : map-style data set, optional
            Instead of ``x, y``: ``data[i] -> (x, y)``, ``len(data)`` records (a torch
            ``Dataset``, e.g. :mod:`fedguard.task.lazy_data`). Only each step's sampled
            records are read; same sampling, noise, accounting and (for a data set
            wrapping ``x, y``) weights as the tensors. ``read_ahead``: read the next
            step's records while this one trains (same epsilon, other draw order:
            :mod:`fedguard.privacy.sampled_batches`).
        epochs, batch_size : int
            Steps = ``epochs * ceil(n / batch_size)``; sample rate ``1 / ceil(n / batch_size)``.
        lr, momentum : float
            Plain SGD on the noisy gradient.
        noise_multiplier, max_grad_norm : float
            Noise std is ``noise_multiplier * max_grad_norm``; per-example gradients are
            clipped to L2 norm ``max_grad_norm``.
        accountant : Accountant
            This client's accountant; the event is composed into it before training.
        generator : torch.Generator
            The only randomness source (Poisson sampling and noise), on the model's device
            type (``torch.Generator(device="cuda")`` for a model on a GPU).
        before_training : callable, optional
            Called once with the composed event before the first step; persist the
            accountant here. If it raises, no training happens (the event stays composed).
        prox_mu : float
            FedProx (Li et al. 2020): adds ``(prox_mu / 2) * ||w - w_start||^2`` to the
            local objective, ``w_start`` being the weights at the call (the global model).
            Its gradient is added after clipping and noise; 0 turns it off.
        class_weights : sequence of float, optional
            Public per-class loss weights in ``(0, 1]``, applied to each example's loss
            before its gradient is clipped (:mod:`fedguard.privacy.class_weights`): the
            clipping norm, the noise and epsilon are unchanged. ``mean_loss`` is then
            the weighted loss.

        Returns
        -------
        DPTrainResult
        """
        params = [p for p in self._model.parameters() if p.requires_grad]
        if not params:
            raise invalid("model", allowed="a module with trainable parameters", got="none")
        device = params[0].device
        if data is None:
            check_training_inputs(
                x=x, y=y, accountant=accountant, generator=generator, device=device
            )
            n = int(x.shape[0])  # type: ignore[union-attr]  # checked: a tensor
        elif x is not None or y is not None:
            raise ValueError("DPTrainer.train: pass the tensors x, y or a data set, not both")
        else:
            n = dataset_size(data)
            check_accountant_and_generator(
                accountant=accountant, generator=generator, device=device
            )
        if not isinstance(read_ahead, bool):
            raise invalid("read_ahead", allowed="True or False", got=read_ahead)
        n_epochs = _int("epochs", epochs, minimum=1)
        per_epoch = steps_per_epoch(num_examples=n, batch_size=batch_size)
        q = 1.0 / per_epoch
        sigma = _real(
            "noise_multiplier", noise_multiplier, allowed="a finite number > 0", ok=lambda v: v > 0
        )
        clip = _real(
            "max_grad_norm", max_grad_norm, allowed="a finite number > 0", ok=lambda v: v > 0
        )
        rate = _real("lr", lr, allowed="a finite number > 0", ok=lambda v: v > 0)
        mom = _real(
            "momentum", momentum, allowed="a number with 0 <= momentum < 1", ok=lambda v: 0 <= v < 1
        )
        mu = _real("prox_mu", prox_mu, allowed="a finite number >= 0", ok=lambda v: v >= 0)
        steps = n_epochs * per_epoch
        expected_batch = max(1, round(q * n))
        event = GaussianEvent(noise_multiplier=sigma, sample_rate=q, steps=steps)

        self._clear()
        # FedProx anchor: the weights this call starts from (the global model).
        anchor = [p.detach().clone() for p in params] if mu > 0 else []
        optimizer = self._per_sample.optimizer(
            params=params,
            lr=rate,
            momentum=mom,
            noise_multiplier=sigma,
            max_grad_norm=clip,
            expected_batch_size=expected_batch,
            generator=generator,
            secure_mode=self._secure_mode,
        )
        was_training = self._model.training
        loss_sum, examples = 0.0, 0
        if class_weights is not None:
            checked = check_class_weights(class_weights)
            self._per_sample.class_weight = torch.tensor(checked, device=device)
        batches = poisson_steps(
            x=x,
            y=y,
            data=data,
            num_examples=n,
            sample_rate=q,
            steps=steps,
            generator=generator,
            device=device,
            read_ahead=read_ahead,
        )
        try:
            # Write-ahead: the release is counted (and persisted by the caller) before any
            # gradient of this data is computed.
            accountant.compose(event)
            if before_training is not None:
                before_training(event)
            self._model.train()
            self._per_sample.hooks(enabled=True)
            # Opacus's hooks fire on the first layer, whose input needs no gradient; torch
            # warns about that on every step although the per-sample gradients are right.
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message="Full backward hook is firing", category=UserWarning
                )
                for batch in batches:  # Poisson-sampled: each example independently
                    optimizer.zero_grad(set_to_none=True)
                    if batch is None:
                        # Nothing to differentiate; the sum of zero clipped gradients is 0 and
                        # DPOptimizer still adds the noise, releasing a noise-only step.
                        self._per_sample.empty_batch(params)
                    else:
                        loss_sum += self._per_sample.backward(*batch)
                        examples += int(batch[1].shape[0])
                    if mu == 0:
                        optimizer.step()
                    elif optimizer.pre_step():  # clip, sum, add noise, scale into p.grad
                        # The proximal gradient mu * (w - w_start) depends on no example (w
                        # is already a DP release), so adding it after clipping and noise
                        # is post-processing: it costs no privacy and is not clipped.
                        with torch.no_grad():
                            for p, w0 in zip(params, anchor, strict=True):
                                if p.grad is not None:
                                    p.grad.add_(p.detach() - w0, alpha=mu)
                        optimizer.original_optimizer.step()
        finally:
            batches.close()  # stops a read in flight
            optimizer.zero_grad(set_to_none=True)
            self._per_sample.hooks(enabled=False)
            self._per_sample.class_weight = None
            self._clear()
            self._model.train(was_training)
        return DPTrainResult(
            steps=steps,
            examples=examples,
            mean_loss=loss_sum / examples if examples else 0.0,
            noise_multiplier=sigma,
            sample_rate=q,
            max_grad_norm=clip,
        )

    def _clear(self) -> None:
        # No gradient, per-sample gradient or cached activation of one client may leak
        # into the next client's step or into the weights the caller reads.
        for p in self._model.parameters():
            p.grad = None
            for attr in STEP_ATTRS:
                if hasattr(p, attr):
                    delattr(p, attr)
            if hasattr(p, "_forward_counter"):
                p._forward_counter = 0
        for m in self._model.modules():
            for attr in ("activations", "max_batch_len"):
                if hasattr(m, attr):
                    delattr(m, attr)
