"""calibrate_noise_multiplier: the result meets the budget within tolerance, checked with
the same Accountant that reports epsilon; bad inputs name the command-line option."""

from __future__ import annotations

import itertools
import math

import pytest

from fedguard.errors import ConfigError
from fedguard.privacy import Accountant, GaussianEvent, calibrate_noise_multiplier

DELTA = 1e-5
# Opacus suggests widening its RDP orders whenever the optimum sits at an end of its
# range (also inside its own PRV domain sizing); fedguard keeps Opacus's orders.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")
EPSILONS = (1.0, 3.0, 8.0)
RATES = (0.01, 0.1, 0.5)
STEPS = (10, 100, 1000)
# Fast suite: a Latin square over (epsilon, q), steps cycled, so every value of every axis
# appears three times; the full 27-point grid per method runs with `-m slow`.
LATIN = [
    (e, q, STEPS[(i + j) % 3])
    for (i, e), (j, q) in itertools.product(enumerate(EPSILONS), enumerate(RATES))
]
FULL = list(itertools.product(EPSILONS, RATES, STEPS))


def _check(method: str, target: float, q: float, steps: int) -> float:
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps, method=method
    )
    acc = Accountant(method=method)
    acc.compose(GaussianEvent(noise_multiplier=sigma, sample_rate=q, steps=steps))
    eps = acc.get_privacy_spent(delta=DELTA).epsilon
    assert 0.97 * target <= eps <= target, (sigma, eps)
    return sigma


@pytest.mark.parametrize(("target", "q", "steps"), LATIN)
def test_rdp_meets_target(target, q, steps):
    _check("rdp", target, q, steps)


@pytest.mark.parametrize(("target", "q", "steps"), [LATIN[0], LATIN[4], LATIN[8]])
def test_prv_meets_target_with_less_noise_than_rdp(target, q, steps):
    prv = _check("prv", target, q, steps)
    rdp = calibrate_noise_multiplier(
        target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps, method="rdp"
    )
    assert prv < rdp  # the tighter analysis buys the same budget with less noise


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rdp", "prv"])
@pytest.mark.parametrize(("target", "q", "steps"), FULL)
def test_full_grid(method, target, q, steps):
    _check(method, target, q, steps)


def test_more_steps_need_more_noise():
    sigmas = [
        calibrate_noise_multiplier(
            target_epsilon=3.0, delta=DELTA, sample_rate=0.05, steps=s, method="rdp"
        )
        for s in (10, 100, 1000)
    ]
    assert sigmas == sorted(sigmas) and sigmas[0] < sigmas[-1]


def test_tolerance_tightens_the_band():
    sigma = calibrate_noise_multiplier(
        target_epsilon=2.0, delta=DELTA, sample_rate=0.02, steps=500, method="rdp", tolerance=1e-4
    )
    acc = Accountant(method="rdp")
    acc.compose(GaussianEvent(sigma, 0.02, 500))
    assert 2.0 * (1 - 1e-4) <= acc.get_privacy_spent(delta=DELTA).epsilon <= 2.0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"target_epsilon": 0}, "--epsilon"),
        ({"target_epsilon": -1.0}, "--epsilon"),
        ({"target_epsilon": math.inf}, "--epsilon"),
        ({"target_epsilon": math.nan}, "--epsilon"),
        ({"target_epsilon": True}, "--epsilon"),
        ({"target_epsilon": "3"}, "--epsilon"),
        ({"delta": 0}, "--delta"),
        ({"delta": 1.0}, "--delta"),
        ({"delta": math.nan}, "--delta"),
        ({"delta": False}, "--delta"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"steps": 0}, "steps"),
        ({"steps": 10.0}, "steps"),
        ({"steps": True}, "steps"),
        ({"tolerance": 0.0}, "tolerance"),
        ({"tolerance": 1.0}, "tolerance"),
        ({"method": "gdp"}, "method"),
    ],
)
def test_bad_inputs_name_the_option(kwargs, key):
    args = {
        "target_epsilon": 3.0,
        "delta": DELTA,
        "sample_rate": 0.1,
        "steps": 100,
        "method": "rdp",
        **kwargs,
    }
    with pytest.raises(ConfigError, match=rf"^{key}: expected .*, got"):
        calibrate_noise_multiplier(**args)


def test_unreachable_budget_is_refused():
    # Full-batch steps, a million of them, at epsilon 0.01: more than sigma=1000 would need.
    with pytest.raises(ConfigError, match=r"^--epsilon: expected a budget reachable .*even noise"):
        calibrate_noise_multiplier(
            target_epsilon=0.01, delta=DELTA, sample_rate=1.0, steps=1_000_000, method="rdp"
        )


def test_meaningless_budget_is_refused():
    with pytest.raises(ConfigError, match=r"^--epsilon: expected a budget that needs"):
        calibrate_noise_multiplier(
            target_epsilon=1e9, delta=DELTA, sample_rate=0.01, steps=10, method="rdp"
        )
