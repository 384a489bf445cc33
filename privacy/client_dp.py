"""Client-level differential privacy (opt-in): the aggregate is DP for a whole node.

Each node clips its round update to L2 norm ``clip_norm`` and adds its *share* of the
Gaussian noise: standard deviation ``noise_multiplier * clip_norm / sqrt(t - 1)`` with
``t = min_contributors`` (``noise_multiplier * clip_norm`` when ``t = 1``). Under secure
aggregation the server only sees the sum of at least ``t`` updates (fewer aborts the
round). Every node knows its own share, so what a node (or the server together with one
node) can strip from the sum leaves ``t - 1`` shares: noise of standard deviation at least
``noise_multiplier * clip_norm``, the Gaussian mechanism with sensitivity ``clip_norm``
(adding or removing one node changes the sum by at most that, replacing one by twice
that). Shares sized ``/ sqrt(t)`` would leave that party ``sqrt((t - 1) / t)`` of it
(0.82 at ``t = 3``). The price is slight over-noise for the server alone: the sum carries
``noise_multiplier * sqrt(t / (t - 1))`` (x1.22 at ``t = 3``, x1.05 at ``t = 10``). With
``c`` colluding nodes the server strips ``c`` shares: the guarantee holds for ``c <= 1``
and weakens to ``noise_multiplier * sqrt((t - c) / (t - 1))`` beyond (distributed DP;
McMahan et al. 2018 for the client-level mechanism, Kairouz et al. 2021 for its
distributed form).

The client-level epsilon over rounds is counted by :class:`ClientLevelAccounting` (over
:func:`client_level_spent`), which both engines build from their configuration. Each
round's cohort is ``m`` of ``N`` nodes drawn without replacement, so it is accounted as
that (:mod:`fedguard.privacy.without_replacement`, RDP), never as Poisson sampling at
``m / N``, whose bound is smaller and does not hold for this scheme. The neighbouring
relation is replace-one: ``N`` is public and one node's data is replaced by any other,
which moves the sum by up to ``2 * clip_norm``. What it does not cover: the stochastic
rounding and per-coordinate range of secure aggregation's integer encoding, applied
after the noise (Kairouz et al. 2021 analyse a discrete Gaussian that accounts for them
exactly); updates are averaged with equal weight, since
weighting by example counts would scale one node's influence beyond ``clip_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedguard.errors import invalid

from .accountants import _check_delta
from .without_replacement import ORDERS, epsilon_from_rdp, rdp_gaussian_without_replacement

__all__ = [
    "ClientDP",
    "ClientLevelAccounting",
    "ClientLevelSpent",
    "NoisedUpdate",
    "client_level_spent",
    "clip_and_noise",
]

NEIGHBOURING = "replace-one"
"""Client-level neighbours: one node's data replaced by any other (``N`` is public)."""


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
        """Each node's noise standard deviation, per coordinate.

        Sized for ``t - 1`` shares: a participant that knows its own share (or the server
        with one colluding node) still faces ``noise_multiplier * clip_norm``.
        """
        return self.noise_multiplier * self.clip_norm / math.sqrt(max(1, self.min_contributors - 1))

    def effective_noise_multiplier(self, *, contributors: int, colluders: int = 0) -> float:
        """The noise multiplier left in a sum of ``contributors`` shares after ``colluders``
        of them (each known to its node) are subtracted."""
        left = contributors - colluders
        if left < 1 or colluders < 0:
            raise invalid(
                "colluders",
                allowed=f"0 <= colluders < contributors ({contributors})",
                got=colluders,
            )
        return self.share_std * math.sqrt(left) / self.clip_norm


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


