"""Fixed-point encoding of model updates for integer secure aggregation.

Each coordinate of a node's update is clipped to ``[-clip_range, clip_range]`` and mapped
to an integer level in ``[0, 2**bits - 1]`` with stochastic rounding (unbiased: the
expected level is the exact real value). The node multiplies its levels by its weight
(capped example count) and appends the weight, so the cohort's integer sum holds
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
    """Encode ``update`` (a list of float arrays) as one integer vector, weight appended."""
    flat = np.concatenate([np.asarray(u, dtype=np.float64).ravel() for u in update])
    if not np.all(np.isfinite(flat)):
        raise ValueError("update: expected finite numbers, got NaN or infinity")
    clipped = int(np.count_nonzero(np.abs(flat) > clip_range))
    levels = 2**bits - 1
    scaled = (np.clip(flat, -clip_range, clip_range) + clip_range) * (levels / (2 * clip_range))
    low = np.floor(scaled)
    # Round up with probability equal to the fractional part: E[q] = scaled exactly.
    q = low + (rng.random(scaled.shape) < (scaled - low))
    q = np.minimum(q, levels).astype(np.uint64)
    vector = np.empty(q.size + 1, dtype=dtype)
    vector[:-1] = q * np.uint64(weight)
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
