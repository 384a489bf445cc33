"""bench_lazy_task (#16.4), small: both modes run through ``fedguard simulate`` in fresh
processes, and the lazy one holds less memory than the eager one (2,000 records 3x64x64:
the eager load's float32 arrays alone are ~100 MB)."""

from __future__ import annotations

import pytest

from benchmarks import bench_lazy_task as bench


def test_the_lazy_run_peaks_below_the_eager_one(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--records", "2000", "--modes", "lazy,eager"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    peaks = {cells[0].strip(): int(cells[3]) for cells in rows}
    assert set(peaks) == {"lazy", "eager"}
    assert peaks["lazy"] < peaks["eager"]
