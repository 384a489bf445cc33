"""The stacked engine's clipped sums equal per-example gradients clipped one by one, on
every path it takes for a convolution (ghost norm or per-example gradient, either patch
layout), and no example contributes more than the clipping bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fedguard.privacy import stacked
from fedguard.privacy.stacked import StackedSequential

CLIP = 0.5


def _model() -> nn.Sequential:
    """Strided, dilated, non-square, bias-free convolutions; GroupNorm; pools."""
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(2, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        nn.GroupNorm(2, 6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1, bias=False),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d((None, 2)),  # height kept (skipped half), width pooled
        nn.Flatten(),
        nn.Linear(5 * 3 * 2, 4),
    )


def _stacked_params(model: nn.Module, k: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(9)
    return [
        p.detach()[None].repeat(k, *([1] * p.ndim)) + 0.3 * torch.randn(k, *p.shape, generator=gen)
        for p in model.parameters()
    ]


def _batch(k: int, b: int, scale: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(k, b, 2, 11, 12, generator=gen) * scale
    y = torch.randint(0, 4, (k, b), generator=gen)
    valid = torch.ones(k, b)
    if b > 2:
        valid[1, 2] = 0.0  # a padded slot
    return x, y, valid


def _stacked_sums(
    model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, valid
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    engine = StackedSequential(model)
    params = [p.clone().requires_grad_(True) for p in params]
    logits, records = engine.forward(params, x)
    losses = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(
        valid.shape
    )
    grads = torch.autograd.grad((losses * valid).sum(), [r.z for r in records])
    sums, factors = engine.clipped_sums(records, grads, max_grad_norm=CLIP, valid=valid)
    return logits.detach(), sums, factors


def _one_by_one(
    model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, valid
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Each example's gradient on its own, clipped as Opacus clips it, summed per client."""
    names = [n for n, _ in model.named_parameters()]
    k, b = valid.shape
    logits = torch.zeros(k, b, 4)
    sums = [torch.zeros_like(p) for p in params]
    factors = torch.zeros(k, b)
    for i in range(k):
        weights = {n: p[i].clone().requires_grad_(True) for n, p in zip(names, params, strict=True)}
        for j in range(b):
            out = functional_call(model, weights, (x[i, j : j + 1],))
            logits[i, j] = out[0].detach()
            loss = nn.functional.cross_entropy(out, y[i, j : j + 1])
            grads = torch.autograd.grad(loss, list(weights.values()))
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
            factors[i, j] = (CLIP / (norm + 1e-6)).clamp(max=1.0) * valid[i, j]
            for s, g in zip(sums, grads, strict=True):
                s[i] += factors[i, j] * g
    return logits, sums, factors


@pytest.mark.parametrize("channels_last", [True, False])
def test_clipped_sums_equal_per_example_clipping_on_every_conv_path(
    monkeypatch: pytest.MonkeyPatch, channels_last: bool
) -> None:
    monkeypatch.setattr(stacked, "channels_last_patches", lambda **_: channels_last)
    model = _model()
    params = _stacked_params(model, 3)
    x, y, valid = _batch(3, 4)
    logits, sums, factors = _stacked_sums(model, params, x, y, valid)
    want_logits, want_sums, want_factors = _one_by_one(model, params, x, y, valid)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(factors, want_factors, rtol=1e-5, atol=1e-6)
    assert (factors[valid > 0] < 1).any()  # clipping is active, not a no-op
    for got, want in zip(sums, want_sums, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("channels_last", [True, False])
def test_no_example_contributes_more_than_the_bound(
    monkeypatch: pytest.MonkeyPatch, channels_last: bool
) -> None:
    """The attack: one example with inputs 1000x larger than the rest. Were its norm under-
    estimated (a missed parameter, a norm not of the summed tensor), its clipped gradient
    would exceed the bound and dominate its client's sum; each one-example client's sum
    stays <= C."""
    monkeypatch.setattr(stacked, "channels_last_patches", lambda **_: channels_last)
    model = _model()
    scale = torch.ones(4, 1, 1, 1, 1)
    scale[2] = 1000.0
    x, y, _ = _batch(4, 1, scale)
    params = _stacked_params(model, 4)
    _, sums, factors = _stacked_sums(model, params, x, y, torch.ones(4, 1))
    norms = torch.sqrt(sum((s.flatten(1) ** 2).sum(1) for s in sums))
    assert factors[2, 0] < 0.5  # the loud example is clipped...
    assert bool((norms <= CLIP * (1 + 1e-4)).all()), norms  # ...and no client exceeds C


def test_identity_pool_is_skipped_and_a_real_pool_is_not() -> None:
    x = torch.zeros(1, 1, 3, 4, 4)
    assert stacked._identity_pool(nn.AdaptiveAvgPool2d(4), x)
    assert stacked._identity_pool(nn.AdaptiveAvgPool2d((None, 4)), x)
    assert not stacked._identity_pool(nn.AdaptiveAvgPool2d(2), x)
    assert not stacked._identity_pool(nn.AdaptiveAvgPool2d((4, 2)), x)
    assert not stacked._identity_pool(nn.AvgPool2d(1), x)  # not adaptive: runs as is


@pytest.mark.parametrize("side", [8, 12])
def test_cnn_logits_equal_the_plain_model_with_or_without_an_identity_pool(side: int) -> None:
    """``cnn`` on 8x8 pools 4x4 to 4x4 (skipped); on 12x12, 6x6 to 4x4 (run)."""
    from fedguard.task import build_model

    model = build_model(name="cnn", input_shape=(1, side, side), num_classes=10)
    params = _stacked_params(model, 2)
    x = torch.randn(2, 3, 1, side, side, generator=torch.Generator().manual_seed(1))
    logits, _ = StackedSequential(model).forward(params, x)
    names = [n for n, _ in model.named_parameters()]
    for i in range(2):
        weights = {n: p[i] for n, p in zip(names, params, strict=True)}
        want = functional_call(model, weights, (x[i],))
        torch.testing.assert_close(logits[i].detach(), want.detach(), rtol=1e-5, atol=1e-6)


def test_held_floats_count_what_clipping_holds_per_example() -> None:
    """Chunk sizing: a convolution's patches and per-example gradient, GroupNorm's
    per-example gradients."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8))
    engine = StackedSequential(model)
    params = [p.detach()[None] for p in model.parameters()]
    with torch.no_grad():
        _, records = engine.forward(params, torch.zeros(1, 1, 3, 5, 5))
    positions, patch = 25, 27  # patches [25, 27], per-example gradient [8, 27] + bias [8]
    assert engine.held_floats(records) == positions * patch + 8 * 28 + 2 * 8
