"""A node's run plans: the noise of each run, fixed at its first round.

The node's ``privacy.max-epsilon`` bounds everything ever released about each record, over
all runs and data sets (:mod:`fedguard.privacy.record_budget`). When a run asks for its
first round, the node plans it once: the noise multiplier is calibrated so that the
most-spent record of the data set *plus* every planned round of this run stays within
``max-epsilon`` (and, if set, the run alone within ``run-epsilon``). The plan fixes the
run's ``planned_rounds``; the node checks every round against both bounds again (a plan
is a record of a choice, never a licence: editing it frees nothing). A run that cannot
fit (the budget is spent, or would need more noise than the node's
``max-noise-multiplier``, beyond which its updates would carry no signal) is refused
before any training, with the figures. The plan is stored
(``run-plans.json``, 0600, keyed by the keyed data set fingerprint and the run), so a
restarted server or node keeps the same noise for the rest of the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedguard._io import atomic_write_json
from fedguard.errors import BudgetExceededError, StateFileError
from fedguard.files import PLANS_FILE
from fedguard.privacy import GaussianEvent
from fedguard.privacy.calibration import least_noise_that_fits

__all__ = ["PLANS_FILE", "RunPlan", "plan_run"]

_BISECTION_STEPS = 60


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """How one run spends a data set's budget (fixed at the run's first round)."""

    run: str
    dataset_fingerprint: str
    noise_multiplier: float
    planned_rounds: int
    epsilon_before: float  # the most-spent record's epsilon when the run was planned
    epsilon_planned: float  # after every planned round of this run
    max_epsilon: float
    delta: float
    accountant: str
    created: str


def _load(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise StateFileError(
            f"{path}: unreadable run plans ({' '.join(str(exc).split())[:120]}); refusing"
        ) from None
    if not isinstance(data, dict):
        raise StateFileError(f"{path}: expected a JSON object of run plans; refusing")
    return data


def _plan(entry: object, *, path: Path, key: str) -> RunPlan:
    """A stored plan, checked: it sets this run's noise, so nothing malformed is used."""
    kinds = {f.name: f.type for f in dataclasses.fields(RunPlan)}  # "str", "float", "int"
    if not isinstance(entry, dict) or set(entry) != set(kinds):
        raise StateFileError(
            f"{path}: run plan {key!r}: expected the fields {sorted(kinds)}; refusing"
        )
    for name, kind in kinds.items():
        v = entry[name]
        if kind == "str":
            ok = isinstance(v, str)
        elif kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1
        else:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and v >= 0 and (name != "noise_multiplier" or v > 0)
        if not ok:
            raise StateFileError(
                f"{path}: run plan {key!r}: {name}: expected a valid {kind}, got {v!r}; refusing"
            )
    return RunPlan(**entry)


def plan_run(
    *,
    state_dir: Path,
    run: str,
    fingerprint: str,
    epsilon_after: Callable[[GaussianEvent], float],
    run_epsilon_after: Callable[[GaussianEvent], float],
    round_event: GaussianEvent,
    planned_rounds: int,
    max_epsilon: float,
    run_epsilon: float | None,
    min_noise_multiplier: float,
    max_noise_multiplier: float,
    delta: float,
    accountant: str,
) -> RunPlan:
    """The run's stored plan, or a new one; ``BudgetExceededError`` if it cannot fit.

    ``round_event`` gives one round's sample rate and steps (its noise is ignored);
    ``epsilon_after(event)`` is the most-spent record's lifetime epsilon after ``event``,
    ``run_epsilon_after(event)`` this run's own after it.
    """
    path = state_dir / PLANS_FILE
    plans = _load(path)
    key = f"{fingerprint} {run}"
    if key in plans:
        return _plan(plans[key], path=path, key=key)
    method = accountant

    def planned(sigma: float) -> GaussianEvent:
        return GaussianEvent(
            noise_multiplier=sigma,
            sample_rate=round_event.sample_rate,
            steps=round_event.steps * planned_rounds,
        )

    def fits(sigma: float) -> bool:
        ok = epsilon_after(planned(sigma)) <= max_epsilon
        return ok and (run_epsilon is None or run_epsilon_after(planned(sigma)) <= run_epsilon)

    before = epsilon_after(GaussianEvent(noise_multiplier=1.0, sample_rate=1.0, steps=0))

    if not fits(max_noise_multiplier):
        cap = "" if run_epsilon is None else f" (run-epsilon {run_epsilon:g})"
        raise BudgetExceededError(
            f"run {run!r} refused before any training: the most-spent record of data set "
            f"{fingerprint[:17]}… has spent epsilon {before:.4f} of this node's lifetime "
            f"budget {max_epsilon:g}{cap} "
            f"(delta {delta:g}, {method}); {planned_rounds} more rounds would exceed it "
            f"even at this node's max-noise-multiplier {max_noise_multiplier:g}"
        )
    least = least_noise_that_fits(
        fits=fits, low=0.0, high=max_noise_multiplier, halvings=_BISECTION_STEPS
    )
    sigma = max(least, min_noise_multiplier)
    plan = RunPlan(
        run=run,
        dataset_fingerprint=fingerprint,
        noise_multiplier=sigma,
        planned_rounds=planned_rounds,
        epsilon_before=before,
        epsilon_planned=epsilon_after(planned(sigma)),
        max_epsilon=max_epsilon,
        delta=delta,
        accountant=method,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    plans[key] = asdict(plan)
    atomic_write_json(path, plans, mode=0o600)
    return plan
