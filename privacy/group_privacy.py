"""Group privacy: what (epsilon, delta)-DP says about a record that appears k times.

A mechanism that is (eps, d)-DP is (k eps, k e^((k-1) eps) d)-DP for groups of k (Dwork
and Roth, Thm 2.2 generalised). Never imports Flower nor ``fedguard.task``.
"""

from __future__ import annotations

import math

from .accountants import Accountant
from .record_index import RecordBudgetError

__all__ = ["group_epsilon"]

_MAX_ITERATIONS = 200


def group_epsilon(*, accountant: Accountant, group: int, delta: float) -> float:
    """Epsilon of ``accountant``'s composition for a group of ``group`` records at ``delta``.

    (eps, d)-DP gives (k eps, k e^((k-1) eps) d)-DP for groups of k; the per-record ``d``
    solves ``k e^((k-1) eps(d)) d = delta`` (fixed point, approached from above, then
    lowered until the inequality holds). ``RecordBudgetError`` if it does not converge.
    """
    if group <= 1:
        return accountant.get_privacy_spent(delta=delta).epsilon
    if not accountant.events:
        return 0.0
    k = group

    def group_delta(d: float) -> tuple[float, float]:
        eps = accountant.get_privacy_spent(delta=d).epsilon
        exponent = (k - 1) * eps
        return eps, (math.inf if exponent > 700 else k * math.exp(exponent) * d)

    d = delta / k
    for _ in range(_MAX_ITERATIONS):
        eps, _gd = group_delta(d)
        nxt = delta / (k * math.exp(min((k - 1) * eps, 700.0)))
        if not nxt > 1e-300:
            break
        if abs(nxt - d) <= 1e-9 * d:
            for _ in range(60):  # from above: step below until k e^((k-1)eps) d <= delta
                eps, gd = group_delta(nxt)
                if gd <= delta:
                    return k * eps
                nxt *= 0.99
            break
        d = nxt
    raise RecordBudgetError(
        f"group privacy for a record appearing {k} times: no per-record delta gives the "
        f"node's delta {delta:g} (epsilon too large for groups of {k}); refusing"
    )
