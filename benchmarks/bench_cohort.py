"""A round's cohort against the compute floor (issue #18): ``make bench-sim``'s first table.

The federation is digits as it is (1,437 training examples, IID over the clients, every
client every round), batch 16, one local epoch, DP-SGD at epsilon 8. Each row times one
model at one cohort size, trained one client at a time (``--vectorize off``) and batched
(``auto`` and ``on``), in seconds per round (the fastest round but the first: on a shared
machine other jobs only ever add time). The compute floor is ONE plain forward and
backward pass of the same model over all the training examples in one batch (the fastest
of ``repeats``); ``x floor`` is a round's time over it.

    python -m benchmarks.bench_cohort                       # the issue's rows
    python -m benchmarks.bench_cohort --rows mlp:700 --modes auto
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 - conventional alias

from fedguard.config import SimulationConfig, resolve_device
from fedguard.files import METRICS_FILE
from fedguard.fl.data import federated_data, initial_model
from fedguard.simulations.runner import simulate
from fedguard.task.lazy_records import in_memory

__all__ = ["CohortRow", "cohort_rows", "cohort_table", "compute_floor_s", "main"]

DEFAULT_ROWS = "mlp:700,cnn:100,cnn:700"
"""The issue's rows: the 64-unit MLP at 700 clients, the CNN at 100 and 700."""

TARGETS = {"mlp": "<= 10x floor", "cnn": ">= 5x faster than off"}
"""Issue #18's CPU targets, printed next to the figures."""


@dataclass(frozen=True, kw_only=True)
class CohortRow:
    """Seconds per round of one model and cohort size, per ``--vectorize`` mode."""

    model: str
    clients: int
    rounds: int
    floor_s: float
    seconds: dict[str, float]  # mode -> fastest round but the first

    def ratio(self, mode: str) -> float:
        return self.seconds[mode] / self.floor_s


def _config(model: str, clients: int, rounds: int, device: str, out: Path) -> SimulationConfig:
    return SimulationConfig(
        dataset="digits",
        model=model,
        hidden=64,
        clients=clients,
        rounds=rounds,
        batch_size=16,
        local_epochs=1,
        lr=0.5,
        epsilon=8.0,
        device=device,
        out=out,
    )


def compute_floor_s(config: SimulationConfig, *, repeats: int = 20) -> float:
    """One plain forward+backward pass of ``config``'s model over all training examples."""
    data = federated_data(config)
    device = torch.device(resolve_device(config.device))
    model = initial_model(config, data).to(device)
    ds = in_memory(data.dataset, where="bench_cohort")
    x = torch.from_numpy(ds.x_train).to(device)
    y = torch.from_numpy(ds.y_train).to(device).long()
    best = float("inf")
    for _ in range(repeats + 1):  # the first warms up
        _sync(device)
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _round_s(config: SimulationConfig) -> float:
    simulate(config, overwrite=True)
    rows = [json.loads(x) for x in (config.out / METRICS_FILE).read_text().splitlines()]
    return min(r["seconds"] for r in rows[1:])


def cohort_rows(
    *,
    rows: Sequence[tuple[str, int]],
    modes: Sequence[str],
    rounds: int,
    repeats: int,
    device: str,
    folder: Path,
) -> list[CohortRow]:
    """Every row, each mode ``repeats`` times (alternating), the fastest taken."""
    out = []
    for model, clients in rows:
        base = _config(model, clients, rounds, device, folder / f"{model}-{clients}")
        best = {m: float("inf") for m in modes}
        for _ in range(repeats):
            for mode in modes:
                best[mode] = min(best[mode], _round_s(base.replace(vectorize=mode)))
        row = CohortRow(
            model=model,
            clients=clients,
            rounds=rounds,
            floor_s=compute_floor_s(base),
            seconds=best,
        )
        print(f"  {cohort_table([row]).splitlines()[-1]}", flush=True)
        out.append(row)
    return out


def cohort_table(rows: Sequence[CohortRow]) -> str:
    """Markdown: per row, floor, each mode's s/round and x floor, off/auto, target."""
    modes = list(rows[0].seconds) if rows else []
    head = " | ".join(f"{m} s/round (x floor)" for m in modes)
    lines = [
        f"| model | clients/round | floor ms | {head} | off / auto | target |",
        "|---|---|---|" + "---|" * len(modes) + "---|---|",
    ]
    for r in rows:
        cells = " | ".join(f"{r.seconds[m]:.4f} ({r.ratio(m):.0f}x)" for m in modes)
        speedup = (
            f"{r.seconds['off'] / r.seconds['auto']:.1f}x"
            if "off" in r.seconds and "auto" in r.seconds
            else "-"
        )
        lines.append(
            f"| {r.model} | {r.clients} | {r.floor_s * 1000:.2f} | {cells} | {speedup} | "
            f"{TARGETS.get(r.model, '-')} |"
        )
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rows", default=DEFAULT_ROWS, help="model:clients, comma-separated")
    p.add_argument("--modes", default="off,auto,on", help="--vectorize modes to time")
    p.add_argument("--rounds", type=int, default=4, help="per run; the first is not counted")
    p.add_argument("--repeats", type=int, default=2, help="runs per mode, the fastest taken")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="also write bench_cohort.json here")
    args = p.parse_args(argv)
    args.rows = [(m, int(c)) for m, c in (r.split(":") for r in args.rows.split(",") if r)]
    args.modes = [m for m in args.modes.split(",") if m]
    args.device = resolve_device(args.device)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"bench-cohort on {args.device}, {args.threads} torch thread(s), load {load:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        rows = cohort_rows(
            rows=args.rows,
            modes=args.modes,
            rounds=args.rounds,
            repeats=args.repeats,
            device=args.device,
            folder=Path(tmp),
        )
    print(f"\n(load average {load:.2f} -> {os.getloadavg()[0]:.2f})\n\n{cohort_table(rows)}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"device": args.device, "rows": [asdict(r) for r in rows]}
        (args.out / "bench_cohort.json").write_text(json.dumps(payload, indent=2), "utf-8")


if __name__ == "__main__":
    main()
