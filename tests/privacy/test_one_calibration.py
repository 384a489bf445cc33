"""Calibration has one home (privacy/calibration.py), and it gives the old answers.

The node's run planning (``client/budget.py``) and the reserved-events calibration of the
local round (``fedguard/fl/local.py``) each had their own bisection; both now call
:func:`fedguard.privacy.calibration.least_noise_that_fits`. The oracles below are the
removed loops, verbatim: the noise each picks must be bit-for-bit the same.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

from fedguard.client.budget import plan_run
from fedguard.fl.local import PrivacyBudget, noise_for_budget
from fedguard.privacy import Accountant, GaussianEvent, calibrate_noise_multiplier
from fedguard.privacy.calibration import least_noise_that_fits

ROOT = Path(__file__).resolve().parents[2]
DELTA = 1e-5


def _old_budget_bisection(fits: Callable[[float], bool], max_noise: float) -> float:
    low, high = 0.0, max_noise
    for _ in range(60):
        mid = (low + high) / 2
        if mid > 0 and fits(mid):
            high = mid
        else:
            low = mid
    return high


def _old_reserved_bisection(fits: Callable[[float], bool], sigma: float) -> float:
    low, high = sigma, sigma
    while not fits(high):
        low, high = high, high * 2
    for _ in range(50):
        mid = (low + high) / 2
        if fits(mid):
            high = mid
        else:
            low = mid
    return high


def _spent_before(event: GaussianEvent) -> Callable[[GaussianEvent], float]:
    def after(new: GaussianEvent) -> float:
        acc = Accountant(method="rdp")
        acc.compose(event)
        acc.compose(new)
        return acc.get_privacy_spent(delta=DELTA).epsilon

    return after


@pytest.mark.parametrize(
    ("spent", "max_epsilon", "run_epsilon"),
    [(0, 3.0, None), (40, 5.0, None), (40, 8.0, 2.0), (0, 1.0, 0.5)],
)
def test_run_plan_noise_is_the_old_bisection(
    tmp_path: Path, spent: int, max_epsilon: float, run_epsilon: float | None
) -> None:
    before = GaussianEvent(noise_multiplier=1.1, sample_rate=0.1, steps=spent)
    lifetime, own = (
        _spent_before(before),
        _spent_before(before.__class__(noise_multiplier=1.0, sample_rate=1.0, steps=0)),
    )
    round_event = GaussianEvent(noise_multiplier=1.0, sample_rate=0.05, steps=20)
    plan = plan_run(
        state_dir=tmp_path,
        run="fed/r1",
        fingerprint="hmac:" + "ab" * 32,
        epsilon_after=lifetime,
        run_epsilon_after=own,
        round_event=round_event,
        planned_rounds=4,
        max_epsilon=max_epsilon,
        run_epsilon=run_epsilon,
        min_noise_multiplier=0.0,
        max_noise_multiplier=50.0,
        delta=DELTA,
        accountant="rdp",
    )

    def fits(sigma: float) -> bool:
        planned = GaussianEvent(noise_multiplier=sigma, sample_rate=0.05, steps=80)
        ok = lifetime(planned) <= max_epsilon
        return ok and (run_epsilon is None or own(planned) <= run_epsilon)

    assert plan.noise_multiplier == _old_budget_bisection(fits, 50.0)
    assert plan.epsilon_planned <= max_epsilon


def test_reserved_calibration_is_the_old_bisection() -> None:
    reserved = (GaussianEvent(noise_multiplier=8.0, sample_rate=1.0, steps=1),)
    budget = PrivacyBudget(
        target_epsilon=2.0, delta=DELTA, accountant="rdp", planned_rounds=3, reserved=reserved
    )
    got = noise_for_budget(budget=budget, num_examples=200, batch_size=20, local_epochs=1)
    steps, q = 3 * 10, 1 / 10
    plain = calibrate_noise_multiplier(
        target_epsilon=2.0, delta=DELTA, sample_rate=q, steps=steps, method="rdp"
    )

    def fits(s: float) -> bool:
        acc = Accountant(method="rdp")
        acc.compose(reserved[0])
        acc.compose(GaussianEvent(noise_multiplier=s, sample_rate=q, steps=steps))
        return acc.get_privacy_spent(delta=DELTA).epsilon <= 2.0

    assert got == _old_reserved_bisection(fits, plain)
    assert got > plain and fits(got)


def test_least_noise_that_fits_returns_a_fitting_value_within_the_resolution() -> None:
    least = least_noise_that_fits(fits=lambda s: s >= 0.7, low=0.0, high=8.0, halvings=40)
    assert 0.7 <= least <= 0.7 + 8.0 / 2**40
    assert least_noise_that_fits(fits=lambda s: True, low=0.0, high=8.0, halvings=10) > 0


def _bisects(tree: ast.AST) -> list[int]:
    """Loops that halve a ``low``/``high`` bracket: a hand-written bisection."""
    lines = []
    for loop in ast.walk(tree):
        if not isinstance(loop, ast.For | ast.While):
            continue
        for node in ast.walk(loop):
            if (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Div)
                and isinstance(node.left, ast.BinOp)
                and isinstance(node.left.op, ast.Add)
                and isinstance(node.right, ast.Constant)
                and node.right.value == 2
                and {"low", "high"} == {ast.unparse(n) for n in (node.left.left, node.left.right)}
            ):
                lines.append(node.lineno)
    return lines


def test_no_second_bisection_outside_privacy_calibration() -> None:
    found = []
    for folder in ("fedguard", "privacy", "client", "server", "simulations"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel == Path("privacy/calibration.py") or "proto" in rel.parts:
                continue
            found += [f"{rel}:{n}" for n in _bisects(ast.parse(path.read_text("utf-8")))]
    assert found == []
