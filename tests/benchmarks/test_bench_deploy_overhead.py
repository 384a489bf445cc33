"""benchmarks/bench_deploy_overhead.py against a real deployment: its ``Deployment`` (SuperLink
with TLS + node auth, patched SuperNodes on loopback) runs rounds, and the patched round is
the fast one the benchmark reports. Moved here from tests/deploy_flower/test_workarounds.py
(#20.6): a test of the benchmark, no longer a product test borrowing benchmark code."""

from __future__ import annotations

import pytest

from benchmarks.bench_deploy_overhead import Deployment


@pytest.mark.deploy
def test_the_benchmark_runs_rounds_on_a_real_patched_deployment(tmp_path):
    """SuperLink (TLS + node auth) and 2 patched SuperNodes on loopback run every round and
    report its time and each node's receive/reply lag. How fast a round is belongs to
    ``make bench-deploy`` (stock ~6 s a round, patched under 2.5 s), not to a timed test."""
    # Deployment stops every process it started (SIGTERM, then SIGKILL) on the way out.
    with Deployment(tmp_path, nodes=2, config="warm") as dep:
        times = dep.run(rounds=3, timeout=90)
        lags = dep.lags
    assert len(times) == 3 and all(t > 0 for t in times), times
    assert len(lags) == 3, lags
