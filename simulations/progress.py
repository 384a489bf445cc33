"""Terminal progress for ``fedguard simulate``: a bar over rounds, one line per round."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedguard.class_labels import class_mapping, default_names
from fedguard.config import SimulationConfig
from fedguard.fl.data import federated_data
from fedguard.fl.loop import RoundRecord
from fedguard.simulations.runner import SimulationSummary, simulate
from fedguard.task.metrics import headline

__all__ = ["format_round", "run_with_progress"]


def format_round(record: RoundRecord) -> str:
    eps = (
        ""
        if record.epsilon_max is None
        else f"  epsilon max {record.epsilon_max:.3f} mean {record.epsilon_mean:.3f}"
    )
    refused = f"  refused {record.refused}" if record.refused else ""
    return (
        f"round {record.round:3d}  {headline(record.as_dict())}  loss {record.loss:.4f}"
        f"{eps}  clients {record.clients}{refused}  {record.seconds:.2f}s"
    )


def run_with_progress(config: SimulationConfig, *, overwrite: bool = False) -> SimulationSummary:
    console = Console(highlight=False, soft_wrap=True)
    privacy = (
        "no DP"
        if config.no_dp
        else f"DP-SGD, target epsilon {config.epsilon:g} at delta {config.delta:g} "
        f"per client ({config.accountant.upper()} accountant)"
    )
    console.print(
        f"fedguard simulate: {config.dataset}, {config.task or config.model}, "
        f"{config.clients} clients "
        f"({config.cohort_size} per round), {config.rounds} rounds, "
        f"{config.partition} partition, engine {config.engine}; {privacy}"
    )
    ds = federated_data(config).dataset  # cached: the run below uses this very load
    console.print(class_mapping(ds.class_names or default_names(ds.num_classes)))
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("rounds", total=config.rounds)

        def show(record: RoundRecord) -> None:
            bar.console.print(format_round(record))
            bar.advance(task)

        summary = simulate(config, overwrite=overwrite, on_round=show)
    eps = (
        ""
        if summary.final_epsilon_max is None
        else f", epsilon <= {summary.final_epsilon_max:.3f} at delta {summary.delta:g} "
        f"({summary.accountant})"
    )
    console.print(
        f"final {headline(_final(summary))}{eps}; "
        f"{summary.wall_seconds:.1f}s; results in {config.out}"
    )
    return summary


def _final(summary: SimulationSummary) -> dict[str, object]:
    """``summary.json``'s ``final_*`` figures under their metrics-row names."""
    prefix = "final_"
    return {k[len(prefix) :]: v for k, v in summary.as_dict().items() if k.startswith(prefix)}
