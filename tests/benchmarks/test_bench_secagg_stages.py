"""The stage-by-stage secure-aggregation benchmark runs the real protocol and serde."""

from __future__ import annotations

from benchmarks.bench_secagg_stages import NODE_STAGES, SERVER_STAGES, stage_times


def test_every_stage_of_both_sides_is_timed():
    row = stage_times(clients=5, params=300)
    assert set(row["node_ms"]) == {*NODE_STAGES, "serialise"}
    assert set(row["server_ms"]) == {*SERVER_STAGES, "serialise"}
    assert all(v >= 0 for v in (*row["node_ms"].values(), *row["server_ms"].values()))
    assert row["degree"] == 4 and row["params"] == 300
