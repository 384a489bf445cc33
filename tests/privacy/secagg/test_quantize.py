"""Stochastic fixed-point quantisation: range, unbiasedness, the documented error bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedguard.privacy.secagg import dequantize_mean, quantization_step, quantize

FAST = settings(max_examples=60, deadline=None)
FLOAT32_ROUNDING = 2.0**-24  # relative: dequantize_mean returns float32 arrays

values = st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, allow_infinity=False)


def oracle_levels(flat: np.ndarray, *, clip: float, bits: int, uniforms: np.ndarray) -> list[int]:
    """Stochastic rounding one coordinate at a time, from the same uniform draws."""
    levels = 2**bits - 1
    out = []
    for x, u in zip(flat.tolist(), uniforms.tolist(), strict=True):
        scaled = (min(max(x, -clip), clip) + clip) * (levels / (2 * clip))
        out.append(min(int(np.floor(scaled + u)), levels))  # up with probability frac
    return out


@FAST
@given(
    update=st.lists(hnp.arrays(np.float64, st.integers(1, 20), elements=values), min_size=1),
    weight=st.integers(1, 1000),
    clip=st.floats(min_value=0.01, max_value=3.0),
    bits=st.integers(1, 30),
    ring=st.sampled_from([np.uint32, np.uint64]),
    seed=st.integers(0, 2**32),
)
def test_levels_in_range_weight_last_clipped_counted(update, weight, clip, bits, ring, seed):
    if ring is np.uint32 and weight * (2**bits - 1) >= 2**32:
        ring = np.uint64
    out = quantize(
        update,
        weight=weight,
        clip_range=clip,
        bits=bits,
        dtype=ring,
        rng=np.random.default_rng(seed),
    )
    flat = np.concatenate(update)
    assert out.vector.dtype == ring and out.vector.shape == (flat.size + 1,)
    assert int(out.vector[-1]) == weight
    body = out.vector[:-1].astype(np.uint64)
    assert np.all(body % np.uint64(weight) == 0)
    levels = body // np.uint64(weight)
    assert np.all(levels <= 2**bits - 1)
    assert out.clipped == int(np.sum(np.abs(flat) > clip))
    # Same uniforms, one coordinate at a time: same levels.
    uniforms = np.random.default_rng(seed).random(flat.size, dtype=np.float32)
    assert levels.tolist() == oracle_levels(flat, clip=clip, bits=bits, uniforms=uniforms)


def test_stochastic_rounding_is_unbiased():
    """Mean level over many draws is the exact scaled value (z-test per coordinate)."""
    bits, clip, draws = 4, 1.0, 4000
    x = np.random.default_rng(1).uniform(-clip, clip, size=64)
    scaled = (x + clip) * ((2**bits - 1) / (2 * clip))
    frac = scaled - np.floor(scaled)
    out = quantize(
        [np.tile(x, draws)],
        weight=1,
        clip_range=clip,
        bits=bits,
        dtype=np.uint32,
        rng=np.random.default_rng(2),
    )
    mean = out.vector[:-1].reshape(draws, x.size).astype(np.float64).mean(axis=0)
    sd = np.sqrt(frac * (1 - frac) / draws)
    z = (mean - scaled) / sd
    assert np.max(np.abs(z)) < 5.0  # 64 coordinates: a false alarm has probability ~4e-5
    assert abs(z.mean()) * np.sqrt(x.size) < 5.0
    # The test has power: round-to-nearest (biased) fails it.
    nearest = np.round(scaled)
    assert np.max(np.abs((nearest - scaled) / sd)) > 5.0


@st.composite
def cohorts(draw):
    n = draw(st.integers(1, 12))
    size = draw(st.integers(1, 30))
    updates = [draw(hnp.arrays(np.float64, size, elements=values)) for _ in range(n)]
    weights = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n))
    return updates, weights


@FAST
@given(
    cohort=cohorts(),
    clip=st.floats(min_value=0.05, max_value=2.0),
    bits=st.integers(1, 30),
    seed=st.integers(0, 2**32),
)
def test_dequantised_weighted_mean_within_one_step(cohort, clip, bits, seed):
    updates, weights = cohort
    rng = np.random.default_rng(seed)
    total = np.zeros(updates[0].size + 1, dtype=np.uint64)
    for u, w in zip(updates, weights, strict=True):
        total += quantize(
            [u], weight=w, clip_range=clip, bits=bits, dtype=np.uint64, rng=rng
        ).vector
    exact = sum(w * np.clip(u, -clip, clip) for u, w in zip(updates, weights, strict=True))
    exact = exact / sum(weights)
    step = quantization_step(clip_range=clip, bits=bits)
    assert step == pytest.approx(2 * clip / (2**bits - 1))
    mean, total_weight = dequantize_mean(total, clip_range=clip, bits=bits, shapes=[(exact.size,)])
    assert total_weight == sum(weights)
    assert mean[0].dtype == np.float32 and mean[0].shape == exact.shape
    # The documented bound: under one step, plus the float32 rounding of the output.
    err = np.max(np.abs(mean[0].astype(np.float64) - exact))
    assert err < step + clip * FLOAT32_ROUNDING
    # Before the float32 cast the bound is one step exactly.
    mean64 = total[:-1].astype(np.float64) / total_weight * step - clip
    assert np.max(np.abs(mean64 - exact)) < step


def test_dequantize_restores_shapes_and_checks_sizes():
    rng = np.random.default_rng(0)
    update = [rng.uniform(-1, 1, size=(2, 3)), rng.uniform(-1, 1, size=(4,)), np.zeros(())]
    q = quantize(update, weight=7, clip_range=1.0, bits=12, dtype=np.uint32, rng=rng).vector
    mean, weight = dequantize_mean(q, clip_range=1.0, bits=12, shapes=[(2, 3), (4,), ()])
    assert weight == 7 and [m.shape for m in mean] == [(2, 3), (4,), ()]
    for m, u in zip(mean, update, strict=True):
        assert np.all(np.abs(m - u) < quantization_step(clip_range=1.0, bits=12))
    with pytest.raises(ValueError, match="expected 7 values"):
        dequantize_mean(q, clip_range=1.0, bits=12, shapes=[(2, 3)])
    empty = np.zeros(5, dtype=np.uint32)
    with pytest.raises(ValueError, match="total weight is 0"):
        dequantize_mean(empty, clip_range=1.0, bits=12, shapes=[(4,)])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_rejects_non_finite(bad):
    with pytest.raises(ValueError, match="finite"):
        quantize(
            [np.array([0.0, bad])],
            weight=1,
            clip_range=1.0,
            bits=8,
            dtype=np.uint32,
            rng=np.random.default_rng(0),
        )


def test_no_level_exceeds_the_top_at_30_bits():
    """Near 2**30, float64 spacing (2**-23) rounds levels + u up to levels + 1 for the
    largest uniform draw: the clamp keeps every level in range, so the ring bound holds
    (red team). A generator stub returns that draw for every coordinate."""

    class LargestDraw:
        def random(self, size: int, dtype: type) -> np.ndarray:
            return np.full(size, np.nextafter(np.float32(1), np.float32(0)), dtype=dtype)

    bits = 30
    flat = np.full(64, 1.0)  # the top of the clipping range: s = levels exactly
    out = quantize([flat], weight=1, clip_range=1.0, bits=bits, dtype=np.uint64, rng=LargestDraw())  # type: ignore[arg-type]
    assert int(out.vector[:-1].max()) == 2**bits - 1
