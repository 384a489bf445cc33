"""``fedguard sweep``: accuracy against privacy over a grid of simulations.

Only parses options, shows progress and calls :mod:`fedguard.simulations.sweep`; errors
are ``FedguardError``s, which ``fedguard.cli.main`` prints as one line (exit status 2).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from fedguard.fl.loop import RoundRecord
    from fedguard.simulations.sweep import Cell, CellResult, SweepPlan

__all__ = ["sweep"]

Opt = typer.Option


def sweep(
    config: Annotated[
        Path,
        Opt(
            "--config",
            help="sweep.toml: keys as for simulate; epsilon, seed, partition, alpha and"
            ' clients-per-round may be lists (epsilon "non-private": no DP)',
        ),
    ],
    out: Annotated[
        Path | None, Opt("--out", help="results folder (default: the file's out, or runs/sweep)")
    ] = None,
    overwrite: Annotated[
        bool, Opt("--overwrite", help="rerun every cell (default: resume, skip finished cells)")
    ] = False,
) -> None:
    """Run a grid of simulations (epsilon, seeds, partitions, cohorts); plot accuracy vs epsilon.

    Resumable: running it again skips every cell already finished with the same settings.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from fedguard.simulations.sweep import load_sweep, run_sweep

    plan = load_sweep(path=config, out=out)  # validates the whole grid; writes nothing
    console = Console(highlight=False, soft_wrap=True, markup=False)
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    observer = _Observer(console=bar.console, bar=bar, total=len(plan.cells))
    try:
        result = run_sweep(plan=plan, overwrite=overwrite, observer=observer)
    finally:
        if bar.live.is_started:
            bar.stop()
    console.print(
        f"{result.ran} runs in {result.wall_seconds:.1f}s, {result.reused} reused; "
        f"wrote {result.results_csv}, {result.plot}, {result.report}"
    )


class _Observer:
    """A bar over the grid and, below it, one over the running cell's rounds."""

    def __init__(self, *, console: Console, bar: Progress, total: int) -> None:
        self._console = console
        self._bar = bar
        self._total = total
        self._grid: TaskID = bar.add_task("grid", total=total)
        self._rounds: TaskID | None = None

    def sweep_started(self, *, plan: SweepPlan, finished: int) -> None:
        base = plan.cells[0].config
        axes = plan.axes
        self._console.print(
            f"fedguard sweep: {len(plan.cells)} runs ({len(axes['epsilon'])} epsilon x "
            f"{len(axes['seed'])} seeds x {len({c.partitioning for c in plan.cells})} "
            f"partitionings x {len({c.clients_per_round for c in plan.cells})} cohort sizes) "
            f"of {base.dataset}, {base.model}, {base.clients} clients, {base.rounds} rounds; "
            f"{finished} finished earlier, {len(plan.cells) - finished} to run; "
            f"results in {plan.out}"
        )
        self._bar.start()  # only now: a refused --out prints its error line alone

    def cell_started(self, *, index: int, cell: Cell, reused: bool) -> None:
        if not reused:
            self._rounds = self._bar.add_task(f"  {cell.name}", total=cell.config.rounds)

    def round_done(self, record: RoundRecord) -> None:
        if self._rounds is not None:
            self._bar.advance(self._rounds)

    def cell_done(self, *, index: int, result: CellResult) -> None:
        if self._rounds is not None:
            self._bar.remove_task(self._rounds)
            self._rounds = None
        cell = result.cell
        eps = (
            "no DP"
            if not cell.private or result.epsilon_reached is None
            else f"epsilon {result.epsilon_reached:.3f}"
        )
        target = "non-private" if math.isinf(cell.epsilon) else f"target {cell.epsilon:g}"
        how = "finished earlier" if result.reused else f"{result.wall_seconds:.1f}s"
        binary = (  # a rare positive class: the figures that show it come first (#17.5)
            ""
            if result.final_roc_auc is None
            else f"ROC-AUC {result.final_roc_auc:.4f} PR-AUC {result.final_pr_auc or 0:.4f} "
            f"positive F1 {result.final_f1_pos or 0:.4f}, "
        )
        self._console.print(
            f"[{index + 1}/{self._total}] {cell.partitioning}, {cell.clients_per_round}/round, "
            f"{target}, seed {cell.seed}: {binary}accuracy {result.final_accuracy:.4f} "
            f"(best {result.best_accuracy:.4f}), {eps}; {how}"
        )
        self._bar.advance(self._grid)
