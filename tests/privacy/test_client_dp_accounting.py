"""Client-level epsilon is accounted for the sampling actually done (issue #14.2).

Cohorts are ``m`` of ``N`` nodes drawn without replacement (``sample_cohort``). These
tests compare what fedguard reports with Google's ``dp_accounting`` (an independent
implementation) for that scheme, under the replace-one relation it needs, where one
node's update swapped for another moves the sum by ``2 * clip_norm`` (noise multiplier
``z / 2``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp

from fedguard.errors import ConfigError
from fedguard.fl.loop import sample_cohort
from fedguard.privacy.accountants import Accountant, GaussianEvent
from fedguard.privacy.client_dp import ClientLevelSpent, client_level_spent
from fedguard.privacy.without_replacement import ORDERS, rdp_gaussian_without_replacement

DELTA = 1e-5
# dp_accounting logs a warning for each fractional order its Poisson series gives up on.
logging.getLogger("absl").setLevel(logging.ERROR)


def _rdp(event: dp_accounting.DpEvent, rounds: int) -> np.ndarray:
    acc = dpa_rdp.RdpAccountant(
        orders=list(ORDERS), neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(event, rounds)
    return np.asarray(acc.rdp)


def reference_without_replacement(*, z: float, n: int, m: int, rounds: int) -> float:
    """dp_accounting's RDP epsilon for ``rounds`` Gaussian sums over ``m`` of ``n`` nodes.

    Per order, the smaller of dp_accounting's sampled-without-replacement bound and the
    unsampled Gaussian's (sampling cannot make a mechanism less private; the WBK19 bound
    is loose near m = N), as fedguard takes it.
    """
    gaussian = dp_accounting.GaussianDpEvent(z / 2)
    sampled = dp_accounting.SampledWithoutReplacementDpEvent(
        source_dataset_size=n, sample_size=m, event=gaussian
    )
    rdp = np.minimum(_rdp(sampled, rounds), _rdp(gaussian, rounds))
    eps, _ = dpa_rdp.compute_epsilon(list(ORDERS), list(rdp), DELTA)
    return float(eps)


def dp_accounting_without_replacement(*, z: float, n: int, m: int, rounds: int) -> float:
    """dp_accounting's own figure for the scheme (its sampled-without-replacement event)."""
    acc = dpa_rdp.RdpAccountant(
        orders=list(ORDERS), neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        source_dataset_size=n, sample_size=m, event=dp_accounting.GaussianDpEvent(z / 2)
    )
    acc.compose(event, rounds)
    return float(acc.get_epsilon(DELTA))


def reported(*, z: float, n: int, m: int, rounds: int) -> float:
    return client_level_spent(
        noise_multiplier=z, num_clients=n, cohort_size=m, rounds=rounds, delta=DELTA
    ).epsilon


@pytest.mark.parametrize("z", [0.5, 1.0, 2.0])
def test_the_issue_table_poisson_at_m_over_n_under_reports_and_the_new_figure_does_not(z):
    # The scheme fedguard runs: 10 of 100 nodes a round, 100 rounds.
    truth = reference_without_replacement(z=z, n=100, m=10, rounds=100)
    # The old figure: Poisson sampling at q = m / N (add/remove), which is not the scheme.
    poisson = Accountant(method="rdp")
    poisson.compose(GaussianEvent(noise_multiplier=z, sample_rate=0.1, steps=100))
    old = poisson.get_privacy_spent(delta=DELTA).epsilon
    assert old < truth / 1.9  # e.g. z = 1: 7.90 reported where the scheme gives 83.9
    new = reported(z=z, n=100, m=10, rounds=100)
    assert new == pytest.approx(truth, rel=1e-6)
    assert new >= truth * (1 - 1e-9)
    # Never above dp_accounting's own figure (equal unless the Gaussian cap bites: z=0.5).
    assert new <= dp_accounting_without_replacement(z=z, n=100, m=10, rounds=100) * (1 + 1e-6)


