"""``make bench-sim``: a round's cohort against the compute floor (issue #18's rows,
:mod:`benchmarks.bench_cohort`), seconds per round of (a) fedguard's in-process engine,
(b) a hand-written PyTorch + Opacus loop and (c) fedguard on Flower's Ray engine, and what
one DP-SGD step costs against a plain one. Every time of (a) is printed next to its ratio
to the compute floor: one plain forward+backward pass over all the federation's training
examples in one batch, on the same device.

The federation: every client trains every round on its own ~50 examples (digits, 8x8,
repeated to ``50 x clients`` examples in an ``.npz`` in a temporary folder, the digits
test split for evaluation), an MLP, DP-SGD with Poisson sampling at the noise that spends
epsilon 3 over the planned rounds, one local epoch. (a) and (b) alternate ``--repeats``
times; each figure is the median over all rounds but each run's first (start-up,
calibration). All (c) runs come last: Ray's processes must not share the CPUs with (a)
and (b). (c) is skipped where its estimate (from the last size it ran) exceeds
``--flower-limit`` seconds.

    python -m benchmarks.bench_sim                      # make bench-sim
    python -m benchmarks.bench_sim --quick --out DIR    # a smoke run (tests)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_cohort import (
    DEFAULT_ROWS,
    CohortRow,
    cohort_rows,
    cohort_table,
    compute_floor_s,
)
from benchmarks.bench_dpstep import dp_step_costs, markdown_table
from benchmarks.bench_reference import run_reference
from fedguard.config import SimulationConfig, load_simulation_config, resolve_device
from fedguard.files import METRICS_FILE
from fedguard.fl.data import federated_data
from fedguard.fl.local import noise_for_budget
from fedguard.simulations.runner import simulate
from fedguard.simulations.virtual_clients import budget_for
from fedguard.task import load_dataset
from fedguard.task.lazy_records import in_memory

__all__ = ["SimRow", "main", "sim_table", "time_federations"]

PER_CLIENT = 50


@dataclass(frozen=True, kw_only=True)
class SimRow:
    """Seconds per round at one cohort size; ``flower_s`` is None where (c) was skipped."""

    clients: int
    rounds: int
    inprocess_s: float
    reference_s: float
    flower_s: float | None
    flower_note: str
    inprocess_accuracy: float
    reference_accuracy: float
    flower_accuracy: float | None
    floor_s: float  # one plain forward+backward pass over all training examples

    @property
    def a_over_b(self) -> float:
        return self.inprocess_s / self.reference_s

    @property
    def a_over_floor(self) -> float:
        return self.inprocess_s / self.floor_s

    @property
    def c_over_a(self) -> float | None:
        return None if self.flower_s is None else self.flower_s / self.inprocess_s


def _data_file(folder: Path, clients: int) -> Path:
    """Digits' training set (public constants) repeated to ``PER_CLIENT`` examples a client."""
    path = folder / f"digits-x{clients}.npz"
    if not path.exists():
        ds = load_dataset(name="digits", seed=0)
        n = clients * PER_CLIENT
        idx = np.arange(n) % len(ds.y_train)
        np.savez(path, x=ds.x_train[idx], y=ds.y_train[idx], x_test=ds.x_test, y_test=ds.y_test)
    return path


def _config(args: argparse.Namespace, data: Path, clients: int, out: Path) -> SimulationConfig:
    return load_simulation_config(
        overrides={
            "dataset": str(data),
            "model": "mlp",
            "hidden": args.hidden,
            "clients": clients,
            "rounds": _rounds(args, clients),
            "batch-size": args.batch_size,
            "lr": 0.5,
            "epsilon": 3.0,
            "threads": args.threads,
            "device": args.device,
            "out": str(out),
        }
    )


