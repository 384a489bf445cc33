"""Per-class loss weights that keep DP-SGD's per-example bound.

A rare class (3% defaulters) contributes 3% of a batch's clipped gradient sum, and DP
noise is added at the scale of ONE example's clipped gradient: the common class drowns
the rare one. Weighting each example's loss by its class's weight ``w[y]`` before the
per-example gradient is taken and clipped changes what each example pushes, never how
far: the gradient of ``w[y] * loss`` is ``w[y]`` times the example's gradient, and
clipping then bounds its norm by the clipping norm C whatever ``w[y]`` is, so the
sensitivity (adding or removing one example moves the clipped sum by at most C) and
every epsilon are unchanged. Weights are restricted to ``(0, 1]`` so that an example
below the clipping norm is only ever shrunk (``w * |g| <= |g|``); the common class is
weighted down, never the rare one up.

The weights must be public constants (declared in the configuration, e.g. from a
published prevalence), never computed from a node's own label counts: anything computed
from the records before DP-SGD is part of the mechanism and would need its own
accounting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedguard.errors import invalid

__all__ = ["check_class_weights", "weights_for_prevalence"]


def check_class_weights(
    weights: Sequence[float], *, num_classes: int | None = None, key: str = "class-weights"
) -> tuple[float, ...]:
    """``weights`` as a tuple of floats in ``(0, 1]``, one per class (ConfigError if not)."""
    allowed = "one weight per class, each a number in (0, 1] (e.g. 0.05,1)"
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence):
        raise invalid(key, allowed=allowed, got=weights)
    if len(weights) < 2 or (num_classes is not None and len(weights) != num_classes):
        count = "at least 2" if num_classes is None else str(num_classes)
        raise invalid(key, allowed=f"{count} weights, each in (0, 1]", got=list(weights))
    out: list[float] = []
    for w in weights:
        real = isinstance(w, int | float) and not isinstance(w, bool)
        if not (real and math.isfinite(w) and 0 < w <= 1):
            raise invalid(key, allowed=allowed, got=list(weights))
        out.append(float(w))
    return tuple(out)


def weights_for_prevalence(prevalence: Sequence[float]) -> tuple[float, ...]:
    """Balanced weights from a DECLARED class prevalence: ``min(p) / p_c`` per class.

    Every class then carries the same total weight in expectation, and the rarest class
    has weight 1 (none above). ``prevalence`` is public (a published rate), not counted
    on a node's records.
    """
    allowed = "class shares, each a number in (0, 1)"
    ok = len(prevalence) >= 2 and all(
        isinstance(p, int | float) and not isinstance(p, bool) and 0 < p < 1 for p in prevalence
    )
    if not ok:
        raise invalid("class-prevalence", allowed=allowed, got=list(prevalence))
    low = min(prevalence)
    return tuple(low / p for p in prevalence)
