"""What one DP-SGD step costs against a plain SGD step, per per-sample-gradient mode.

Both go through fedguard's own training code: :func:`fedguard.task.train_plain` for the
plain step and :class:`fedguard.privacy.DPTrainer` (one mode per trainer) for the DP
step, on one batch of ``batch`` examples with sample rate 1 (every example in every
step), so a step is the same work in both. Modes are timed round-robin, and each figure
is the fastest of the repeats (of one call's steps): on a shared machine other jobs only
ever add time, so the minimum is the best estimate of the cost itself (as ``timeit``
advises).

``--secure`` adds, per mode, the same DP step with Opacus's floating-point defence for the
noise (``DPTrainer(secure_mode=True)``, what deployed nodes run: four Gaussian draws per
noise value instead of one), as column ``<mode>+secure``.

    python -m benchmarks.bench_dpstep --batch 256 --models mlp,cnn --secure
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fedguard.errors import ConfigError
from fedguard.privacy import GRAD_SAMPLE_MODES, Accountant, DPTrainer
from fedguard.task import build_model, train_plain

__all__ = ["StepCost", "dp_step_costs", "main", "markdown_table"]

_STEPS_PER_CALL = 4


@dataclass(frozen=True, kw_only=True)
class StepCost:
    """Milliseconds per step of one model at one batch size: plain and per DP mode."""

    model: str
    parameters: int
    batch: int
    input_shape: tuple[int, ...]
    plain_ms: float
    dp_ms: dict[str, float]

    def ratio(self, mode: str) -> float:
        return self.dp_ms[mode] / self.plain_ms


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000 / _STEPS_PER_CALL


def dp_step_costs(
    *,
    models: Sequence[str] = ("mlp", "cnn"),
    batch: int = 256,
    input_shape: tuple[int, ...] = (1, 28, 28),
    modes: Sequence[str] = GRAD_SAMPLE_MODES[1:],  # every mode but "auto"
    repeats: int = 5,
    device: str = "cpu",
    hidden: int = 128,
    secure: bool = False,
) -> list[StepCost]:
    """Time a plain step and a DP step per mode for each model (see the module docstring).

    ``secure``: also time each mode with ``secure_mode=True`` (key ``<mode>+secure``).
    """
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=gen).to(dev)
    y = torch.randint(0, 10, (batch,), generator=gen).to(dev)
    return [
        _cost(name, x=x, y=y, modes=modes, repeats=repeats, hidden=hidden, secure=secure)
        for name in models
    ]


def _cost(
    name: str,
    *,
    x: torch.Tensor,
    y: torch.Tensor,
    modes: Sequence[str],
    repeats: int,
    hidden: int,
    secure: bool,
) -> StepCost:
    batch, shape = int(x.shape[0]), tuple(int(d) for d in x.shape[1:])

    def fresh() -> torch.nn.Module:
        return build_model(
            name=name,
            input_shape=shape,
            num_classes=10,
            generator=torch.Generator().manual_seed(1),
            hidden=hidden,
        ).to(x.device)

    plain_model = fresh()
    rng = torch.Generator(device=x.device).manual_seed(2)

    def plain() -> object:
        return train_plain(
            model=plain_model,
            x=x,
            y=y,
            epochs=_STEPS_PER_CALL,
            batch_size=batch,
            lr=0.01,
            generator=rng,
        )

    def private(trainer: DPTrainer) -> Callable[[], object]:
        return lambda: trainer.train(
            x=x,
            y=y,
            epochs=_STEPS_PER_CALL,
            batch_size=batch,  # sample rate 1: every example, every step
            lr=0.01,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            accountant=Accountant(method="rdp"),
            generator=rng,
        )

    jobs: dict[str, Callable[[], object]] = {"plain": plain}
    for mode in modes:
        for defended in (False, True) if secure else (False,):
            try:
                trainer = DPTrainer(model=fresh(), grad_sample_mode=mode, secure_mode=defended)
            except ConfigError:  # e.g. bk on a model with convolutions
                continue
            jobs[f"{mode}+secure" if defended else mode] = private(trainer)
    for job in jobs.values():  # warm-up: allocator, first-call dispatch
        job()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(repeats):
        for k, job in jobs.items():
            times[k].append(_timed(job))
    fastest = {k: min(v) for k, v in times.items()}
    return StepCost(
        model=name,
        parameters=sum(p.numel() for p in plain_model.parameters()),
        batch=batch,
        input_shape=shape,
        plain_ms=fastest.pop("plain"),
        dp_ms=fastest,
    )


def markdown_table(costs: Sequence[StepCost]) -> str:
    """One row per model: plain ms, DP ms per mode, and DP/plain per mode."""
    if not costs:
        return ""
    modes = list(dict.fromkeys(m for c in costs for m in c.dp_ms))
    head = ["model", "params", "batch", "plain ms"]
    head += [f"{m} ms" for m in modes] + [f"{m} / plain" for m in modes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in costs:
        cells = [c.model, f"{c.parameters:,}", str(c.batch), f"{c.plain_ms:.2f}"]
        cells += [f"{c.dp_ms[m]:.2f}" if m in c.dp_ms else "n/a" for m in modes]
        cells += [f"{c.ratio(m):.2f}x" if m in c.dp_ms else "n/a" for m in modes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default=",".join(GRAD_SAMPLE_MODES[1:]))
    parser.add_argument(
        "--secure", action="store_true", help="also time each mode with secure_mode=True"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    costs = dp_step_costs(
        models=args.models.split(","),
        batch=args.batch,
        repeats=args.repeats,
        device=args.device,
        modes=args.modes.split(","),
        secure=args.secure,
    )
    print(markdown_table(costs))


if __name__ == "__main__":
    main()
