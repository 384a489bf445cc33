"""``fedguard sweep``: accuracy against privacy over a grid of simulations, resumable.

A sweep file is a simulation config (:mod:`fedguard.config`) in which the grid keys may be
lists: ``epsilon`` (a number > 0, or ``inf`` / ``"non-private"`` for a run without DP),
``seed``, ``partition``, ``alpha`` (the Dirichlet concentrations; only ``dirichlet``
expands over them) and ``clients-per-round``. Every combination is one cell, simulated into
its own folder under ``OUT/runs/``. The whole grid (keys, values, data sets, partitions)
is checked before anything is written or run.

Resuming: a cell whose ``summary.json`` holds the same settings (all of them except the
output folder) and whose ``metrics.jsonl`` has every round is not run again; any other
cell (never started, interrupted, or run with other settings) is run from scratch.
``overwrite=True`` discards every earlier cell.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedguard._io import atomic_write_json
from fedguard.config import SimulationConfig, load_simulation_config
from fedguard.errors import ConfigError, DataError, FedguardError, invalid
from fedguard.federation import RoundRecord, federated_data
from fedguard.simulations.runner import METRICS_FILE, SUMMARY_FILE, simulate
from fedguard.simulations.sweep_report import write_outputs
from fedguard.task.partition import PARTITION_SCHEMES

__all__ = [
    "GRID_KEYS",
    "Cell",
    "CellResult",
    "SweepObserver",
    "SweepPlan",
    "SweepResult",
    "load_sweep",
    "plan_sweep",
    "run_sweep",
]

GRID_KEYS: tuple[str, ...] = ("epsilon", "seed", "partition", "alpha", "clients-per-round")
"""Keys that may hold a list of values; every other key is one simulation setting."""

NON_PRIVATE: tuple[str, ...] = ("inf", "non-private")
"""How a sweep file names a run without DP in ``epsilon`` (TOML's ``inf`` works too)."""

DEFAULT_OUT = Path("runs/sweep")
MARKER_FILE = "sweep.json"
RUNS_DIR = "runs"
_EPSILON_ALLOWED = 'numbers > 0, or inf / "non-private" (no DP)'
_DEFAULTS = SimulationConfig()


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One point of the grid and the simulation that measures it."""

    name: str
    epsilon: float  # math.inf: no DP
    seed: int
    partition: str
    alpha: float | None  # None unless partition is dirichlet
    config: SimulationConfig

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    @property
    def partitioning(self) -> str:
        """``iid``, ``shards`` or ``dirichlet alpha=0.5``: the plot's line label."""
        return self.partition if self.alpha is None else f"{self.partition} alpha={self.alpha:g}"

    @property
    def clients_per_round(self) -> int:
        return self.config.cohort_size


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """A validated grid: every cell's configuration, in the order they run."""

    source: Path | None
    out: Path
    axes: dict[str, list[Any]]
    settings: dict[str, Any]  # the keys that are not grid axes, as given
    cells: tuple[Cell, ...]


@dataclass(frozen=True, kw_only=True)
class CellResult:
    """A finished cell: what its ``summary.json`` and ``metrics.jsonl`` say."""

    cell: Cell
    final_accuracy: float
    best_accuracy: float
    best_round: int
    final_f1_macro: float
    final_roc_auc: float | None
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


def load_sweep(*, path: Path, out: Path | None = None) -> SweepPlan:
    """Read and validate a sweep file; ``out`` (``--out``) overrides its ``out`` key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config: {path} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return plan_sweep(settings=data, out=out, source=path)


def plan_sweep(
    *, settings: Mapping[str, Any], out: Path | None = None, source: Path | None = None
) -> SweepPlan:
    """Expand ``settings`` (sweep-file keys) into cells and validate every one of them.

    Raises ``ConfigError`` (or ``DataError`` for an unusable data set) naming the file, the
    key, what is allowed and the value received.
    """
    base: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            raise invalid(key, allowed="a value (tables are not used)", got=value, source=source)
        if key == "no-dp":
            allowed = f'epsilon = [..., "{NON_PRIVATE[1]}"] instead'
            raise invalid(key, allowed=allowed, got=value, source=source)
        if isinstance(value, list) and key not in GRID_KEYS:
            allowed = f"a single value (only {', '.join(GRID_KEYS)} take lists)"
            raise invalid(key, allowed=allowed, got=value, source=source)
        if key not in GRID_KEYS:
            base[key] = value
    if out is None:
        given = base.pop("out", None)
        if given is not None and not isinstance(given, str):
            raise invalid("out", allowed="a folder path", got=given, source=source)
        out = DEFAULT_OUT if given is None else Path(given)
    else:
        base.pop("out", None)
    axes = _axes(settings, source=source)
    cells = _cells(axes, base, out=out, source=source)
    checked: set[tuple[Any, ...]] = set()
    for cell in cells:
        c = cell.config
        data_key = (c.dataset, c.target, c.seed, c.clients, c.partition, c.alpha)
        if data_key in checked:
            continue
        checked.add(data_key)
        try:
            federated_data(c)  # the data set loads and the partition is possible
        except DataError as exc:
            raise _in_file(DataError(f"dataset: {exc}"), source) from None
        except FedguardError as exc:
            raise _in_file(exc, source) from None
    return SweepPlan(source=source, out=out, axes=axes, settings=base, cells=tuple(cells))


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
    atomic_write_json(plan.out / MARKER_FILE, _marker(plan))
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


# --- the grid -------------------------------------------------------------------------


def _axes(settings: Mapping[str, Any], *, source: Path | None) -> dict[str, list[Any]]:
    def values(key: str, default: Any) -> list[Any]:
        raw = settings.get(key, default)
        listed = raw if isinstance(raw, list) else [raw]
        if not listed:
            raise invalid(key, allowed="a value or a non-empty list", got=raw, source=source)
        return listed

    def check(key: str, items: list[Any], ok: Any, allowed: str) -> None:
        for item in items:
            if not ok(item):
                raise invalid(key, allowed=allowed, got=item, source=source)
        seen: set[Any] = set()
        for item in items:
            if item in seen:
                raise invalid(key, allowed="distinct values", got=items, source=source)
            seen.add(item)

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    epsilon = [math.inf if v in NON_PRIVATE else v for v in values("epsilon", _DEFAULTS.epsilon)]
    check("epsilon", epsilon, lambda v: number(v) and v > 0 and not math.isnan(v), _EPSILON_ALLOWED)
    seed = values("seed", _DEFAULTS.seed)
    check("seed", seed, lambda v: count(v) and v >= 0, "integers >= 0")
    partition = values("partition", _DEFAULTS.partition)
    check(
        "partition",
        partition,
        lambda v: v in PARTITION_SCHEMES,
        "one of " + ", ".join(PARTITION_SCHEMES),
    )
    alpha = values("alpha", _DEFAULTS.alpha)
    check("alpha", alpha, lambda v: number(v) and 0 < v < math.inf, "finite numbers > 0")
    if len(alpha) > 1 and "dirichlet" not in partition:
        raise invalid(
            "alpha", allowed="one value unless partition lists dirichlet", got=alpha, source=source
        )
    cohort = values("clients-per-round", _DEFAULTS.clients_per_round)
    check(
        "clients-per-round", cohort, lambda v: v is None or (count(v) and v >= 1), "integers >= 1"
    )
    return {
        "epsilon": [float(v) for v in epsilon],
        "seed": seed,
        "partition": partition,
        "alpha": [float(v) for v in alpha],
        "clients-per-round": cohort,
    }


def _cells(
    axes: dict[str, list[Any]], base: dict[str, Any], *, out: Path, source: Path | None
) -> list[Cell]:
    partitionings = [
        (scheme, alpha)
        for scheme in axes["partition"]
        for alpha in (axes["alpha"] if scheme == "dirichlet" else [None])
    ]
    cells: list[Cell] = []
    # Seeds outermost: the first seed's full curve is there early in a long sweep.
    for seed, (scheme, alpha), cohort, eps in itertools.product(
        axes["seed"], partitionings, axes["clients-per-round"], axes["epsilon"]
    ):
        overrides = dict(base, seed=seed, partition=scheme)
        overrides["clients-per-round"] = cohort
        if alpha is not None:
            overrides["alpha"] = alpha
        if math.isfinite(eps):
            overrides["epsilon"] = eps
        else:
            overrides["no-dp"] = True
        probe = _config(overrides, source=source)
        name = "_".join(
            (
                f"eps-{_num(eps)}",
                scheme if alpha is None else f"{scheme}-{_num(alpha)}",
                f"cpr-{probe.cohort_size}",
                f"seed-{seed}",
            )
        )
        config = probe.replace(out=out / RUNS_DIR / name)
        cells.append(
            Cell(name=name, epsilon=eps, seed=seed, partition=scheme, alpha=alpha, config=config)
        )
    if len({c.name for c in cells}) != len(cells):  # two cohorts of the same size
        cohort = axes["clients-per-round"]
        raise invalid("clients-per-round", allowed="distinct sizes", got=cohort, source=source)
    return cells


def _config(overrides: dict[str, Any], *, source: Path | None) -> SimulationConfig:
    try:
        return load_simulation_config(overrides=overrides)
    except FedguardError as exc:
        raise _in_file(exc, source) from None


def _in_file(exc: FedguardError, source: Path | None) -> FedguardError:
    if source is None or str(exc).startswith(f"{source}:"):
        return exc
    return type(exc)(f"{source}: {exc}")


def _num(value: float) -> str:
    """Shortest exact text of a number, for folder names: 3.0 -> 3, 0.5 -> 0.5."""
    if math.isinf(value):
        return "inf"
    text = repr(float(value))
    return text.removesuffix(".0")


# --- resuming --------------------------------------------------------------------------


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "out"}


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
    if earlier and not overwrite and not (out / MARKER_FILE).is_file():
        raise ConfigError(
            f"--out: expected a new or empty folder or an earlier sweep's, got {str(out)!r} "
            f"which holds other files (pass --overwrite to use it anyway)"
        )


def _clear_out(out: Path, *, overwrite: bool) -> None:
    """Create ``out``; with ``overwrite``, first delete every earlier sweep output in it."""
    if overwrite:
        from fedguard.simulations.sweep_report import OUTPUT_FILES

        for name in (RUNS_DIR, MARKER_FILE, *OUTPUT_FILES):
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
    axes = dict(plan.axes, epsilon=[_num(e) for e in plan.axes["epsilon"]])
    return {
        "format": "fedguard-sweep/1",
        "source": None if plan.source is None else str(plan.source),
        "axes": axes,
        "settings": plan.settings,
        "cells": [c.name for c in plan.cells],
    }
