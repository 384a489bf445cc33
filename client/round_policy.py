"""Whether a node's policy lets a round run, and at what noise.

The server only asks; these checks decide, before anything is written or trained: the
local epochs asked against ``max-local-epochs``, the run's noise plan (fixed at its first
round, :mod:`fedguard.client.budget`), the rounds the run planned and has trained, its
``run-epsilon`` and the most-spent record's ``max-epsilon``. Each refusal is a
:class:`~fedguard.errors.RefusalError` whose one line names the reason. It does not import
Flower.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedguard.client.budget import RunPlan, plan_run
from fedguard.errors import BudgetExceededError, PolicyRefusalError, RefusalError
from fedguard.fl.loop import TrainRequest
from fedguard.node_config import PolicySection
from fedguard.privacy import GaussianEvent, sample_rate_for, steps_per_epoch
from fedguard.privacy.record_budget import RecordBudgetError, RecordSpend

__all__ = ["RoundPlan", "check_local_epochs", "check_round", "plan_round"]


@dataclass(frozen=True, kw_only=True)
class RoundPlan:
    """A round the policy allows: the run's plan, the round's event and what it costs."""

    plan: RunPlan
    event: GaussianEvent  # charged for the round (the plan's noise, the round's steps)
    sample_rate: float
    steps: int
    epsilon_after: float  # the most-spent record's, every run, once the round completes


def check_local_epochs(request: TrainRequest, policy: PolicySection) -> None:
    """Refuse more local epochs than the node's ``max-local-epochs``."""
    if request.local_epochs > policy.max_local_epochs:
        raise PolicyRefusalError(
            f"round {request.server_round} refused: local-epochs {request.local_epochs} > "
            f"this node's max-local-epochs {policy.max_local_epochs}"
        )


def plan_round(
    *,
    state_dir: Path,
    policy: PolicySection,
    request: TrainRequest,
    spend: RecordSpend,
    fingerprint: str,
    num_examples: int,
    pre: tuple[GaussianEvent, ...],
) -> RoundPlan:
    """The round's noise and cost, or a ``RefusalError`` naming why it may not run.

    ``spend`` is every record's spend from the ledger; ``pre`` a release still to come
    before the round (dp scaling), counted in every check so that a run that cannot fit
    is refused before that release, and the plan sees it.
    """
    r, run = request.server_round, request.run_key
    method, delta = policy.accountant, policy.delta

    def lifetime_after(event: GaussianEvent) -> float:
        return spend.epsilon(method=method, delta=delta, extra=(*pre, event))

    def run_after(event: GaussianEvent) -> float:  # this run's events alone, per record
        return spend.epsilon(method=method, delta=delta, extra=(event,), run=run)

    n = num_examples
    q = sample_rate_for(num_examples=n, batch_size=request.batch_size)
    steps = request.local_epochs * steps_per_epoch(num_examples=n, batch_size=request.batch_size)
    try:
        plan = plan_run(
            state_dir=state_dir,
            run=run,
            fingerprint=fingerprint,
            epsilon_after=lifetime_after,
            run_epsilon_after=run_after,
            round_event=GaussianEvent(noise_multiplier=1.0, sample_rate=q, steps=steps),
            planned_rounds=max(1, request.total_rounds),
            max_epsilon=policy.max_epsilon,
            run_epsilon=policy.run_epsilon,
            min_noise_multiplier=policy.min_noise_multiplier,
            max_noise_multiplier=policy.max_noise_multiplier,
            delta=delta,
            accountant=method,
        )
        event = GaussianEvent(noise_multiplier=plan.noise_multiplier, sample_rate=q, steps=steps)
        check_round(
            request,
            planned=plan.planned_rounds,
            trained=spend.rounds(run=run),
            run_epsilon=run_after(event),
            cap=policy.run_epsilon,
        )
        after = lifetime_after(event)
    except RecordBudgetError as exc:  # group privacy did not converge
        raise BudgetExceededError(f"round {r} refused: {exc}") from None
    if after > policy.max_epsilon:
        raise BudgetExceededError(
            f"round {r} refused: the most-spent record would reach epsilon {after:.4f} > "
            f"this node's max-epsilon {policy.max_epsilon:g} at delta {delta:g} ({method})"
        )
    return RoundPlan(plan=plan, event=event, sample_rate=q, steps=steps, epsilon_after=after)


def check_round(
    request: TrainRequest, *, planned: int, trained: int, run_epsilon: float, cap: float | None
) -> None:
    """A run trains at most its planned rounds, each within ``run-epsilon`` (``cap``)."""
    r, run = request.server_round, request.run_key
    why: str | None = None
    kind: type[RefusalError] = PolicyRefusalError
    if max(1, request.total_rounds) != planned:
        why = f"total-rounds {request.total_rounds} differs from the {planned} rounds planned"
    elif r > planned:
        why = f"run {run!r} planned {planned} rounds"
    elif trained >= planned:
        why = f"run {run!r} already trained {trained} rounds of the {planned} it planned"
    elif cap is not None and run_epsilon > cap:
        why = f"run {run!r} would reach epsilon {run_epsilon:.4f} > run-epsilon {cap:g}"
        kind = BudgetExceededError
    if why is not None:
        raise kind(f"round {r} refused: {why}")
