"""``fedguard sweep``: accuracy against privacy over a grid of simulations, resumable.

The front door: :func:`load_sweep` (or :func:`plan_sweep`) checks the whole grid
(:mod:`fedguard.simulations.sweep_grid` says what a sweep file holds) and
:func:`run_sweep` runs it, writing the outputs of
:mod:`fedguard.simulations.sweep_report`.

Resuming: a cell whose ``summary.json`` holds the same settings (all of them except the
output folder) and whose ``metrics.jsonl`` has every round is not run again; any other
cell (never started, interrupted, or run with other settings) is run from scratch.
``overwrite=True`` discards every earlier cell.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedguard._io import atomic_write_json
from fedguard.errors import ConfigError
from fedguard.files import METRICS_FILE, SUMMARY_FILE, SWEEP_MARKER_FILE
from fedguard.fl.loop import RoundRecord
from fedguard.simulations.runner import simulate
from fedguard.simulations.sweep_grid import (
    GRID_KEYS,
    NON_PRIVATE,
    RUNS_DIR,
    Cell,
    SweepPlan,
    format_number,
    load_sweep,
    plan_sweep,
)
from fedguard.simulations.sweep_report import write_outputs

__all__ = [
    "GRID_KEYS",
    "NON_PRIVATE",
    "Cell",
    "CellResult",
    "SweepObserver",
    "SweepPlan",
    "SweepResult",
    "load_sweep",
    "plan_sweep",
    "run_sweep",
]


@dataclass(frozen=True, kw_only=True)
class CellResult:
    """A finished cell: what its ``summary.json`` and ``metrics.jsonl`` say."""

    cell: Cell
    final_accuracy: float
    best_accuracy: float
    best_round: int
    final_f1_macro: float
    final_roc_auc: float | None
    # Binary tasks (None otherwise, and for a cell run before these were recorded).
    final_pr_auc: float | None = None
    final_f1_pos: float | None = None
    final_precision_pos: float | None = None
    final_recall_pos: float | None = None
    final_threshold: float | None = None
    epsilon_reached: float | None
    delta: float | None
    accountant: str | None
    wall_seconds: float
    reused: bool  # True: finished by an earlier invocation, not run again


@dataclass(frozen=True, kw_only=True)
class SweepResult:
    """What :func:`run_sweep` did and wrote."""

    out: Path
    results: tuple[CellResult, ...]
    ran: int
    reused: int
    results_csv: Path
    plot: Path
    report: Path
    wall_seconds: float


class SweepObserver(Protocol):
    """Progress hooks (the CLI's progress bar); every method is called in the sweep's thread."""

    def sweep_started(self, *, plan: SweepPlan, finished: int) -> None: ...

    def cell_started(self, *, index: int, cell: Cell, reused: bool) -> None: ...

    def round_done(self, record: RoundRecord) -> None: ...

    def cell_done(self, *, index: int, result: CellResult) -> None: ...


def run_sweep(
    *, plan: SweepPlan, overwrite: bool = False, observer: SweepObserver | None = None
) -> SweepResult:
    """Run every cell not finished already, then write ``results.csv``, the plot, the report.

    ``results.csv`` is rewritten after each cell, so an interrupted sweep keeps its rows.
    """
    started = time.perf_counter()
    _check_out(plan.out, overwrite=overwrite)
    earlier = {} if overwrite else {c.name: _finished(c) for c in plan.cells}
    if observer is not None:
        finished = sum(r is not None for r in earlier.values())
        observer.sweep_started(plan=plan, finished=finished)
    _clear_out(plan.out, overwrite=overwrite)
    atomic_write_json(plan.out / SWEEP_MARKER_FILE, _marker(plan))
    results: list[CellResult] = []
    ran = 0
    for index, cell in enumerate(plan.cells):
        result = earlier.get(cell.name)
        if observer is not None:
            observer.cell_started(index=index, cell=cell, reused=result is not None)
        if result is None:
            on_round = None if observer is None else observer.round_done
            simulate(cell.config, overwrite=True, on_round=on_round)
            result = _finished(cell)
            if result is None:  # pragma: no cover - simulate raises before this
                raise RuntimeError(f"{cell.config.out}: the run left no complete results")
            result = dataclasses.replace(result, reused=False)
            ran += 1
        results.append(result)
        if observer is not None:
            observer.cell_done(index=index, result=result)
        if not result.reused:
            write_outputs(out=plan.out, plan=plan, results=results, final=False)
    paths = write_outputs(out=plan.out, plan=plan, results=results, final=True)
    return SweepResult(
        out=plan.out,
        results=tuple(results),
        ran=ran,
        reused=len(results) - ran,
        results_csv=paths.results_csv,
        plot=paths.plot,
        report=paths.report,
        wall_seconds=time.perf_counter() - started,
    )


# --- resuming --------------------------------------------------------------------------


# Settings that change how a cell runs, not its results (vectorised training gives the
# same numbers as one client at a time, up to float rounding).
_HOW_NOT_WHAT = frozenset({"out", "threads", "vectorize"})


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _HOW_NOT_WHAT}


def _finished(cell: Cell) -> CellResult | None:
    """The cell's results if a complete run with the same settings is on disk."""
    folder = cell.config.out
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        lines = (folder / METRICS_FILE).read_text(encoding="utf-8").splitlines()
        rounds = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("config"), dict):
        return None
    if _comparable(summary["config"]) != _comparable(cell.config.to_dict()):
        return None
    if len(rounds) != cell.config.rounds:
        return None
    best = max(rounds, key=lambda r: r["accuracy"])
    return CellResult(
        cell=cell,
        final_accuracy=summary["final_accuracy"],
        best_accuracy=best["accuracy"],
        best_round=best["round"],
        final_f1_macro=summary["final_f1_macro"],
        final_roc_auc=summary["final_roc_auc"],
        final_pr_auc=summary.get("final_pr_auc"),
        final_f1_pos=summary.get("final_f1_pos"),
        final_precision_pos=summary.get("final_precision_pos"),
        final_recall_pos=summary.get("final_recall_pos"),
        final_threshold=summary.get("final_threshold"),
        epsilon_reached=summary["final_epsilon_max"],
        delta=summary["delta"],
        accountant=summary["accountant"],
        wall_seconds=summary["wall_seconds"],
        reused=True,
    )


def _check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse a folder that holds something other than an earlier sweep (writes nothing)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: expected a folder, got {str(out)!r}, which is a file")
    earlier = out.is_dir() and any(out.iterdir())
    if earlier and not overwrite and not (out / SWEEP_MARKER_FILE).is_file():
        raise ConfigError(
            f"--out: expected a new or empty folder or an earlier sweep's, got {str(out)!r} "
            f"which holds other files (pass --overwrite to use it anyway)"
        )


def _clear_out(out: Path, *, overwrite: bool) -> None:
    """Create ``out``; with ``overwrite``, first delete every earlier sweep output in it."""
    if overwrite:
        from fedguard.simulations.sweep_report import OUTPUT_FILES

        for name in (RUNS_DIR, SWEEP_MARKER_FILE, *OUTPUT_FILES):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    try:
        (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"--out: cannot create folder {str(out)!r}: {exc.strerror or exc}"
        ) from None


def _marker(plan: SweepPlan) -> dict[str, Any]:
    axes = dict(plan.axes, epsilon=[format_number(e) for e in plan.axes["epsilon"]])
    return {
        "format": "fedguard-sweep/1",
        "source": None if plan.source is None else str(plan.source),
        "axes": axes,
        "settings": plan.settings,
        "cells": [c.name for c in plan.cells],
    }
