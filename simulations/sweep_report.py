"""A sweep's outputs: ``results.csv``, ``accuracy_vs_epsilon.png`` and ``report.md``.

Every file is written atomically (temp file, fsync, rename), so a reader never sees half a
table. Aggregates are the mean and the sample standard deviation (n - 1; 0 for one seed)
over the seeds of one setting; the accuracy plotted is the final round's test accuracy.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedguard._io import atomic_write_bytes, atomic_write_text
from fedguard.files import PLOT_FILE, REPORT_FILE, RESULTS_FILE

if TYPE_CHECKING:
    from fedguard.simulations.sweep import CellResult, SweepPlan

__all__ = [
    "OUTPUT_FILES",
    "SettingStats",
    "SweepOutputs",
    "aggregate",
    "result_table",
    "write_outputs",
]

OUTPUT_FILES: tuple[str, ...] = (RESULTS_FILE, PLOT_FILE, REPORT_FILE)

# Grid settings get their own columns first; the other settings follow, in config order.
_GRID_OPTIONS = ("epsilon", "no-dp", "seed", "partition", "alpha", "clients-per-round", "out")
_METRIC_COLUMNS = (
    "final_accuracy",
    "best_accuracy",
    "best_round",
    "final_f1_macro",
    "final_roc_auc",
    "final_pr_auc",
    "final_f1_pos",
    "final_precision_pos",
    "final_recall_pos",
    "final_threshold",
    "epsilon_reached",
    "delta",
    "accountant",
    "wall_seconds",
)


@dataclass(frozen=True, kw_only=True)
class SweepOutputs:
    results_csv: Path
    plot: Path
    report: Path


@dataclass(frozen=True, kw_only=True)
class SettingStats:
    """One grid setting aggregated over its seeds (mean, sample std)."""

    partitioning: str
    clients_per_round: int
    epsilon: float  # math.inf: no DP
    seeds: int
    final_accuracy: tuple[float, float]
    best_accuracy: tuple[float, float]
    f1_macro: tuple[float, float]
    roc_auc: tuple[float, float] | None
    pr_auc: tuple[float, float] | None
    f1_pos: tuple[float, float] | None  # positive class, at the threshold chosen per run
    epsilon_reached: tuple[float, float] | None
    wall_seconds: float  # mean


def write_outputs(
    *, out: Path, plan: SweepPlan, results: Sequence[CellResult], final: bool
) -> SweepOutputs:
    """Write ``results.csv``; with ``final``, also the plot and ``report.md``."""
    paths = SweepOutputs(
        results_csv=out / RESULTS_FILE, plot=out / PLOT_FILE, report=out / REPORT_FILE
    )
    columns, rows = result_table(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    atomic_write_text(paths.results_csv, buffer.getvalue())
    if final:
        stats = aggregate(results)
        atomic_write_bytes(paths.plot, _plot(stats, plan=plan))
        atomic_write_text(paths.report, _report(stats, plan=plan, results=results))
    return paths


def result_table(results: Sequence[CellResult]) -> tuple[list[str], list[list[str]]]:
    """``results.csv``: a header and one row per run, in table order."""
    ordered = _ordered(results)
    # delta and accountant are reported with the results (empty without DP).
    skip = {*_GRID_OPTIONS, *(m.replace("_", "-") for m in _METRIC_COLUMNS)}
    other = [k for k in (ordered[0].cell.config.to_dict() if ordered else {}) if k not in skip]
    columns = [
        "run",
        "epsilon",
        "private",
        "partition",
        "alpha",
        "clients_per_round",
        "seed",
        *(k.replace("-", "_") for k in other),
        *_METRIC_COLUMNS,
    ]
    rows: list[list[str]] = []
    for r in ordered:
        c = r.cell
        settings = c.config.to_dict()
        rows.append(
            [
                c.name,
                _text(c.epsilon),
                _text(c.private),
                c.partition,
                _text(c.alpha),
                _text(c.clients_per_round),
                _text(c.seed),
                *(_text(settings[k]) for k in other),
                *(_text(getattr(r, m)) for m in _METRIC_COLUMNS),
            ]
        )
    return columns, rows


def aggregate(results: Sequence[CellResult]) -> list[SettingStats]:
    """Mean and sample std over seeds for every (partitioning, cohort, epsilon)."""
    groups: dict[tuple[str, int, float], list[CellResult]] = {}
    for r in _ordered(results):
        key = (r.cell.partitioning, r.cell.clients_per_round, r.cell.epsilon)
        groups.setdefault(key, []).append(r)
    out = []
    for (partitioning, cohort, epsilon), runs in groups.items():
        aucs = [r.final_roc_auc for r in runs if r.final_roc_auc is not None]
        pr_aucs = [r.final_pr_auc for r in runs if r.final_pr_auc is not None]
        f1s = [r.final_f1_pos for r in runs if r.final_f1_pos is not None]
        spent = [r.epsilon_reached for r in runs if r.epsilon_reached is not None]
        out.append(
            SettingStats(
                partitioning=partitioning,
                clients_per_round=cohort,
                epsilon=epsilon,
                seeds=len(runs),
                final_accuracy=_mean_std([r.final_accuracy for r in runs]),
                best_accuracy=_mean_std([r.best_accuracy for r in runs]),
                f1_macro=_mean_std([r.final_f1_macro for r in runs]),
                roc_auc=_mean_std(aucs) if aucs else None,
                pr_auc=_mean_std(pr_aucs) if pr_aucs else None,
                f1_pos=_mean_std(f1s) if f1s else None,
                epsilon_reached=_mean_std(spent) if spent else None,
                wall_seconds=float(np.mean([r.wall_seconds for r in runs])),
            )
        )
    return out


def _ordered(results: Sequence[CellResult]) -> list[CellResult]:
    return sorted(
        results,
        key=lambda r: (
            r.cell.partition,
            r.cell.alpha or 0.0,
            r.cell.clients_per_round,
            r.cell.epsilon,
            r.cell.seed,
        ),
    )


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return float(arr.mean()), std


def _text(value: Any) -> str:
    """CSV cell: empty for None, true/false, exact floats (``inf`` for no DP)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    return str(value)