@pytest.mark.parametrize(("n", "m"), [(100, 10), (100, 1), (100, 50), (1000, 10), (20, 5), (3, 2)])
@pytest.mark.parametrize("z", [0.7, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("rounds", [1, 10, 300])
def test_client_level_epsilon_matches_dp_accounting_over_a_grid(n, m, z, rounds):
    truth = reference_without_replacement(z=z, n=n, m=m, rounds=rounds)
    ours = reported(z=z, n=n, m=m, rounds=rounds)
    assert ours == pytest.approx(truth, rel=1e-6)
    assert ours >= truth * (1 - 1e-9)  # an upper bound, never below the reference


def test_large_noise_stays_an_upper_bound_where_the_differences_cancel():
    # z = 40: the high-order forward differences cancel to rounding noise; fedguard adds
    # their error bound (never reporting less than the reference), within a few percent.
    truth = reference_without_replacement(z=40.0, n=100, m=50, rounds=1)
    ours = reported(z=40.0, n=100, m=50, rounds=1)
    assert truth * (1 - 1e-9) <= ours <= 1.5 * truth


def test_everyone_every_round_gets_no_amplification():
    # m == N: the plain Gaussian mechanism with sensitivity 2C each round, whatever N is.
    acc = dpa_rdp.RdpAccountant(
        orders=list(ORDERS), neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(dp_accounting.GaussianDpEvent(1.0 / 2), 20)
    gaussian = float(acc.get_epsilon(DELTA))
    for n in (2, 10, 100):
        assert reported(z=1.0, n=n, m=n, rounds=20) == pytest.approx(gaussian, rel=1e-9)
    assert reported(z=1.0, n=100, m=100, rounds=20) == pytest.approx(
        reference_without_replacement(z=1.0, n=100, m=100, rounds=20), rel=1e-9
    )
    # Sampling never reports more than no sampling: at 99 of 100 the sampled bound alone
    # (dp_accounting's figure) exceeds the Gaussian's, and fedguard keeps the smaller.
    assert dp_accounting_without_replacement(z=1.0, n=100, m=99, rounds=20) > gaussian
    assert reported(z=1.0, n=100, m=99, rounds=20) <= gaussian
    assert reported(z=1.0, n=100, m=10, rounds=20) < gaussian / 3
    spent = client_level_spent(
        noise_multiplier=1.0, num_clients=7, cohort_size=7, rounds=3, delta=DELTA
    )
    assert "no sampling" in spent.describe()


def test_the_sampler_the_engines_use_is_the_scheme_accounted():
    # Fixed size, no repeats, every node equally likely: m of N without replacement.
    n, m = 20, 5
    counts = np.zeros(n)
    for r in range(1, 2001):
        cohort = sample_cohort(seed=3, server_round=r, num_clients=n, cohort_size=m)
        assert len(cohort) == m == len(set(cohort))
        counts[cohort] += 1
    expected = 2000 * m / n
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))


def test_epsilon_grows_with_rounds_and_names_what_it_assumes():
    eps = [reported(z=1.0, n=100, m=10, rounds=r) for r in (0, 1, 10, 100)]
    assert eps[0] == 0.0
    assert eps[0] < eps[1] < eps[2] < eps[3]
    spent = client_level_spent(
        noise_multiplier=1.0, num_clients=100, cohort_size=10, rounds=100, delta=DELTA
    )
    fields = spent.as_dict()
    assert fields["neighbouring"] == "replace-one"
    assert fields["accountant"] == "rdp"
    assert fields["sampling"] == "10 of 100 nodes a round, without replacement"
    assert "replace-one" in spent.describe() and "without replacement" in spent.describe()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"noise_multiplier": 0.0}, "client noise multiplier"),
        ({"noise_multiplier": math.inf}, "client noise multiplier"),
        ({"noise_multiplier": True}, "client noise multiplier"),
        ({"cohort_size": 0}, "sample_size"),
        ({"cohort_size": 11, "num_clients": 10}, "sample_size"),
        ({"num_clients": 0, "cohort_size": 0}, "sample_size"),
        ({"rounds": -1}, "rounds"),
        ({"rounds": 2.0}, "rounds"),
        ({"delta": 0.0}, "delta"),
    ],
)
def test_bad_inputs_are_refused_naming_them(kwargs, fragment):
    args = {
        "noise_multiplier": 1.0,
        "num_clients": 10,
        "cohort_size": 5,
        "rounds": 3,
        "delta": DELTA,
        **kwargs,
    }
    with pytest.raises(ConfigError, match=fragment):
        client_level_spent(**args)


def test_orders_must_be_above_one():
    with pytest.raises(ConfigError, match="orders"):
        rdp_gaussian_without_replacement(
            sample_size=1, population=2, noise_multiplier=1.0, orders=[1.0, 2.0]
        )


def test_the_deployed_server_reports_the_scheme_it_runs(tmp_path: Path):
    # The server's call site: fraction 0.1 of 100 nodes; min-nodes can raise the cohort.
    from fedguard.deploy_config import load_federation_config
    from fedguard.server.deploy_parts import client_level

    toml = tmp_path / "federation.toml"
    toml.write_text(
        "[federation]\nrounds = 100\nfraction = 0.1\n[server]\ninsecure = true\n"
        "[client-dp]\nenabled = true\nnoise-multiplier = 1.0\nclip-norm = 0.5\n"
    )
    cfg = load_federation_config(toml)
    at = client_level(cfg, num_clients=100, cohort_size=10).after
    assert isinstance(at(100), ClientLevelSpent)
    assert at(100).epsilon == pytest.approx(
        reference_without_replacement(z=1.0, n=100, m=10, rounds=100), rel=1e-6
    )
    # A cohort larger than the federation is everyone: the scheme has no sampling.
    assert client_level(cfg, num_clients=5, cohort_size=8).after(3).epsilon == pytest.approx(
        reference_without_replacement(z=1.0, n=5, m=5, rounds=3), rel=1e-9
    )


def test_the_simulation_reports_the_scheme_it_runs(tmp_path: Path):
    # The in-process engine's call site, end to end: 3 of 6 clients a round.
    from fedguard.config import SimulationConfig
    from fedguard.simulations.runner import simulate

    cfg = SimulationConfig(
        out=tmp_path / "cdp",
        dataset="digits",
        model="logreg",
        clients=6,
        clients_per_round=3,
        rounds=2,
        epsilon=3.0,
        secagg=True,
        client_dp=True,
        client_noise=0.8,
        accountant="prv",  # the sample-level accountant; client-level is RDP regardless
    )
    summary = simulate(cfg)
    lines = (cfg.out / "metrics.jsonl").read_text().splitlines()
    got = [json.loads(line)["client_epsilon"] for line in lines]
    want = [reference_without_replacement(z=0.8, n=6, m=3, rounds=r) for r in (1, 2)]
    assert got == pytest.approx(want, rel=1e-6)
    assert summary.final_client_epsilon == pytest.approx(want[-1], rel=1e-6)
    written = json.loads((cfg.out / "summary.json").read_text())["client_level_dp"]
    assert written["epsilon"] == pytest.approx(want[-1], rel=1e-6)
    assert written["neighbouring"] == "replace-one"
    assert written["sampling"] == "3 of 6 nodes a round, without replacement"
    assert written["accountant"] == "rdp"
