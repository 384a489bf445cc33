"""A lazy task through ``fedguard simulate`` against the same task loaded eagerly (#16.4).

Generates the seeded ``.npy`` image set of :mod:`benchmarks.bench_large_data` (``--records``
uint8 records ``3x64x64``), writes a task reading it with
:class:`~fedguard.task.lazy_data.NpyRecords` (transform ``x / 255``, a linear model), and
runs ``fedguard simulate`` on it in a fresh process per mode: ``lazy`` (``Task(lazy=True)``:
one streaming pass at load, then each step's sampled records and the holdout in batches)
and ``eager`` (every record transformed into float32 arrays). Prints each run's peak
resident memory (``VmHWM``) and wall time.

    python -m benchmarks.bench_lazy_task --records 20000 --modes lazy,eager
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_large_data import generate

TASK = """
import dataclasses
import os

from torch import nn

from fedguard.task.api import RecordTransform, Task
from fedguard.task.lazy_data import NpyRecords

ROOT = os.environ["BENCH_LAZY_DATA"]


def load(request):
    return NpyRecords(
        x_path=f"{ROOT}/x.npy", y_path=f"{ROOT}/y.npy", shape=(3, 64, 64), num_classes=10
    )


def model(*, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, num_classes))


lazy = Task(
    name="npy", model=model, load=load, input_shape=(3, 64, 64), num_classes=10,
    transforms=(RecordTransform(name="unit", apply=lambda x: x / 255.0),), lazy=True,
)
eager = dataclasses.replace(lazy, lazy=False)
"""

RUN = """
import sys, time
from fedguard.cli import main
t = time.perf_counter()
main(sys.argv[1:])
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]
print(f"RESULT {int(hwm) / 1024:.0f} {time.perf_counter() - t:.1f}")
"""


def run(mode: str, folder: Path, *, rounds: int) -> tuple[str, str]:
    """(peak RSS MB, seconds) of one ``fedguard simulate`` of ``mode`` in a fresh process."""
    env = {**os.environ, "BENCH_LAZY_DATA": str(folder / "data"), "PYTHONPATH": str(folder)}
    args = [
        sys.executable, "-c", RUN, "simulate", "--task", f"bench_lazy_task_def:{mode}",
        "--dataset", "npy", "--clients", "2", "--rounds", str(rounds), "--batch-size", "64",
        "--epsilon", "3", "--vectorize", "off", "--out", str(folder / f"out-{mode}"),
    ]  # fmt: skip
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    _, peak, seconds = next(line for line in out.splitlines() if line.startswith("RESULT")).split()
    return peak, seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--modes", default="lazy,eager")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate("npy", folder / "data", records=args.records, seed=0, row_group=8)
        (folder / "bench_lazy_task_def.py").write_text(TASK)
        mb = (folder / "data" / "x.npy").stat().st_size / 2**20
        print("| mode | records | data on disk (MB) | peak RSS (MB) | seconds |")
        print("|---|---|---|---|---|")
        for mode in args.modes.split(","):
            peak, seconds = run(mode, folder, rounds=args.rounds)
            print(f"| {mode} | {args.records:,} | {mb:,.0f} | {peak} | {seconds} |")


if __name__ == "__main__":
    main()
