"""benchmarks/bench_deploy_overhead.py against a real deployment: its ``Deployment`` (SuperLink
with TLS + node auth, patched SuperNodes on loopback) runs rounds, and the patched round is
the fast one the benchmark reports. Moved here from tests/deploy_flower/test_workarounds.py
(#20.6): a test of the benchmark, no longer a product test borrowing benchmark code."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.bench_deploy_overhead import Deployment


@pytest.mark.deploy
def test_patched_deployment_round_is_fast(tmp_path):
    """SuperLink (TLS + node auth) and 2 patched SuperNodes on loopback; stock: ~6 s/round."""
    # Deployment stops every process it started (SIGTERM, then SIGKILL) on the way out.
    with Deployment(tmp_path, nodes=2, config="warm") as dep:
        times = dep.run(rounds=3, timeout=90)
    assert statistics.mean(times[1:]) < 2.5, times
