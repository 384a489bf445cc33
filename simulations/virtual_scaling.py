"""A virtual client's ``scaling = "dp"`` columns: what a deployed node does, per client.

Each virtual client, before its first training round, estimates its dp columns' centre
and scale from its OWN rows with the Gaussian mechanism
(:func:`fedguard.privacy.dp_scaling.dp_centre_scale`), charges the event to its own
accountant (write-ahead, before any step on the scaled rows) and trains on its rows
scaled by its estimate from then on. The noise multiplier is the node's
(:data:`fedguard.fl.scaling.SCALING_NOISE`), and the training noise is calibrated
with that event reserved (:attr:`fedguard.fl.local.PrivacyBudget.reserved`), so
the client's final epsilon lands at, never above, the target. The noise is drawn from a
generator seeded by (run seed, stream, client id): a simulation is reproducible,
whichever clients a round samples first. Without DP (``--no-dp``) nothing is charged
and the estimate is exact. It never imports Flower.
"""

from __future__ import annotations

import numpy as np

from fedguard.fl.local import PrivacyBudget
from fedguard.fl.scaling import ReleasedScaling, apply_released, scaling_event
from fedguard.fl.seeds import Stream, stream_rng
from fedguard.privacy import GaussianEvent
from fedguard.privacy.dp_scaling import SCALE_FLOOR, dp_centre_scale
from fedguard.task.schema import DPScalingPlan

__all__ = ["reserve_scaling", "scale_client_rows"]


def reserve_scaling(
    budget: PrivacyBudget | None, plan: DPScalingPlan | None
) -> PrivacyBudget | None:
    """``budget`` with the scaling release reserved (unchanged without dp columns or DP)."""
    if budget is None or plan is None:
        return budget
    event = scaling_event(min_noise_multiplier=budget.min_noise_multiplier)
    return PrivacyBudget(
        target_epsilon=budget.target_epsilon,
        delta=budget.delta,
        accountant=budget.accountant,
        planned_rounds=budget.planned_rounds,
        min_noise_multiplier=budget.min_noise_multiplier,
        reserved=(*budget.reserved, event),
    )


def scale_client_rows(
    x: np.ndarray, *, plan: DPScalingPlan, event: GaussianEvent | None, seed: int, client_id: int
) -> np.ndarray:
    """Client ``client_id``'s rows with its dp columns scaled by its own estimate (DP with
    ``event``'s noise multiplier; exact when ``event`` is None, i.e. without DP). The
    caller charges ``event`` to the client's accountant before training on the result."""
    cols = list(plan.columns)
    values = np.asarray(x)[:, cols].astype(np.float64)
    if event is None:
        low, high = np.asarray(plan.ranges, dtype=np.float64).T
        centre = values.mean(axis=0) if len(values) else (low + high) / 2
        spread = values.std(axis=0) if len(values) else (high - low) / 2
        scale = np.maximum(spread, SCALE_FLOOR * (high - low) / 2)
    else:
        est = dp_centre_scale(
            values=values,
            ranges=plan.ranges,
            noise_multiplier=event.noise_multiplier,
            rng=stream_rng(seed=seed, stream=Stream.DP_SCALING, ids=(client_id,)),
        )
        centre, scale = est.centre, est.scale
    released = ReleasedScaling(
        key="",
        centre=tuple(float(v) for v in centre),
        scale=tuple(float(v) for v in scale),
        noise_multiplier=0.0 if event is None else event.noise_multiplier,
        ledger_seq=0,
    )
    return apply_released(x, plan=plan, released=released)
