"""Client-level DP: clipping, each node's noise share, and the server's accounting."""

import math

import numpy as np
import pytest

from fedguard.errors import ConfigError
from fedguard.privacy.client_dp import ClientDP, client_level_spent, clip_and_noise


def test_updates_are_clipped_to_the_norm_before_noise():
    mech = ClientDP(clip_norm=1.0, noise_multiplier=1e-9, min_contributors=1)
    big = [np.full((3, 4), 2.0), np.full(5, -2.0)]
    out = clip_and_noise(big, mechanism=mech, rng=np.random.default_rng(0))
    assert out.clipped and out.norm == pytest.approx(2.0 * math.sqrt(17))
    norm = math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in out.arrays))
    assert norm == pytest.approx(1.0, rel=1e-6)
    # Direction kept: a scaled copy of the input.
    assert out.arrays[0][0, 0] / out.arrays[1][0] == pytest.approx(-1.0, rel=1e-6)
    small = clip_and_noise([np.full(4, 0.1)], mechanism=mech, rng=np.random.default_rng(0))
    assert not small.clipped
    np.testing.assert_allclose(small.arrays[0], 0.1, rtol=1e-6)


def test_the_shares_of_t_nodes_sum_to_the_mechanisms_noise():
    mech = ClientDP(clip_norm=0.5, noise_multiplier=1.2, min_contributors=8)
    rng = np.random.default_rng(1)
    zero = [np.zeros(20_000)]
    shares = [clip_and_noise(zero, mechanism=mech, rng=rng).arrays[0] for _ in range(8)]
    assert np.std(shares[0]) == pytest.approx(mech.share_std, rel=0.03)
    # A sum of min_contributors shares: std noise_multiplier * clip_norm, the Gaussian
    # mechanism with sensitivity clip_norm.
    assert np.std(np.sum(shares, axis=0)) == pytest.approx(1.2 * 0.5, rel=0.03)


def test_client_level_epsilon_grows_with_rounds():
    # Cross-checked against dp_accounting in test_client_dp_accounting.py.
    eps = [
        client_level_spent(
            noise_multiplier=1.0, num_clients=100, cohort_size=10, rounds=r, delta=1e-5
        ).epsilon
        for r in (1, 10, 100)
    ]
    assert eps[0] < eps[1] < eps[2]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"clip_norm": 0.0, "noise_multiplier": 1.0, "min_contributors": 2}, "client-clip"),
        ({"clip_norm": 1.0, "noise_multiplier": math.nan, "min_contributors": 2}, "noise"),
        ({"clip_norm": 1.0, "noise_multiplier": 1.0, "min_contributors": 0}, "contributors"),
    ],
)
def test_bad_mechanisms_are_refused(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ClientDP(**kwargs)


def test_non_finite_updates_are_refused():
    mech = ClientDP(clip_norm=1.0, noise_multiplier=1.0, min_contributors=1)
    with pytest.raises(ValueError, match="finite"):
        clip_and_noise([np.array([np.nan])], mechanism=mech, rng=np.random.default_rng(0))
