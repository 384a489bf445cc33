"""``make bench-scale``: how a round's time and memory grow with the cohort (issue #18's
"10,000 clients per round fit on one device: say what memory one client costs").

Each cohort size runs in its own process (so peak memory is that size's alone): bench-sim's
federation (every client every round on its own 50 digits examples, the 128-unit MLP,
batch 16, DP-SGD at epsilon 3), in-process engine, batched. Per size it prints seconds per
round (median of rounds 2..R), the ratio to the compute floor, the peak resident memory of
the process and, on CUDA, the peak memory torch allocated on the device; then the memory
one more client costs, from the two largest sizes. Clients train in chunks whose working
memory is bounded (``CohortDPTrainer(max_floats=...)``), so what grows with the cohort is
each client's data, generator and accountant, not the step's tensors.

    python -m benchmarks.bench_scale                          # 1000 and 10000, CPU
    python -m benchmarks.bench_scale --clients 100,1000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["ScaleRow", "main", "measure_one", "scale_table"]


@dataclass(frozen=True, kw_only=True)
class ScaleRow:
    """One cohort size: its round time, floor and peak memory."""

    clients: int
    rounds: int
    seconds: float  # median s/round over rounds 2..R
    floor_s: float
    peak_rss_mb: float  # the whole process, incl. Python, torch and the data set
    device_peak_mb: float | None  # CUDA only: torch.cuda.max_memory_allocated
    chunk: int  # clients trained together in one step
    accuracy: float


def measure_one(*, clients: int, rounds: int, device: str, threads: int) -> ScaleRow:
    """One cohort size in this process (call it in a fresh one for a clean peak)."""
    import torch

    from benchmarks.bench_cohort import compute_floor_s
    from benchmarks.bench_sim import _config, _data_file
    from fedguard.files import METRICS_FILE
    from fedguard.fl.data import federated_data, initial_model
    from fedguard.privacy.cohort import CohortDPTrainer
    from fedguard.simulations.runner import simulate
    from fedguard.task.lazy_records import in_memory

    torch.set_num_threads(threads)
    args = argparse.Namespace(
        hidden=128, batch_size=16, threads=threads, device=device, rounds=rounds
    )
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        folder = Path(tmp)
        config = _config(args, _data_file(folder, clients), clients, folder / "out")
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        summary = simulate(config, overwrite=True)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the floor
        rows = [json.loads(x) for x in (config.out / METRICS_FILE).read_text().splitlines()]
        device_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        data = federated_data(config)
        model = initial_model(config, data).to(device)
        example = torch.from_numpy(in_memory(data.dataset, where="bench_scale").x_train[:1])
        trainer = CohortDPTrainer(model=model)
        n = len(data.partitions[0])
        chunk = trainer._chunk_size(tuple(example.shape[1:]), min(n, config.batch_size) * 1.5 + 2)
        return ScaleRow(
            clients=clients,
            rounds=config.rounds,
            seconds=statistics.median(r["seconds"] for r in rows[1:]),
            floor_s=compute_floor_s(config),
            peak_rss_mb=peak_rss,
            device_peak_mb=device_peak,
            chunk=min(chunk, clients),
            accuracy=summary.final_accuracy,
        )


def scale_table(rows: Sequence[ScaleRow]) -> str:
    """Markdown: per size, s/round, x floor, chunk, peak memory; then the per-client cost."""
    lines = [
        "| clients/round | rounds | s/round | floor ms | x floor | clients per chunk | "
        "peak RSS MB | device peak MB | accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dev = f"{r.device_peak_mb:.0f}" if r.device_peak_mb is not None else "-"
        lines.append(
            f"| {r.clients} | {r.rounds} | {r.seconds:.3f} | {r.floor_s * 1000:.2f} | "
            f"{r.seconds / r.floor_s:.0f}x | {r.chunk} | {r.peak_rss_mb:.0f} | {dev} | "
            f"{r.accuracy:.2f} |"
        )
    if len(rows) >= 2:
        a, b = sorted(rows, key=lambda r: r.clients)[-2:]
        extra = b.clients - a.clients
        rss = (b.peak_rss_mb - a.peak_rss_mb) * 1024 / extra
        line = f"\nOne more client costs {rss:.0f} KiB of host memory"
        if a.device_peak_mb is not None and b.device_peak_mb is not None:
            line += (
                f" and {(b.device_peak_mb - a.device_peak_mb) * 1024 / extra:.0f} KiB on the device"
            )
        lines.append(line + f" ({a.clients} -> {b.clients} clients per round).")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--clients", default="1000,10000", help="cohort sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="per size; the first is not counted")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="also write bench_scale.json and .md here")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one size, JSON out
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    if args.one is not None:
        row = measure_one(
            clients=args.one, rounds=args.rounds, device=args.device, threads=args.threads
        )
        print(json.dumps(asdict(row)))
        return
    rows = []
    for clients in (int(c) for c in args.clients.split(",") if c):
        child = [sys.executable, "-m", "benchmarks.bench_scale", "--one", str(clients)]
        child += ["--rounds", str(args.rounds), "--device", args.device]
        child += ["--threads", str(args.threads)]
        done = subprocess.run(child, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
            sys.exit(f"bench-scale: {clients} clients failed (exit {done.returncode}): {tail[0]}")
        rows.append(ScaleRow(**json.loads(done.stdout.strip().splitlines()[-1])))
        print(f"  {scale_table(rows[-1:]).splitlines()[-1]}", flush=True)
    table = scale_table(rows)
    print(f"\nbench-scale on {args.device}, {args.threads} torch thread(s)\n\n{table}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_scale.json").write_text(
            json.dumps([asdict(r) for r in rows], indent=2), "utf-8"
        )
        (args.out / "bench_scale.md").write_text(table + "\n", "utf-8")


if __name__ == "__main__":
    main()
