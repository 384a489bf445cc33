"""``make bench-ray``: seconds per round of ``--engine ray`` at 1, 2, ... workers, next to
the in-process engine on the same federation.

The federation is bench-sim's: every client trains every round on its own 50 examples
(digits repeated to ``50 x clients`` in an ``.npz`` in a temporary folder), an MLP,
DP-SGD at epsilon 3 over the planned rounds, one local epoch, each worker with
``--threads`` torch threads. One local Ray cluster (``--workers``' largest x
``--threads`` CPUs) serves every Ray run; the engines alternate ``--repeats`` times;
each figure is the median over the runs of a run's median round (its first excluded).

Next to the wall time, each worker's CPU seconds on its slice (the busiest worker's and
the sum over workers): on a shared or small machine workers wait for cores, and the
busiest worker's CPU time plus the fixed cost is what a round would take with a core (or
a GPU) per worker. The fixed cost of sharding (Ray's task round trip, the weights and
accountant states shipped, the partial sums folded, evaluation on the driver) is the
one-worker wall time less its CPU time (an upper bound where the machine is loaded).

    python -m benchmarks.bench_ray                      # make bench-ray
    python -m benchmarks.bench_ray --quick --out DIR    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedguard.config import SimulationConfig
from fedguard.files import METRICS_FILE
from fedguard.simulations import ray_engine
from fedguard.simulations.ray_engine import RAY_ENV
from fedguard.simulations.runner import simulate
from fedguard.task import load_dataset

__all__ = ["RayRow", "main", "ray_table"]

PER_CLIENT = 50


@dataclass(frozen=True, kw_only=True)
class RayRow:
    """One engine at one worker count: seconds per round and what it ended with."""

    engine: str
    workers: int
    seconds: float  # median seconds per round, first round excluded
    busiest_cpu: float | None  # median over rounds of the largest slice's CPU seconds
    total_cpu: float | None  # median over rounds of the slices' CPU seconds summed
    # Median over rounds of the driver's wall time from sending the slices to holding the
    # results, less the slowest worker's wall time on its slice: Ray's round trip.
    transport: float | None
    accuracy: float
    epsilon_max: float | None


def _data_file(folder: Path, clients: int) -> Path:
    path = folder / f"digits-x{clients}.npz"
    ds = load_dataset(name="digits", seed=0)
    idx = np.arange(clients * PER_CLIENT) % len(ds.y_train)
    np.savez(path, x=ds.x_train[idx], y=ds.y_train[idx], x_test=ds.x_test, y_test=ds.y_test)
    return path


@contextmanager
def _recording(cohorts: list[ray_engine.RayCohort]) -> Iterator[None]:
    """While open, every Ray cohort trainer the engine starts is kept in ``cohorts``."""
    real = ray_engine.ray_cohort

    @contextmanager
    def record(**kw: object) -> Iterator[ray_engine.RayCohort]:
        with real(**kw) as cohort:  # type: ignore[arg-type]
            cohorts.append(cohort)
            yield cohort

    ray_engine.ray_cohort = record
    try:
        yield
    finally:
        ray_engine.ray_cohort = real


def _run(config: SimulationConfig) -> RayRow:
    cohorts: list[ray_engine.RayCohort] = []
    with _recording(cohorts):
        simulate(config, overwrite=True)
    rows = [json.loads(line) for line in (config.out / METRICS_FILE).read_text().splitlines()]
    cpu = cohorts[0].cpu_seconds[1:] if cohorts else []
    trip = [
        driver - max(walls)
        for driver, walls in zip(
            cohorts[0].round_seconds[1:] if cohorts else [],
            cohorts[0].wall_seconds[1:] if cohorts else [],
            strict=True,
        )
    ]
    return RayRow(
        engine=config.engine,
        workers=config.workers,
        seconds=statistics.median(r["seconds"] for r in rows[1:]),
        busiest_cpu=statistics.median(max(c) for c in cpu) if cpu else None,
        total_cpu=statistics.median(sum(c) for c in cpu) if cpu else None,
        transport=statistics.median(trip) if trip else None,
        accuracy=rows[-1]["accuracy"],
        epsilon_max=rows[-1]["epsilon_max"],
    )


def time_engines(args: argparse.Namespace, tmp: Path) -> list[RayRow]:
    """The in-process run, then one Ray run per worker count on one local cluster."""
    import ray

    base = SimulationConfig(
        dataset=str(_data_file(tmp, args.clients)),
        model="mlp",
        hidden=args.hidden,
        clients=args.clients,
        rounds=args.rounds,
        batch_size=args.batch_size,
        lr=0.5,
        epsilon=3.0,
        threads=args.threads,
        out=tmp / "inprocess",
    )
    configs = [base] + [
        base.replace(engine="ray", workers=n, out=tmp / f"ray-{n}") for n in args.workers
    ]
    ray.init(
        num_cpus=max(args.workers) * args.threads, include_dashboard=False, log_to_driver=False
    )
    try:
        runs = [[_run(c) for c in configs] for _ in range(args.repeats)]
    finally:
        ray.shutdown()
    return [_merge(list(same)) for same in zip(*runs, strict=True)]


def _merge(rows: list[RayRow]) -> RayRow:
    """One engine's repeats as one row: medians of the per-run medians."""

    def med(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    return RayRow(
        engine=rows[0].engine,
        workers=rows[0].workers,
        seconds=statistics.median(r.seconds for r in rows),
        busiest_cpu=med([r.busiest_cpu for r in rows]),
        total_cpu=med([r.total_cpu for r in rows]),
        transport=med([r.transport for r in rows]),
        accuracy=rows[-1].accuracy,
        epsilon_max=rows[-1].epsilon_max,
    )


def ray_table(rows: Sequence[RayRow]) -> str:
    """A markdown table: wall and CPU seconds per round, and the one-core-per-worker estimate."""
    one = next((r for r in rows if r.engine == "ray" and r.workers == 1), None)
    fixed = None
    if one is not None and one.busiest_cpu is not None:
        fixed = one.seconds - one.busiest_cpu
    lines = [
        "| engine | workers | s/round (wall) | busiest worker CPU s | all workers CPU s "
        "| Ray round trip s | core per worker: est. s/round | speed-up est. | accuracy "
        "| epsilon |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        est = speedup = busiest = total = trip = ""
        if r.transport is not None:
            trip = f"{r.transport:.3f}"
        if r.busiest_cpu is not None and r.total_cpu is not None:
            busiest, total = f"{r.busiest_cpu:.3f}", f"{r.total_cpu:.3f}"
            if fixed is not None and one is not None:
                est = f"{r.busiest_cpu + fixed:.3f}"
                speedup = f"{one.seconds / (r.busiest_cpu + fixed):.2f}x"
        eps = "-" if r.epsilon_max is None else f"{r.epsilon_max:.4f}"
        lines.append(
            f"| {r.engine} | {r.workers} | {r.seconds:.3f} | {busiest} | {total} | {trip} | {est} "
            f"| {speedup} | {r.accuracy:.4f} | {eps} |"
        )
    if fixed is not None:
        lines.append(f"\nfixed cost per round (1 worker: wall - CPU): {fixed:.3f} s")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000, help="clients, all in every round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--repeats", type=int, default=2, help="runs of each engine, alternating")
    p.add_argument("--quick", action="store_true", help="100 clients, 3 rounds")
    p.add_argument("--out", type=Path, default=None, help="also write ray.json and ray.md")
    args = p.parse_args(argv)
    args.workers = [int(w) for w in str(args.workers).split(",")]
    if args.quick:
        args.clients, args.rounds, args.repeats = 100, 3, 1
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    with tempfile.TemporaryDirectory() as tmp:
        rows = time_engines(args, Path(tmp))
    table = ray_table(rows)
    head = (
        f"{args.clients} clients x {PER_CLIENT} examples per round, MLP {args.hidden}, "
        f"batch {args.batch_size}, {args.threads} thread(s) per worker, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(head + "\n\n" + table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ray.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
        (args.out / "ray.md").write_text(head + "\n\n" + table + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