def _rounds(args: argparse.Namespace, clients: int) -> int:
    if args.rounds:
        return int(args.rounds)
    return max(3, min(15, 3000 // clients))  # ~3000 client-rounds per run, 3..15 rounds


def _fedguard(config: SimulationConfig) -> tuple[list[float], float, float]:
    summary = simulate(config, overwrite=True)
    rows = [json.loads(x) for x in (config.out / METRICS_FILE).read_text().splitlines()]
    return [r["seconds"] for r in rows[1:]], summary.final_accuracy, summary.wall_seconds


def _reference(config: SimulationConfig) -> tuple[list[float], float]:
    data = federated_data(config)  # fedguard's loader and partition: the same clients
    ds, device = in_memory(data.dataset, where="bench_sim"), resolve_device(config.device)
    xs = [torch.from_numpy(ds.x_train[i]).to(device) for i in data.partitions]
    ys = [torch.from_numpy(ds.y_train[i]).to(device) for i in data.partitions]
    budget = budget_for(config)
    if budget is None:
        raise ValueError("bench-sim compares DP training: the config must not be --no-dp")
    sigma = noise_for_budget(
        budget=budget,
        num_examples=len(xs[0]),
        batch_size=config.batch_size,
        local_epochs=config.local_epochs,
    )
    features, classes, hidden = int(np.prod(ds.input_shape)), ds.num_classes, config.hidden

    def mlp() -> torch.nn.Module:  # fedguard's "mlp", written out in plain PyTorch
        return torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(features, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, classes),
        )

    run = run_reference(
        model=mlp,
        xs=xs,
        ys=ys,
        x_test=torch.from_numpy(ds.x_test).to(device),
        y_test=torch.from_numpy(ds.y_test).to(device),
        rounds=config.rounds,
        batch_size=config.batch_size,
        lr=config.lr,
        noise_multiplier=sigma,
        max_grad_norm=config.max_grad_norm,
        delta=config.delta,
        device=device,
    )
    return list(run.round_seconds[1:]), run.final_accuracy


@dataclass(frozen=True)
class _AB:
    cfg: SimulationConfig
    a_s: float
    b_s: float
    a_acc: float
    b_acc: float


def time_federations(args: argparse.Namespace, tmp: Path) -> list[SimRow]:
    """(a) and (b) at every size, alternating; then (c) at every size."""
    measured: list[_AB] = []
    for clients in args.clients:
        data = _data_file(tmp, clients)
        cfg = _config(args, data, clients, tmp / f"a-{clients}")
        a_times: list[float] = []
        b_times: list[float] = []
        a_acc = b_acc = 0.0
        for _ in range(args.repeats):
            times, a_acc, _ = _fedguard(cfg)
            a_times += times
            times, b_acc = _reference(cfg)
            b_times += times
        a_s, b_s = statistics.median(a_times), statistics.median(b_times)
        print(f"  n={clients:<5} (a) {a_s:.4f} s/round  (b) {b_s:.4f} s/round", flush=True)
        measured.append(_AB(cfg, a_s, b_s, a_acc, b_acc))
    rows = []
    last: tuple[int, float] | None = None  # (clients, seconds per round) of the last (c)
    for m in measured:
        cfg, clients = m.cfg, m.cfg.clients
        flower_s: float | None = None
        flower_acc: float | None = None
        note = ""
        estimate = 30 + cfg.rounds * last[1] * clients / last[0] if last else 0.0
        if args.no_flower:
            note = "not run (--no-flower)"
        elif estimate > args.flower_limit:
            note = f"skipped: estimated {estimate:.0f} s > limit {args.flower_limit:.0f} s"
        else:
            times, flower_acc, wall = _fedguard(
                cfg.replace(engine="flower", device="cpu", out=tmp / f"c-{clients}")
            )
            flower_s = statistics.median(times)
            note = f"{wall:.0f} s wall incl. Ray start-up"
            last = (clients, flower_s)
            print(f"  n={clients:<5} (c) {flower_s:.4f} s/round ({note})", flush=True)
        rows.append(
            SimRow(
                clients=clients,
                rounds=cfg.rounds,
                inprocess_s=m.a_s,
                reference_s=m.b_s,
                flower_s=flower_s,
                flower_note=note,
                inprocess_accuracy=m.a_acc,
                reference_accuracy=m.b_acc,
                flower_accuracy=flower_acc,
                floor_s=compute_floor_s(cfg),
            )
        )
    return rows


def sim_table(rows: Sequence[SimRow]) -> str:
    """The seconds-per-round table, Markdown."""
    lines = [
        "| clients/round | rounds | (a) in-process s/round | floor ms | a / floor | "
        "(b) reference s/round | (c) Flower/Ray s/round | a/b | c/a | accuracy a / b / c |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = f"{r.flower_s:.3f}" if r.flower_s is not None else r.flower_note
        ca = f"{r.c_over_a:.1f}" if r.c_over_a is not None else "-"
        acc_c = f"{r.flower_accuracy:.2f}" if r.flower_accuracy is not None else "-"
        lines.append(
            f"| {r.clients} | {r.rounds} | {r.inprocess_s:.3f} | {r.floor_s * 1000:.2f} | "
            f"{r.a_over_floor:.0f}x | {r.reference_s:.3f} | {c} | "
            f"{r.a_over_b:.2f} | {ca} | {r.inprocess_accuracy:.2f} / "
            f"{r.reference_accuracy:.2f} / {acc_c} |"
        )
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--cohort-rows",
        default=DEFAULT_ROWS,
        help="model:clients rows against the compute floor (bench_cohort); '' skips them",
    )
    p.add_argument("--clients", default="10,100,1000", help="cohort sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=0, help="per run (0: 3000 // clients, 3..15)")
    p.add_argument("--repeats", type=int, default=2, help="(a)/(b) runs per size, alternating")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto: for (a), (b), DP steps")
    p.add_argument("--flower-limit", type=float, default=600.0, help="seconds (c) may take")
    p.add_argument("--no-flower", action="store_true", help="skip (c)")
    p.add_argument("--dp-batch", type=int, default=256)
    p.add_argument("--dp-models", default="mlp,cnn", help="'' skips the DP step table")
    p.add_argument("--quick", action="store_true", help="10 and 20 clients, 3 rounds, no (c)")
    p.add_argument("--out", type=Path, help="also write bench_sim.json and bench_sim.md here")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.rounds, args.repeats, args.no_flower = "10,20", 3, 1, True
        args.dp_batch = 32
        args.cohort_rows = "mlp:20"
    args.clients = [int(c) for c in str(args.clients).split(",") if c]
    args.cohort_rows = [
        (m, int(c)) for m, c in (r.split(":") for r in str(args.cohort_rows).split(",") if r)
    ]
    args.device = resolve_device(args.device)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    print(f"bench-sim on {args.device}, {args.threads} torch thread(s), load {load:.2f}")
    cohort: list[CohortRow] = []
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        if args.cohort_rows:
            cohort = cohort_rows(
                rows=args.cohort_rows,
                modes=("off", "auto"),
                rounds=args.rounds or 4,
                repeats=args.repeats,
                device=args.device,
                folder=Path(tmp) / "cohort",
            )
        rows = time_federations(args, Path(tmp))
    sim = sim_table(rows)
    floor = (
        "A round against the compute floor: digits as it is, batch 16, 1 local epoch, "
        f"epsilon 8, 64-unit MLP (fastest round of {args.repeats} runs):\n\n"
        f"{cohort_table(cohort)}\n\n"
        if cohort
        else ""
    )
    models = [m for m in args.dp_models.split(",") if m]
    costs = dp_step_costs(models=models, batch=args.dp_batch, device=args.device)
    step = markdown_table(costs)
    report = floor + (
        f"Seconds per round, {PER_CLIENT} examples per client, MLP, DP-SGD "
        f"(device {args.device}, load average {load:.2f} -> {os.getloadavg()[0]:.2f}):\n\n"
        f"{sim}\n\nDP-SGD step vs plain SGD step, batch {args.dp_batch}, 28x28 inputs:\n\n{step}\n"
    )
    print("\n" + report)
    print(f"bench-sim took {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_sim.md").write_text(report, encoding="utf-8")
        payload = {
            "device": args.device,
            "threads": args.threads,
            "cohort": [dataclasses.asdict(r) for r in cohort],
            "simulation": [
                {**dataclasses.asdict(r), "a_over_b": r.a_over_b, "a_over_floor": r.a_over_floor}
                for r in rows
            ],
            "dp_step": [dataclasses.asdict(c) for c in costs],
        }
        (args.out / "bench_sim.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