def _series_label(s: SettingStats, *, many_cohorts: bool) -> str:
    return f"{s.partitioning}, {s.clients_per_round}/round" if many_cohorts else s.partitioning


def _plot(stats: Sequence[SettingStats], *, plan: SweepPlan) -> bytes:
    """Final accuracy against target epsilon: one line per partitioning (and cohort size),
    mean +- std over seeds; the non-private runs as a dashed horizontal line and band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    many_cohorts = len({s.clients_per_round for s in stats}) > 1
    series: dict[str, list[SettingStats]] = {}
    for s in stats:
        series.setdefault(_series_label(s, many_cohorts=many_cohorts), []).append(s)
    finite = sorted({s.epsilon for s in stats if math.isfinite(s.epsilon)})
    binary = _binary(stats)  # a rare positive class: accuracy would hide it

    def shown(p: SettingStats) -> tuple[float, float]:
        return (p.f1_pos or (math.nan, math.nan)) if binary else p.final_accuracy

    colors = [f"C{i % 10}" for i in range(len(series))]
    for color, (label, points) in zip(colors, series.items(), strict=True):
        private = [p for p in points if math.isfinite(p.epsilon)]
        if private:
            x = np.array([p.epsilon for p in private])
            y = np.array([shown(p)[0] for p in private])
            sd = np.array([shown(p)[1] for p in private])
            ax.errorbar(x, y, yerr=sd, marker="o", capsize=3, color=color, label=label)
            ax.fill_between(x, y - sd, y + sd, color=color, alpha=0.15, linewidth=0)
        for p in points:
            if not math.isfinite(p.epsilon):
                mean, spread = shown(p)
                ax.axhline(mean, color=color, linestyle="--", label=f"{label}, non-private")
                ax.axhspan(mean - spread, mean + spread, color=color, alpha=0.08, linewidth=0)
    ax.set_xscale("log")
    if finite:
        ax.set_xlim(finite[0] / 1.5, finite[-1] * 1.5)
        ax.set_xticks(finite, [f"{e:g}" for e in finite])
    else:
        ax.set_xlim(0.1, 10.0)
    base = plan.cells[0].config
    seeds = len(plan.axes["seed"])
    ax.set_xlabel(f"target epsilon per client (delta {base.delta:g}, {base.accountant.upper()})")
    what = "final positive-class F1" if binary else "final test accuracy"
    ax.set_ylabel(f"{what} (mean ± std, {seeds} seed{'s' if seeds > 1 else ''})")
    ax.set_title(
        f"{base.dataset}, {base.model}, {base.clients} clients, {base.rounds} rounds",
        fontsize=10,
    )
    ax.minorticks_off()  # only the epsilons swept are ticked
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _binary(stats: Sequence[SettingStats]) -> bool:
    return any(s.f1_pos is not None for s in stats)


def _pm(value: tuple[float, float] | None, digits: int = 4) -> str:
    return "" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def _binary_cells(r: CellResult) -> list[str]:
    def f(v: float | None, fmt: str = ".4f") -> str:
        return "" if v is None else format(v, fmt)

    f1 = f(r.final_f1_pos)
    if r.final_f1_pos is not None:
        f1 += f" ({f(r.final_precision_pos)}, {f(r.final_recall_pos)})"
    return [f(r.final_roc_auc), f(r.final_pr_auc), f1, f(r.final_threshold, ".4g")]


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _report(
    stats: Sequence[SettingStats], *, plan: SweepPlan, results: Sequence[CellResult]
) -> str:
    base = plan.cells[0].config
    axes = plan.axes
    eps = ", ".join("non-private" if math.isinf(e) else f"{e:g}" for e in axes["epsilon"])
    partitionings = sorted({c.partitioning for c in plan.cells})
    cohorts = sorted({c.clients_per_round for c in plan.cells})
    any_auc = any(s.roc_auc is not None for s in stats)
    binary = _binary(stats)  # lead with the figures a rare positive class needs
    setting_rows = [
        [
            s.partitioning,
            str(s.clients_per_round),
            "non-private" if math.isinf(s.epsilon) else f"{s.epsilon:g}",
            str(s.seeds),
            *([_pm(s.roc_auc), _pm(s.pr_auc), _pm(s.f1_pos)] if binary else []),
            _pm(s.final_accuracy),
            _pm(s.best_accuracy),
            _pm(s.f1_macro),
            *([_pm(s.roc_auc)] if any_auc and not binary else []),
            _pm(s.epsilon_reached, 3),
            f"{s.wall_seconds:.1f}",
        ]
        for s in stats
    ]
    setting_columns = [
        "partitioning",
        "clients/round",
        "target epsilon",
        "seeds",
        *(["ROC-AUC", "PR-AUC", "positive F1"] if binary else []),
        "final accuracy",
        "best accuracy",
        "macro F1",
        *(["ROC-AUC"] if any_auc and not binary else []),
        "epsilon reached",
        "seconds",
    ]
    run_columns = [
        "run",
        "seed",
        *(["ROC-AUC", "PR-AUC", "positive F1 (precision, recall)", "threshold"] if binary else []),
        "final accuracy",
        "best accuracy (round)",
        "macro F1",
        *([] if binary else ["ROC-AUC"]),
        "epsilon reached",
        "seconds",
    ]
    run_rows = [
        [
            r.cell.name,
            str(r.cell.seed),
            *(_binary_cells(r) if binary else []),
            f"{r.final_accuracy:.4f}",
            f"{r.best_accuracy:.4f} ({r.best_round})",
            f"{r.final_f1_macro:.4f}",
            *([] if binary else ["" if r.final_roc_auc is None else f"{r.final_roc_auc:.4f}"]),
            "" if r.epsilon_reached is None else f"{r.epsilon_reached:.3f}",
            f"{r.wall_seconds:.1f}",
        ]
        for r in _ordered(results)
    ]
    settings = _markdown(
        ["setting", "value"],
        [
            [k, f"`{v}`"]
            for k, v in plan.cells[0].config.to_dict().items()
            if k not in _GRID_OPTIONS
        ],
    )
    source = "" if plan.source is None else f" from `{plan.source}`"
    return f"""# Sweep: accuracy against privacy

{base.dataset}, model {base.model}, {base.clients} clients, {base.rounds} rounds, delta \
{base.delta:g} ({base.accountant.upper()} accountant){source}. Grid: target epsilon {{{eps}}} x \
{len(axes["seed"])} seeds x partitioning {{{", ".join(partitionings)}}} x clients per round \
{{{", ".join(map(str, cohorts))}}}: {len(plan.cells)} runs, {len(results)} finished.

![final test accuracy against target epsilon]({PLOT_FILE})

Epsilon is each client's target for the whole run; "epsilon reached" is the largest any
client spent (from its accountant). Values are mean ± sample standard deviation over seeds.
Every run's files are in `runs/<run>/`; every number is also in `{RESULTS_FILE}`.

## Per setting

{_markdown(setting_columns, setting_rows)}

## Every run

{_markdown(run_columns, run_rows)}

## Other settings

{settings}
"""
