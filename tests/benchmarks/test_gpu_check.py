"""benchmarks/gpu_check.sh in its reduced mode (the CPU stand-in for the GPU check): it
runs the simulation benchmark, the cohort-scale benchmark and a sweep cell and writes
their figures to the folder."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def test_reduced_gpu_check_writes_the_benchmark_and_the_sweep_cell(tmp_path: Path):
    out = tmp_path / "gpu-check"
    run = subprocess.run(
        [str(SCRIPT), str(out), "--reduced"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = (out / "summary.md").read_text()
    assert "# GPU check (reduced, device cpu)" in summary
    assert "| bench |" in summary and "| sweep |" in summary and "failed" not in summary
    bench = json.loads((out / "bench" / "bench_sim.json").read_text())
    assert bench["device"] == "cpu"
    assert [r["clients"] for r in bench["simulation"]] == [10, 20]
    assert all(r["inprocess_s"] > 0 and r["reference_s"] > 0 for r in bench["simulation"])
    assert {c["model"] for c in bench["dp_step"]} == {"mlp", "cnn"}
    assert "a/b" in (out / "bench" / "bench_sim.md").read_text()
    scale = json.loads((out / "scale" / "bench_scale.json").read_text())
    assert [r["clients"] for r in scale] == [50, 100] and "| scale |" in summary
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 for r in scale)
    assert "One more client costs" in (out / "scale" / "bench_scale.md").read_text()
    rows = (out / "sweep" / "results.csv").read_text().splitlines()
    assert len(rows) == 2  # the header and the one cell
    assert (out / "sweep" / "report.md").is_file()
    assert 'device = "cpu"' in (out / "sweep.toml").read_text()


def test_bad_arguments_are_refused_with_the_usage(tmp_path: Path):
    run = subprocess.run(
        [str(SCRIPT), str(tmp_path), "--fast"], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2 and "usage:" in run.stderr
