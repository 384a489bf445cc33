"""Budget calibration: the noise multiplier that makes a planned run fit (epsilon, delta).

The search runs on fedguard's own :class:`~fedguard.privacy.accountants.Accountant`, so the
guarantee is checked by the same code that later reports epsilon. For the returned sigma,
one event of ``steps`` steps (the whole planned run: rounds x local steps; an accountant
merges the rounds' identical events into exactly that) spends

    ``(1 - tolerance) * target <= epsilon <= target``.

The upper end is a hard guarantee: the value returned is the last one the search
evaluated, and it is never one whose epsilon exceeds the target. The lower end holds
wherever epsilon moves continuously with sigma, which is everywhere except where a PRV
accountant switches to its RDP fallback (grids beyond ``PRV_MAX_GRID_POINTS``, epsilon in
the hundreds); a target that falls into that jump gets the sigma at the jump, which spends
less than asked, never more. Measured over targets {0.5, 1, 3, 8}, sample rates
{0.01, 0.1, 0.5, 1}, steps {10, 100, 1000} at delta 1e-5: epsilon / target lies in
[0.990, 1.000] for RDP and PRV (``tests/privacy/test_calibration.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedguard._checks import integer, real
from fedguard.errors import ConfigError, invalid

from .accountants import Accountant, AccountantMethod, GaussianEvent

__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "MIN_NOISE_MULTIPLIER",
    "calibrate_noise_multiplier",
    "least_noise_that_fits",
]

MAX_NOISE_MULTIPLIER = 1e3
"""Largest sigma searched. Past ~1e3 the noise swamps any model update, so a budget that
needs more is reported as unreachable rather than "met" with a useless run."""

MIN_NOISE_MULTIPLIER = 1e-2
"""Smallest sigma searched; below it epsilon is in the hundreds or more for any useful run."""

_MAX_ITERATIONS = 100
_SIGMA_RESOLUTION = 1e-9
"""Relative width of the bracket at which the search stops. The band is ~1% of epsilon,
i.e. ~0.5% of sigma, so only a jump in epsilon (module docstring) ever gets this far."""


def _epsilon_for(
    sigma: float, *, method: AccountantMethod, q: float, steps: int, delta: float
) -> float:
    acc = Accountant(method=method)
    acc.compose(GaussianEvent(noise_multiplier=sigma, sample_rate=q, steps=steps))
    return acc.get_privacy_spent(delta=delta).epsilon


def _positive(
    key: str, value: object, *, upper: float | None = None, closed: bool = False
) -> float:
    if upper is None:
        allowed = "a finite number > 0"
    else:
        allowed = f"a number with 0 < {key.lstrip('-')} {'<=' if closed else '<'} {upper:g}"

    def ok(out: float) -> bool:
        too_big = upper is not None and (out > upper if closed else out >= upper)
        return out > 0.0 and not too_big

    return real(key, value, allowed=allowed, ok=ok)


def _digits4(x: float, *, up: bool) -> str:
    """``x`` to 4 significant digits, rounded towards the allowed side of a bound."""
    if not math.isfinite(x) or x <= 0.0:
        return f"{x:g}"
    scale = 10.0 ** (math.floor(math.log10(x)) - 3)
    return f"{(math.ceil if up else math.floor)(x / scale) * scale:.4g}"


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    method: AccountantMethod | str,
    tolerance: float = 0.01,
) -> float:
    """Smallest-noise sigma (within ``tolerance``) whose epsilon stays within the target.

    Parameters
    ----------
    target_epsilon : float
        Budget for the whole planned run (the ``--epsilon`` option); finite, > 0.
    delta : float
        The ``--delta`` option; 0 < delta < 1.
    sample_rate : float
        Poisson sampling rate per step; 0 < q <= 1.
    steps : int
        All DP-SGD steps of the run (rounds x local steps); >= 1.
    method : AccountantMethod or str
        Accountant analysis, ``"rdp"`` or ``"prv"``.
    tolerance : float
        Relative slack: the result's epsilon is in ``[(1 - tolerance) * target, target]``
        (see the module docstring for the one place the lower end can give way).

    Returns
    -------
    float
        The noise multiplier.

    Raises
    ------
    ConfigError
        A bad argument (named as its command-line option), or a target outside what sigma
        in ``[MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER]`` can reach; that message states
        the reachable range of ``--epsilon`` for this run.

    Examples
    --------
    >>> sigma = calibrate_noise_multiplier(
    ...     target_epsilon=3.0, delta=1e-5, sample_rate=0.01, steps=1000, method="rdp"
    ... )
    >>> acc = Accountant(method="rdp")
    >>> acc.compose(GaussianEvent(noise_multiplier=sigma, sample_rate=0.01, steps=1000))
    >>> 0.99 * 3.0 <= acc.get_privacy_spent(delta=1e-5).epsilon <= 3.0
    True
    """
    target = _positive("--epsilon", target_epsilon)
    d = _positive("--delta", delta, upper=1.0)
    q = _positive("sample_rate", sample_rate, upper=1.0, closed=True)
    n_steps = integer("steps", steps, minimum=1)
    tol = _positive("tolerance", tolerance, upper=1.0)
    accountant_method = Accountant(method=method).method

    def eps(sigma: float) -> float:
        return _epsilon_for(sigma, method=accountant_method, q=q, steps=n_steps, delta=d)

    def spends(sigma: float) -> str:
        return (
            f"what noise_multiplier={sigma:g} spends with the {accountant_method.value} "
            f"accountant at delta={d:g}, sample_rate={q:g}, steps={n_steps}"
        )

    start, step_down = 1.0, 2.0
    if accountant_method is AccountantMethod.PRV:
        # RDP is cheap (~10 ms) and within ~15% of PRV in sigma, so it seeds the PRV search.
        # PRV is the tighter bound: a target RDP cannot reach may still be reachable here.
        try:
            start = calibrate_noise_multiplier(
                target_epsilon=target,
                delta=d,
                sample_rate=q,
                steps=n_steps,
                method=AccountantMethod.RDP,
                tolerance=tol,
            )
            step_down = 1.25
        except ConfigError:
            pass
    return _search(
        eps,
        target=target,
        tol=tol,
        start=start,
        step_down=step_down,
        got=target_epsilon,
        spends=spends,
    )


def least_noise_that_fits(
    *, fits: Callable[[float], bool], low: float, high: float, halvings: int
) -> float:
    """The least noise multiplier in ``(low, high]`` for which ``fits`` holds, by bisection.

    For budgets that are not one event against one target, which
    :func:`calibrate_noise_multiplier` solves: a node's lifetime budget over every run and
    data set (``fedguard.client.budget``), or a target with events charged before training
    (``fedguard.fl.local``). ``fits`` must be monotone (more noise never spends more) and
    hold at ``high``; the result always fits (it is the last ``high`` found to fit, or
    ``high`` itself), and is within ``(high - low) / 2**halvings`` of the least that does.
    A noise multiplier of 0 is never tried (it is no mechanism).
    """
    for _ in range(halvings):
        mid = (low + high) / 2
        if mid > 0 and fits(mid):
            high = mid
        else:
            low = mid
    return high


def _search(
    eps: Callable[[float], float],
    *,
    target: float,
    tol: float,
    start: float,
    step_down: float,
    got: object,
    spends: Callable[[float], str],
) -> float:
    def good(e: float) -> bool:
        return (1.0 - tol) * target <= e <= target

    # Bracket: eps(lo) > target >= eps(hi).
    lo: float | None = None
    e_lo = math.inf
    hi = start
    e_hi = eps(hi)
    while e_hi > target:
        if hi >= MAX_NOISE_MULTIPLIER:
            raise invalid(
                "--epsilon",
                allowed=f"a number >= {_digits4(e_hi, up=True)} ({spends(hi)}, the most "
                "noise fedguard adds)",
                got=got,
                hint="raise --epsilon, or plan fewer rounds or local steps",
            )
        lo, e_lo = hi, e_hi
        hi = min(hi * 2.0, MAX_NOISE_MULTIPLIER)
        e_hi = eps(hi)
    if good(e_hi):
        return hi
    while lo is None:
        if hi <= MIN_NOISE_MULTIPLIER:
            raise invalid(
                "--epsilon",
                allowed=f"a number < {_digits4(e_hi, up=False)} ({spends(hi)}, the least "
                "noise fedguard adds; a larger budget protects nothing)",
                got=got,
                hint="lower --epsilon",
            )
        candidate = max(hi / step_down, MIN_NOISE_MULTIPLIER)
        e = eps(candidate)
        if e > target:
            lo, e_lo = candidate, e
        else:
            hi, e_hi = candidate, e
            if good(e_hi):
                return hi

    # Refine in log-log space, where epsilon is close to a power law in sigma: interpolate
    # towards the middle of the accepted band, kept 10% inside the bracket and replaced by
    # plain bisection whenever the previous step failed to halve it (so it always converges).
    aim = math.log(target * (1.0 - tol / 2.0))
    width = math.log(hi / lo)
    for _ in range(_MAX_ITERATIONS):
        a, b = math.log(lo), math.log(hi)
        t = (a + b) / 2.0
        if b - a <= width / 2.0 and math.isfinite(e_lo) and e_lo > 0.0 and e_hi > 0.0:
            fa, fb = math.log(e_lo) - aim, math.log(e_hi) - aim
            t = min(max(a + (b - a) * fa / (fa - fb), a + 0.1 * (b - a)), b - 0.1 * (b - a))
        width = b - a
        mid = math.exp(t)
        if b - a < _SIGMA_RESOLUTION or not lo < mid < hi:
            break  # epsilon jumps across the band here
        e_mid = eps(mid)
        if e_mid > target:
            lo, e_lo = mid, e_mid
        else:
            hi, e_hi = mid, e_mid
            if good(e_hi):
                return hi
    # The band was not reached (epsilon jumps across it, see the module docstring). hi
    # only ever takes values whose epsilon was computed and found <= target, so it is
    # still within the budget: spend less than asked rather than more.
    return hi
