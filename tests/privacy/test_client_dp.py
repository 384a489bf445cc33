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
    assert mech.share_std == pytest.approx(1.2 * 0.5 / math.sqrt(7))
    # Any 7 of them: std noise_multiplier * clip_norm, the Gaussian mechanism with
    # sensitivity clip_norm; all 8 (what the server alone sees): sqrt(8 / 7) times that.
    assert np.std(np.sum(shares[1:], axis=0)) == pytest.approx(1.2 * 0.5, rel=0.03)
    assert np.std(np.sum(shares, axis=0)) == pytest.approx(1.2 * 0.5 * math.sqrt(8 / 7), rel=0.03)
    assert mech.effective_noise_multiplier(contributors=8) == pytest.approx(1.2 * math.sqrt(8 / 7))
    assert mech.effective_noise_multiplier(contributors=8, colluders=1) == pytest.approx(1.2)
    assert mech.effective_noise_multiplier(contributors=8, colluders=2) < 1.2


@pytest.mark.parametrize("t", [2, 3, 5, 8])
def test_no_participant_sees_the_others_sum_with_less_noise_than_the_mechanism(t: int):
    """#14.3: every node knows its own share. With t contributors, the sum minus one
    node's share holds t - 1 shares, and must still carry noise std >= z * C."""
    z, c = 1.1, 0.5
    mech = ClientDP(clip_norm=c, noise_multiplier=z, min_contributors=t)
    # Exact: t - 1 independent shares of variance share_std**2.
    assert (t - 1) * mech.share_std**2 >= (z * c) ** 2 * (1 - 1e-12)
    # Sampled, with real shares from one fixed generator.
    rng = np.random.default_rng(14_3)
    zero = [np.zeros(40_000)]
    shares = [clip_and_noise(zero, mechanism=mech, rng=rng).arrays[0] for _ in range(t)]
    total = np.sum(np.asarray(shares, dtype=np.float64), axis=0)
    for own in shares:  # each participant subtracts what it knows: its own share
        others = total - own
        # 40k samples: the sample std is within ~1% of the true one (4 sigma: 1.4%).
        assert np.std(others) >= z * c * (1 - 0.015)
    # ... and what the server alone sees (all t shares) is at least as noisy.
    assert np.std(total) >= z * c * (1 - 0.015)


def test_a_single_contributor_share_is_the_whole_mechanism():
    mech = ClientDP(clip_norm=0.5, noise_multiplier=1.2, min_contributors=1)
    assert mech.share_std == pytest.approx(1.2 * 0.5)


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
