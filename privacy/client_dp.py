"""Client-level differential privacy (opt-in): the aggregate is DP for a whole node.

Each node clips its round update to L2 norm ``clip_norm`` and adds its *share* of the
Gaussian noise: standard deviation ``noise_multiplier * clip_norm / sqrt(min_contributors)``.
Under secure aggregation the server only sees the sum of at least ``min_contributors``
updates (fewer aborts the round), so the sum carries noise of standard deviation at least
``noise_multiplier * clip_norm``: the Gaussian mechanism with sensitivity ``clip_norm``
(adding or removing one node changes the sum by at most that), while no party — server or
node — ever sees a less noisy sum (distributed DP; McMahan et al. 2018 for the
client-level mechanism, Kairouz et al. 2021 for its distributed form).

The client-level epsilon over rounds is counted by :func:`client_level_spent` with the
same accountants as sample-level DP (cohort sampling rate, one event per round). What it
does not cover: the stochastic rounding and per-coordinate range of secure aggregation's
integer encoding, applied after the noise (Kairouz et al. 2021 analyse a discrete
Gaussian that accounts for them exactly); updates are averaged with equal weight, since
weighting by example counts would scale one node's influence beyond ``clip_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedguard.errors import invalid

from .accountants import Accountant, GaussianEvent, PrivacySpent

__all__ = ["ClientDP", "NoisedUpdate", "client_level_spent", "clip_and_noise"]


@dataclass(frozen=True, kw_only=True)
class ClientDP:
    """The client-level mechanism of a run, as the server announces it to the nodes."""

    clip_norm: float
    noise_multiplier: float
    min_contributors: int  # the fewest updates a sum can hold (fewer: round aborted)

    def __post_init__(self) -> None:
        for key, value, ok, allowed in (
            ("client-clip", self.clip_norm, self.clip_norm > 0, "a finite number > 0"),
            ("client noise multiplier", self.noise_multiplier, self.noise_multiplier > 0, "> 0"),
        ):
            if isinstance(value, bool) or not (math.isfinite(value) and ok):
                raise invalid(key, allowed=allowed, got=value)
        if self.min_contributors < 1:
            raise invalid("min contributors", allowed="an integer >= 1", got=self.min_contributors)

    @property
    def share_std(self) -> float:
        """Each node's noise standard deviation, per coordinate."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(self.min_contributors)


@dataclass(frozen=True)
class NoisedUpdate:
    arrays: list[np.ndarray]
    norm: float  # L2 norm before clipping
    clipped: bool


def clip_and_noise(
    update: Sequence[np.ndarray], *, mechanism: ClientDP, rng: np.random.Generator
) -> NoisedUpdate:
    """Clip ``update`` (all arrays together) to ``clip_norm``; add this node's noise share."""
    flat = [np.asarray(u, dtype=np.float64) for u in update]
    norm = math.sqrt(sum(float(np.sum(u * u)) for u in flat))
    if not math.isfinite(norm):
        raise ValueError("update: expected finite numbers, got NaN or infinity")
    scale = min(1.0, mechanism.clip_norm / norm) if norm > 0 else 1.0
    std = mechanism.share_std
    out = [(u * scale + rng.normal(0.0, std, size=u.shape)).astype(np.float32) for u in flat]
    return NoisedUpdate(arrays=out, norm=norm, clipped=scale < 1.0)


def client_level_spent(
    *,
    mechanism: ClientDP,
    sample_rate: float,
    rounds: int,
    delta: float,
    method: str = "rdp",
) -> PrivacySpent:
    """Client-level (epsilon, delta) after ``rounds`` rounds with cohort ``sample_rate``."""
    accountant = Accountant(method=method)
    accountant.compose(
        GaussianEvent(
            noise_multiplier=mechanism.noise_multiplier, sample_rate=sample_rate, steps=rounds
        )
    )
    return accountant.get_privacy_spent(delta=delta)
