"""RDP of the Gaussian mechanism run on a fixed-size sample drawn without replacement.

A federation round picks exactly ``m`` of ``N`` nodes uniformly at random, without
replacement (:func:`fedguard.fl.loop.sample_cohort`), and releases the noisy sum of
their updates. That is not Poisson sampling: the analysis of Poisson sampling at
``q = m / N`` (Mironov et al. 2019) does not apply to it. This module bounds the Renyi DP
of the fixed-size scheme with the analysis of Wang, Balle and Kasiviswanathan 2019
("Subsampled Renyi differential privacy and analytical moments accountant", AISTATS;
the Gaussian bound of their Theorem 27 in arXiv:1808.00087), which is also what Google's
``dp_accounting`` implements for ``SampledWithoutReplacementDpEvent``.

Neighbouring relation: **replace-one**. ``N`` is public and two federations are
neighbours when one node's data is replaced by anything else. ``noise_multiplier`` below
is the noise standard deviation divided by the sensitivity *under that relation*; for a
sum of updates clipped to norm ``C`` it is ``C`` times 2 (one update swapped for another).

For integer orders ``a >= 2``, with ``eps(l) = l / (2 sigma^2)`` the Gaussian's RDP and
``g(l) = exp((l - 1) * eps(l))``, the cumulant is at most ``log(1 + sum_{j=2..a} q^j
C(a, j) B_j)``, ``B_j = min(4 sqrt(D(2 floor(j/2)) D(2 ceil(j/2))), 2 g(j))`` where ``D(i)``
is the i-th forward difference of ``g`` at 0. Fractional orders interpolate the cumulant
linearly between the neighbouring integers (it is convex: their Corollary 10). Each
order is then capped at the unsampled Gaussian's ``a / (2 sigma^2)``, which the bound
exceeds close to ``m = N``.

The forward differences alternate in sign and cancel badly for large ``sigma``; each one
is computed with an explicit bound on its floating-point error and that bound is added,
so what is returned stays an upper bound (never below the exact value).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from fedguard.errors import invalid

__all__ = ["ORDERS", "epsilon_from_rdp", "rdp_gaussian_without_replacement"]

ORDERS: tuple[float, ...] = tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)
"""RDP orders: Opacus's defaults, the same as :mod:`fedguard.privacy.accountants` uses."""

_LOG2 = math.log(2.0)
_LOG4 = math.log(4.0)
# Bound on the relative error of one exp/log/product in double precision, with room
# (a few ulps each; 16 covers the handful of operations per term).
_ULP_SLACK = 16 * np.finfo(np.float64).eps


def _log_forward_differences(sigma: float, n: int) -> np.ndarray:
    """Upper bounds of ``log |D(i)|`` for ``i = 0..n``, ``D(i) = sum_k (-1)^(i-k) C(i,k) g(k)``."""
    out = np.empty(n + 1)
    for i in range(n + 1):
        k = np.arange(i + 1, dtype=np.float64)
        logs = np.array([math.log(math.comb(i, int(j))) for j in k]) + k * (k - 1) / (2 * sigma**2)
        top = float(logs.max())
        terms = np.exp(logs - top)
        signs = np.where((i - k) % 2 == 0, 1.0, -1.0)
        total = abs(math.fsum(signs * terms))
        # Each term carries a relative error of a few ulps of its exponent's size; the
        # correctly rounded fsum adds at most one more ulp of the result.
        error = _ULP_SLACK * math.fsum(terms * (np.abs(logs) + abs(top) + 2.0))
        out[i] = top + math.log(total + error + _ULP_SLACK * total)
    return out


@functools.lru_cache(maxsize=256)
def _cumulants(q: float, sigma: float, max_order: int) -> tuple[float, ...]:
    """Upper bounds of the cumulant ``(a - 1) * rdp(a)`` for integer ``a = 0..max_order``."""
    diffs = _log_forward_differences(sigma, max_order + 1)
    log_q = math.log(q)
    out = [0.0, 0.0]  # orders 0 and 1: nothing (the divergence of order 1 is the limit)
    for a in range(2, max_order + 1):
        terms = [0.0]  # log 1
        for j in range(2, a + 1):
            lo, hi = diffs[2 * (j // 2)], diffs[2 * ((j + 1) // 2)]
            moment = min(_LOG4 + 0.5 * (lo + hi), _LOG2 + j * (j - 1) / (2 * sigma**2))
            terms.append(j * log_q + math.log(math.comb(a, j)) + moment)
        top = max(terms)
        out.append(top + math.log(math.fsum(math.exp(t - top) for t in terms)))
    return tuple(out)


def rdp_gaussian_without_replacement(
    *,
    sample_size: int,
    population: int,
    noise_multiplier: float,
    orders: Sequence[float] = ORDERS,
) -> np.ndarray:
    """Renyi DP (replace-one) of one Gaussian release on ``sample_size`` of ``population``.

    Parameters
    ----------
    sample_size, population : int
        ``m`` of ``N``, drawn uniformly without replacement; ``1 <= m <= N``. ``m == N``
        is no sampling (the plain Gaussian mechanism: no amplification).
    noise_multiplier : float
        Noise standard deviation over the replace-one sensitivity; finite and > 0.
    orders : sequence of float
        RDP orders, each > 1.

    Returns
    -------
    numpy.ndarray
        An upper bound of the RDP at each order (one release; ``k`` releases compose to
        ``k`` times it).
    """
    for key, value in (("sample_size", sample_size), ("population", population)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(key, allowed="an integer >= 1", got=value)
    if sample_size > population:
        raise invalid("sample_size", allowed=f"at most population ({population})", got=sample_size)
    sigma = noise_multiplier
    real = isinstance(sigma, numbers.Real) and not isinstance(sigma, bool)
    if not (real and math.isfinite(sigma) and sigma > 0):
        raise invalid("noise_multiplier", allowed="a finite number > 0", got=noise_multiplier)
    alphas = np.asarray(orders, dtype=np.float64)
    if alphas.ndim != 1 or not alphas.size or not np.all(np.isfinite(alphas) & (alphas > 1)):
        raise invalid("orders", allowed="finite numbers > 1", got=list(orders))
    gaussian = alphas / (2 * sigma**2)
    if sample_size == population:
        return gaussian
    cumulants = _cumulants(sample_size / population, float(sigma), math.ceil(float(alphas.max())))
    out = np.empty_like(alphas)
    for idx, a in enumerate(alphas):
        lo, hi = math.floor(a), math.ceil(a)
        t = a - lo
        out[idx] = ((1 - t) * cumulants[lo] + t * cumulants[hi]) / (a - 1)
    # Sampling never hurts: the output is a mixture over cohorts of pairs that are equal
    # or Gaussian neighbours, and Renyi divergence is jointly quasi-convex. The bound
    # above is loose near m = N (at 99 of 100 it exceeds the Gaussian's), so take both.
    return np.minimum(out, gaussian)


def epsilon_from_rdp(*, rdp: np.ndarray, orders: Sequence[float] = ORDERS, delta: float) -> float:
    """(epsilon, delta) from RDP at several orders (Balle et al. 2020, as Opacus converts)."""
    eps, _ = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return max(float(eps), 0.0)
