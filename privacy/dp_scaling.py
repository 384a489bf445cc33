"""Feature centre and scale estimated with the Gaussian mechanism (``scaling = "dp"``).

A node that wants its numeric columns standardised by its own data may not compute a
plain mean and std: one record would move every example's features and the DP-SGD
sensitivity 2C would no longer hold. Instead it releases the statistics below with the
Gaussian mechanism, charges that release to the same accountant and ledger as training
(one :class:`~fedguard.privacy.GaussianEvent` with ``sample_rate=1, steps=1``), and
standardises with the noisy result, which is then a public constant for DP-SGD
(post-processing).

Sensitivity (add/remove one record, the relation the accountants use)
--------------------------------------------------------------------
Column ``j`` has a public range ``[lo_j, hi_j]``; each value is clipped to it and mapped
to ``u_j = (x_j - m_j) / h_j`` in ``[-1, 1]`` (``m_j`` the midpoint, ``h_j`` the half
width). The released vector is

    f(D) = (sum_i u_i1, ..., sum_i u_id,  sum_i u_i1^2, ..., sum_i u_id^2,  |D|).

Adding or removing record ``r`` changes it by ``(u_r1, ..., u_rd, u_r1^2, ..., u_rd^2, 1)``
exactly, whose squared L2 norm is ``sum_j (u_rj^2 + u_rj^4) + 1 <= 2d + 1`` since
``|u_rj| <= 1``. So ``Delta_2 = sqrt(2d + 1)``, and adding ``N(0, (z Delta_2)^2)`` to each of
the ``2d + 1`` coordinates is the Gaussian mechanism with noise multiplier ``z``: its
privacy loss is that of one DP-SGD step at sample rate 1 with the same ``z`` (the
accountants' ``GaussianEvent(z, 1.0, 1)``). Everything after the noise (dividing by the
noisy count, clamping the variance, the floor on the scale) is post-processing.

This module never imports Flower nor the task layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedguard.errors import invalid
from fedguard.privacy.accountants import GaussianEvent

__all__ = ["SCALE_FLOOR", "DPScaling", "dp_centre_scale", "scaling_sensitivity", "statistics"]

SCALE_FLOOR = 0.05
"""Smallest std, as a fraction of a column's half range, the estimate may return: with a
tiny noisy std a clipped value would become a feature of hundreds (at most 2 / 0.05 = 40
here), swamping the example's clipped gradient."""


@dataclass(frozen=True)
class DPScaling:
    """The released centre/scale per column and the event to charge for it."""

    centre: np.ndarray  # (d,) in the column's own units
    scale: np.ndarray  # (d,) > 0
    event: GaussianEvent
    sensitivity: float  # L2 sensitivity of the released statistics: sqrt(2d + 1)


def scaling_sensitivity(num_columns: int) -> float:
    """``sqrt(2d + 1)``: see the module docstring."""
    return math.sqrt(2 * num_columns + 1)


def statistics(*, values: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    """The exact vector ``f(D)`` the mechanism noises (sums of ``u``, of ``u^2``, count)."""
    u = _unit(values, ranges)
    return np.concatenate([u.sum(axis=0), (u * u).sum(axis=0), [float(len(u))]])


def dp_centre_scale(
    *,
    values: np.ndarray,
    ranges: Sequence[tuple[float, float]],
    noise_multiplier: float,
    rng: np.random.Generator,
) -> DPScaling:
    """Estimate each column's centre and scale with the Gaussian mechanism.

    Parameters
    ----------
    values
        ``(n, d)`` raw column values; each is clipped to its range here too, so the
        sensitivity holds whatever the caller did.
    ranges
        ``d`` public ``(low, high)`` pairs with ``low < high``.
    noise_multiplier
        ``z`` > 0: noise std ``z * sqrt(2d + 1)`` per released coordinate.
    rng
        The generator the noise is drawn from (passed in, never global).

    Returns
    -------
    DPScaling
        Centre, scale and the :class:`GaussianEvent` to charge BEFORE releasing or using
        anything trained with them.
    """
    z = noise_multiplier
    if isinstance(z, bool) or not isinstance(z, int | float) or not (math.isfinite(z) and z > 0):
        raise invalid("noise_multiplier", allowed="a finite number > 0", got=z)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    exact = statistics(values=values, ranges=ranges)
    d = len(ranges)
    sensitivity = scaling_sensitivity(d)
    noisy = exact + rng.normal(0.0, z * sensitivity, size=exact.shape)
    count = max(float(noisy[-1]), 1.0)
    mean_u = np.clip(noisy[:d] / count, -1.0, 1.0)
    var_u = np.clip(noisy[d : 2 * d] / count - mean_u**2, SCALE_FLOOR**2, 1.0)
    low, high = _bounds(ranges)
    mid, half = (low + high) / 2, (high - low) / 2
    return DPScaling(
        centre=mid + half * mean_u,
        scale=half * np.sqrt(var_u),
        event=GaussianEvent(noise_multiplier=float(z), sample_rate=1.0, steps=1),
        sensitivity=sensitivity,
    )


def _bounds(ranges: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.asarray(ranges, dtype=np.float64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise invalid("ranges", allowed="a non-empty list of (low, high) pairs", got=ranges)
    low, high = pairs[:, 0], pairs[:, 1]
    if not (np.isfinite(pairs).all() and (low < high).all()):
        raise invalid("ranges", allowed="finite (low, high) pairs with low < high", got=ranges)
    return low, high


def _unit(values: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    low, high = _bounds(ranges)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(low):
        raise invalid("values", allowed=f"an (n, {len(low)}) array", got=x.shape)
    if not np.isfinite(x).all():
        raise invalid("values", allowed="finite numbers", got="NaN or infinity")
    mid, half = (low + high) / 2, (high - low) / 2
    return (np.clip(x, low, high) - mid) / half
