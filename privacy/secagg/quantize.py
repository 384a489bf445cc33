"""Fixed-point encoding of model updates for integer secure aggregation.

Each coordinate of a node's update is clipped to ``[-clip_range, clip_range]`` and mapped
to an integer level in ``[0, 2**bits - 1]`` with stochastic rounding (unbiased: the
expected level is the exact real value, to within 2**-24 of a level: the uniform draws
are float32). The node multiplies its levels by its weight (capped example count) and
appends the weight, so the cohort's integer sum holds
``sum(w_i * q_i)`` and ``sum(w_i)``: the weighted mean is then one division away.

Error bound (documented and tested): for coordinates inside the clipping range, the
dequantised weighted mean differs from the exact weighted mean of the updates by less
than one quantisation step, ``2 * clip_range / (2**bits - 1)``, because every node's
rounding error is below one step and a weighted mean of such errors is too. Coordinates
outside the range are clipped first (the plain mean of the clipped updates is what is
approximated); :func:`quantize` reports how many were clipped. :func:`dequantize_mean`
returns float32 arrays, whose rounding adds up to ``clip_range * 2**-24``: more than a
step from ``bits`` = 26 on (about one at 25), so finer levels buy little accuracy there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Quantized", "dequantize_mean", "quantization_step", "quantize"]


@dataclass(frozen=True)
class Quantized:
    """A node's encoded update: ``weight * levels`` then ``weight``, in the ring dtype."""

    vector: np.ndarray
    clipped: int  # coordinates that were outside the clipping range


def quantization_step(*, clip_range: float, bits: int) -> float:
    """Distance between adjacent levels: the documented bound on the mean's error."""
    return 2.0 * clip_range / (2**bits - 1)


def quantize(
    update: Sequence[np.ndarray],
    *,
    weight: int,
    clip_range: float,
    bits: int,
    dtype: type[np.unsignedinteger],
    rng: np.random.Generator,
) -> Quantized:
    """Encode ``update`` (a list of float arrays) as one integer vector, weight appended.

    In place on one float64 buffer (a simulation quantises a whole cohort each round):
    ``q = floor(s + u)`` with ``s = (clip(x) + c) * levels / 2c`` and ``u`` uniform in
    [0, 1) from ``rng`` (float32 draws, one per coordinate, in order).
    """
    sizes = [int(np.size(u)) for u in update]
    flat = np.empty(sum(sizes), dtype=np.float64)
    start = 0
    for u, size in zip(update, sizes, strict=True):
        flat[start : start + size] = np.asarray(u).ravel()
        start += size
    # One non-finite value makes the sum non-finite (inf - inf is NaN): one cheap pass;
    # only a non-finite sum (or a finite overflow of huge values) checks element-wise.
    with np.errstate(over="ignore", invalid="ignore"):
        total = flat.sum()
    if not np.isfinite(total) and not np.all(np.isfinite(flat)):
        raise ValueError("update: expected finite numbers, got NaN or infinity")
    clipped = int(np.count_nonzero(flat > clip_range)) + int(np.count_nonzero(flat < -clip_range))
    levels = 2**bits - 1
    np.clip(flat, -clip_range, clip_range, out=flat)
    flat += clip_range
    flat *= levels / (2 * clip_range)
    # Stochastic rounding as floor(s + u), u uniform in [0, 1): up with probability
    # frac(s), so E[q] = s. u is drawn in float32 (half the cost of float64 draws, the
    # largest cost here): u takes multiples of 2**-24, so the rounding is unbiased to
    # within 2**-24 of a level. The clamp is needed: s can round above levels, and near
    # 2**30 float64 spacing (2**-23) rounds levels + u up to levels + 1 (red team).
    flat += rng.random(flat.size, dtype=np.float32)
    np.floor(flat, out=flat)
    np.minimum(flat, levels, out=flat)
    vector = np.empty(flat.size + 1, dtype=dtype)
    if levels * weight < 2**53:  # the float product is an exact integer: cast directly
        np.multiply(flat, float(weight), out=vector[:-1], casting="unsafe")
    else:
        vector[:-1] = flat.astype(np.uint64) * np.uint64(weight)
    vector[-1] = weight
    return Quantized(vector=vector, clipped=clipped)


def dequantize_mean(
    total: np.ndarray, *, clip_range: float, bits: int, shapes: Sequence[tuple[int, ...]]
) -> tuple[list[np.ndarray], int]:
    """The weighted mean update from the cohort's integer sum, and the total weight."""
    total_weight = int(total[-1])
    if total_weight <= 0:
        raise ValueError("secure sum: total weight is 0, nothing to average")
    levels = 2**bits - 1
    mean = total[:-1].astype(np.float64) / total_weight * (2 * clip_range / levels) - clip_range
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(mean[start : start + size].reshape(shape).astype(np.float32))
        start += size
    if start != mean.size:
        raise ValueError(f"secure sum: expected {start + 1} values, got {total.size}")
    return out, total_weight
