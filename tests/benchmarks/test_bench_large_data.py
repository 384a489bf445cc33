"""bench_large_data (#16.4), small: every format reads back the seeded records it wrote, and
one measured run trains the asked steps from disk and reports them."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from benchmarks import bench_large_data as bench

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")


@pytest.mark.parametrize("fmt", ["npy", "images", "parquet"])
def test_every_format_reads_back_the_generated_records(tmp_path, fmt):
    bench.generate(fmt, tmp_path / fmt, records=40, seed=1, row_group=8)
    data = bench._open(fmt, tmp_path / fmt)
    x = np.concatenate([c for c, _ in bench._chunks(1, 40)])
    y = np.concatenate([c for _, c in bench._chunks(1, 40)])
    if fmt == "images":  # class folders, sorted file names
        order = np.argsort(y, kind="stable")
        x, y = x[order], y[order]
    bx, by = data.fetch([0, 17, 39])
    assert torch.equal(bx, torch.from_numpy(x[[0, 17, 39]].astype(np.float32) / 255))
    assert by.tolist() == y[[0, 17, 39]].tolist()


@pytest.mark.parametrize("mode", ["read", "ahead"])
def test_a_measured_run_reads_its_steps_from_disk(tmp_path, mode):
    bench.generate("npy", tmp_path / "npy", records=600, seed=0, row_group=8)
    args = argparse.Namespace(
        worker=f"npy:{mode}", steps=3, batch=20, subset=100, seed=0, model="logreg", dir=tmp_path
    )
    row = bench.worker(args)
    assert row["steps"] == 3 and 0 < row["records"] < 600
    assert row["peak_rss_mb"] >= row["rss_before_mb"] > 0
    assert row["data_mb"] == pytest.approx(
        (600 * bench.RECORD_BYTES + 600 * 8 + 256) / 1e6, rel=0.01
    )
    assert f"| npy:{mode} |" in bench.markdown([row])
