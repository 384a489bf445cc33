"""DP centre/scale: the sensitivity claim on neighbours, the estimate, the event."""

from __future__ import annotations

import numpy as np
import pytest

from fedguard.errors import ConfigError
from fedguard.privacy import Accountant, GaussianEvent
from fedguard.privacy.dp_scaling import dp_centre_scale, scaling_sensitivity, statistics

RANGES = [(0.0, 100.0), (-5.0, 5.0), (18.0, 90.0)]


def test_neighbours_never_move_the_statistics_more_than_the_sensitivity() -> None:
    rng = np.random.default_rng(0)
    worst = 0.0
    for trial in range(200):
        n = int(rng.integers(1, 40))
        # Values well outside the ranges too: clipping is what bounds the sensitivity.
        data = rng.uniform(-200, 300, size=(n, 3))
        base = statistics(values=data, ranges=RANGES)
        removed = statistics(values=np.delete(data, trial % n, axis=0), ranges=RANGES)
        added = statistics(values=np.vstack([data, rng.uniform(-1e6, 1e6, (1, 3))]), ranges=RANGES)
        for other in (removed, added):
            worst = max(worst, float(np.linalg.norm(base - other)))
    assert worst <= scaling_sensitivity(3) + 1e-9
    # The bound is tight: a record at a corner of every range reaches it.
    corner = np.array([[100.0, 5.0, 90.0]])
    gap = np.linalg.norm(
        statistics(values=corner, ranges=RANGES) - statistics(values=corner[:0], ranges=RANGES)
    )
    assert gap == pytest.approx(scaling_sensitivity(3))


def test_small_noise_recovers_mean_and_std_of_the_clipped_values() -> None:
    data = np.random.default_rng(1).normal([50, 0, 40], [10, 1, 8], size=(5000, 3))
    est = dp_centre_scale(
        values=data, ranges=RANGES, noise_multiplier=0.01, rng=np.random.default_rng(2)
    )
    clipped = np.clip(data, [r[0] for r in RANGES], [r[1] for r in RANGES])
    np.testing.assert_allclose(est.centre, clipped.mean(axis=0), rtol=0.01, atol=0.05)
    np.testing.assert_allclose(est.scale, clipped.std(axis=0), rtol=0.02)


def test_noise_depends_on_the_generator_only() -> None:
    data = np.random.default_rng(3).uniform(0, 100, size=(50, 3))
    a, b, c = (
        dp_centre_scale(values=data, ranges=RANGES, noise_multiplier=1.0, rng=g)
        for g in (np.random.default_rng(7), np.random.default_rng(7), np.random.default_rng(8))
    )
    np.testing.assert_array_equal(a.centre, b.centre)
    assert not np.array_equal(a.centre, c.centre)
    assert (a.scale > 0).all()


def test_event_composes_with_training_in_one_accountant() -> None:
    est = dp_centre_scale(
        values=np.zeros((10, 3)), ranges=RANGES, noise_multiplier=2.0, rng=np.random.default_rng(0)
    )
    assert est.event == GaussianEvent(noise_multiplier=2.0, sample_rate=1.0, steps=1)
    training = GaussianEvent(noise_multiplier=1.1, sample_rate=0.05, steps=200)
    alone, both = Accountant(method="rdp"), Accountant(method="rdp")
    alone.compose(training)
    both.compose(est.event)
    both.compose(training)
    eps_alone = alone.get_privacy_spent(delta=1e-5).epsilon
    eps_both = both.get_privacy_spent(delta=1e-5).epsilon
    assert eps_both > eps_alone  # the scaling release is not free


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier"),
        ({"ranges": [(1.0, 1.0), (0.0, 1.0), (0.0, 1.0)]}, "ranges"),
        ({"values": np.zeros((4, 2))}, "values"),
    ],
)
def test_bad_inputs_are_one_line_errors(kwargs: dict[str, object], key: str) -> None:
    args: dict[str, object] = {
        "values": np.zeros((4, 3)),
        "ranges": RANGES,
        "noise_multiplier": 1.0,
        "rng": np.random.default_rng(0),
    }
    args.update(kwargs)
    with pytest.raises(ConfigError, match=f"^{key}: expected"):
        dp_centre_scale(**args)  # type: ignore[arg-type]
