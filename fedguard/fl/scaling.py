"""The ``scaling = "dp"`` release as both engines apply it: its event and the scaling itself.

A deployed node (``fedguard.client.scaling``: stored, charged to its ledger once) and a
virtual client of a simulation (``fedguard.simulations.virtual_scaling``: per client, per
run) release each dp column's centre and scale with the Gaussian mechanism
(:mod:`fedguard.privacy.dp_scaling`), charge :func:`scaling_event`, and train on rows
scaled by :func:`apply_released`. This module is that shared part; it imports neither
Flower nor ``fedguard.client``.

The noise multiplier is a documented constant, ``SCALING_NOISE = 10`` (or the node's
``privacy.min-noise-multiplier`` if larger), not a node.toml key. Why: what the release
costs is what it adds once composed with the training rounds (the accountants compose
it like any event, and the node's checks and run plan count it): at z = 10 that is about
7-8 % of a lifetime budget of epsilon 1 and under 1 % of epsilon 3 (delta 1e-5, RDP or PRV),
while the centre's error is about ``z sqrt(2d + 1) / n`` half-ranges (under 3 % for
3 columns and 1000 records). A share of the budget would not do: with the RDP accountant
one Gaussian release cannot be certified below epsilon ~0.18 at delta 1e-5 however
much noise it has, so "5 % of a budget of 1" has no noise multiplier at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedguard.privacy import GaussianEvent
from fedguard.task.schema import DPScalingPlan

__all__ = ["SCALING_NOISE", "ReleasedScaling", "apply_released", "scaling_event"]

SCALING_NOISE = 10.0  # the release's noise multiplier (see the module docstring)


@dataclass(frozen=True, kw_only=True)
class ReleasedScaling:
    """Centre and scale per dp column, as released (public from then on)."""

    key: str
    centre: tuple[float, ...]
    scale: tuple[float, ...]
    noise_multiplier: float
    ledger_seq: int  # the ledger entry that charged the release


def scaling_event(*, min_noise_multiplier: float = 0.0) -> GaussianEvent:
    """The release's event: ``SCALING_NOISE`` (at least ``min_noise_multiplier``), once."""
    z = max(SCALING_NOISE, min_noise_multiplier)
    return GaussianEvent(noise_multiplier=z, sample_rate=1.0, steps=1)


def apply_released(x: np.ndarray, *, plan: DPScalingPlan, released: ReleasedScaling) -> np.ndarray:
    """``x`` with the dp columns as ``(x - centre) / scale`` (a copy, float32)."""
    out = np.array(x, dtype=np.float32, copy=True)
    cols = list(plan.columns)
    centre = np.asarray(released.centre, dtype=np.float64)
    scale = np.asarray(released.scale, dtype=np.float64)
    out[:, cols] = ((out[:, cols].astype(np.float64) - centre) / scale).astype(np.float32)
    return out