@dataclass(frozen=True, kw_only=True)
class ClientLevelSpent:
    """Client-level (epsilon, delta) and the analysis behind it, as outputs report it."""

    epsilon: float
    delta: float
    rounds: int
    cohort_size: int  # m nodes a round ...
    num_clients: int  # ... drawn without replacement from N
    analysis: str = "rdp"
    neighbouring: str = NEIGHBOURING

    @property
    def sampling(self) -> str:
        """How the cohorts were drawn, in words."""
        if self.cohort_size == self.num_clients:
            return f"all {self.num_clients} nodes every round (no sampling)"
        return f"{self.cohort_size} of {self.num_clients} nodes a round, without replacement"

    def describe(self) -> str:
        """One line for consoles and logs: the figure and what it assumes."""
        return f"{self.epsilon:.3f} ({self.analysis}, {self.neighbouring}, {self.sampling})"

    def as_dict(self) -> dict[str, object]:
        """JSON-able fields for ``summary.json``."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rounds": self.rounds,
            "accountant": self.analysis,
            "neighbouring": self.neighbouring,
            "sampling": self.sampling,
        }


def client_level_spent(
    *,
    noise_multiplier: float,
    num_clients: int,
    cohort_size: int,
    rounds: int,
    delta: float,
) -> ClientLevelSpent:
    """Client-level (epsilon, delta) after ``rounds`` rounds of ``cohort_size`` of ``num_clients``.

    The one place client-level epsilon is computed (deployed server and simulation). Each
    round is the Gaussian mechanism with noise ``noise_multiplier * clip_norm`` on a
    cohort drawn uniformly without replacement; under replace-one the sum's sensitivity is
    ``2 * clip_norm``, so the analysis sees noise multiplier ``noise_multiplier / 2``.
    Rounds compose additively in RDP (Opacus's orders), converted as Opacus converts.
    ``cohort_size == num_clients`` is no sampling and gets no amplification.

    Raises
    ------
    ConfigError
        A value out of range, named with what is allowed.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise invalid("rounds", allowed="an integer >= 0", got=rounds)
    d = _check_delta(delta)
    per_round = rdp_gaussian_without_replacement(
        sample_size=cohort_size,
        population=num_clients,
        noise_multiplier=_replace_one_multiplier(noise_multiplier),
    )
    eps = epsilon_from_rdp(rdp=rounds * per_round, orders=ORDERS, delta=d) if rounds else 0.0
    return ClientLevelSpent(
        epsilon=eps, delta=d, rounds=rounds, cohort_size=cohort_size, num_clients=num_clients
    )


@dataclass(frozen=True, kw_only=True)
class ClientLevelAccounting:
    """A run's client-level accounting: :meth:`after` any number of rounds.

    The one home of the figure both engines print (console, ``metrics.jsonl``,
    ``summary.json``). Its analysis is RDP for ``cohort_size`` of ``num_clients`` drawn
    without replacement, whatever sample-level accountant a run is configured with: the
    PRV accountant models Poisson sampling, whose bound does not hold for this draw. The
    figure names its analysis, neighbouring relation, sampling and delta
    (:class:`ClientLevelSpent`).

    Attributes
    ----------
    noise_multiplier : float
        Of the summed updates (noise std over clip norm).
    num_clients : int
        N, the run's clients (nodes), public.
    cohort_size : int
        m asked per round; one above N means everyone, every round (no sampling).
    delta : float
        Of the client-level guarantee.
    """

    noise_multiplier: float
    num_clients: int
    cohort_size: int
    delta: float

    def after(self, rounds: int) -> ClientLevelSpent:
        """Client-level (epsilon, delta) after ``rounds`` rounds."""
        return client_level_spent(
            noise_multiplier=self.noise_multiplier,
            num_clients=self.num_clients,
            cohort_size=min(self.cohort_size, self.num_clients),
            rounds=rounds,
            delta=self.delta,
        )

    def epsilon(self, rounds: int) -> float:
        """Just the epsilon of :meth:`after` (the round loop's ``client_epsilon``)."""
        return self.after(rounds).epsilon


def _replace_one_multiplier(noise_multiplier: float) -> float:
    z = noise_multiplier
    if isinstance(z, bool) or not isinstance(z, int | float) or not (math.isfinite(z) and z > 0):
        raise invalid("client noise multiplier", allowed="a finite number > 0", got=z)
    # Replacing one clipped update by another moves the sum by up to twice the clip norm.
    return float(z) / 2.0
