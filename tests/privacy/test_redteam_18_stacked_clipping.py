"""Red team (#18): a convolution's clipped sum must never carry more than the clipping
bound for one example, whatever its inputs.

The attack: one example whose convolution patches cancel across positions (a large
checkerboard, amplitude ``a``, plus small noise). Its true gradient is moderate, but the
ghost norm sums ``|p_l . p_m| ~ a^2`` Gram terms that cancel, so in float32 the norm used
for the clipping factor is wrong by ~``eps a^2``: too small (the example is under-clipped
and contributes several times the bound), or negative (its factor is NaN and so is its
client's whole update). The clipped sum itself came from ``conv2d_weight``, a different
computation, so nothing tied the two together. On the ghost-norm engine (f89983e..61fc7c6)
these tests failed (1.14x, 1.9x the bound, NaN releases); the engine now takes each
example's norm from the very per-example gradient it sums, as before (2f4dbad), and both
layouts of the patches are attacked.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedguard.privacy import stacked
from fedguard.privacy.stacked import StackedSequential

CLIP = 0.1


def _model() -> nn.Sequential:
    # 1x1 conv, 32 -> 16 channels on 4x4: 2 * 16^2 <= 16 * 32, where the ghost-norm engine
    # picked the ghost norm; the pool spreads the output gradient evenly.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(32, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)
    )


def _cancelling_example(amplitude: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    checker = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2) * 2 - 1
    sign = torch.randint(0, 2, (32, 1, 1), generator=gen) * 2 - 1
    x = amplitude * sign * checker + torch.randn(32, 4, 4, generator=gen)
    return x.float()[None, None]  # [K=1, B=1, 32, 4, 4]


def _contributed_norm(model: nn.Sequential, x: torch.Tensor) -> float:
    engine = StackedSequential(model)
    params = [p.detach()[None].clone().requires_grad_(True) for p in model.parameters()]
    logits, records = engine.forward(params, x)
    loss = nn.functional.cross_entropy(
        logits.flatten(0, 1), torch.tensor([0], device=x.device)
    ).sum()
    grads = torch.autograd.grad(loss, [r.z for r in records])
    sums, _ = engine.clipped_sums(
        records, grads, max_grad_norm=CLIP, valid=torch.ones(1, 1, device=x.device)
    )
    return math.sqrt(sum(float((s.double() ** 2).sum()) for s in sums))


@pytest.mark.parametrize("channels_last", [True, False])
def test_one_cancelling_example_never_exceeds_the_clipping_bound(
    monkeypatch: pytest.MonkeyPatch, channels_last: bool
) -> None:
    monkeypatch.setattr(stacked, "channels_last_patches", lambda **_: channels_last)
    model = _model()
    worst = []
    for amplitude in (6e3, 8e3, 1e4):
        for seed in range(8):
            norm = _contributed_norm(model, _cancelling_example(amplitude, seed))
            if not (math.isfinite(norm) and norm <= CLIP * (1 + 1e-3)):
                worst.append((amplitude, seed, norm / CLIP))
    assert not worst, f"one example's clipped sum is not <= C (amplitude, seed, norm/C): {worst}"


def test_one_crafted_record_does_not_turn_its_clients_release_into_nan() -> None:
    """End to end: a client holding one crafted record (sampled with q = 1) trains through
    the cohort trainer. Its released weights must be finite, as DP-SGD with Opacus's
    per-example clipping (DPTrainer) gives on the same record: a NaN release is a
    deterministic, noise-proof signal that the record is present."""
    import numpy as np

    from fedguard.privacy import Accountant, DPTrainer
    from fedguard.privacy.cohort import CohortClient, CohortDPTrainer
    from fedguard.task import get_weights, set_weights

    hyper = {"epochs": 1, "batch_size": 1, "lr": 0.1, "max_grad_norm": CLIP}
    released = []
    for amplitude, seed in [(6e3, 3), (8e3, 2), (8e3, 4), (1e4, 0)]:
        model = _model()
        x, y = _cancelling_example(amplitude, seed)[0], torch.tensor([0])
        client = CohortClient(
            x=x,
            y=y,
            noise_multiplier=0.5,
            generator=torch.Generator().manual_seed(1),
            accountant=Accountant(method="rdp"),
        )
        (got,) = CohortDPTrainer(model=model).train(
            start=get_weights(model), clients=[client], **hyper
        )
        single = DPTrainer(model=_model())
        set_weights(single.module, get_weights(model))
        single.train(
            x=x,
            y=y,
            noise_multiplier=0.5,
            accountant=Accountant(method="rdp"),
            generator=torch.Generator().manual_seed(1),
            **hyper,
        )
        opacus_finite = all(np.isfinite(w).all() for w in get_weights(single.module))
        cohort_finite = all(np.isfinite(w).all() for w in got.weights)
        released.append((amplitude, seed, opacus_finite, cohort_finite))
    assert all(o for _, _, o, _ in released), released  # per-example clipping holds
    assert all(c for _, _, _, c in released), f"(amplitude, seed, opacus, cohort): {released}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("channels_last", [True, False])
def test_on_cuda_the_clipped_sum_is_bounded_by_the_norm_it_was_clipped_with(
    monkeypatch: pytest.MonkeyPatch, channels_last: bool
) -> None:
    """Not run here (no GPU was lent): cuDNN convolutions default to TF32
    (``torch.backends.cudnn.allow_tf32``); a clipped sum computed by a convolution kernel
    would be rounded to ~1e-3 while the norm that clipped it came from a float32 ``bmm``.
    The sums now come from the per-example tensors themselves (no convolution kernel)."""
    monkeypatch.setattr(stacked, "channels_last_patches", lambda **_: channels_last)
    model = _model().cuda()
    worst = []
    for amplitude in (1e2, 1e3, 1e4):
        for seed in range(8):
            norm = _contributed_norm(model, _cancelling_example(amplitude, seed).cuda())
            if not (math.isfinite(norm) and norm <= CLIP * (1 + 1e-3)):
                worst.append((amplitude, seed, norm / CLIP))
    assert not worst, f"one example's clipped sum is not <= C (amplitude, seed, norm/C): {worst}"
