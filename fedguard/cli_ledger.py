"""``fedguard ledger``: show and verify a node's privacy ledger (for its data protection officer).

Only parses options and calls :mod:`fedguard.privacy.ledger`; errors are ``FedguardError``s,
which ``fedguard.cli.main`` prints as one line (exit status 2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fedguard.privacy.ledger import Ledger

__all__ = ["ledger_app"]

ledger_app = typer.Typer(
    no_args_is_help=True,
    help="Show and verify a node's privacy ledger (every epsilon spent, tamper-evident).",
)

Opt = typer.Option
_STATE_HELP = "the node's state folder (holds ledger.jsonl)"


def _open(state: Path) -> Ledger:
    from fedguard.privacy.ledger import LEDGER_FILENAME, Ledger, LedgerError

    path = state / LEDGER_FILENAME
    if not path.is_file():
        raise LedgerError(f"{path}: no privacy ledger at this path (check --state)")
    return Ledger(path=path)


@ledger_app.command("show")
def show(state: Annotated[Path, Opt("--state", help=_STATE_HELP)]) -> None:
    """Every ledger entry, then the epsilon spent per data set."""
    from rich.console import Console
    from rich.table import Table

    ledger = _open(state)
    entries = ledger.entries()  # raises LedgerError if the ledger fails verification
    committed = ledger.committed()
    table = Table(title=f"privacy ledger {ledger.path}")
    for column in (
        "seq",
        "time",
        "run",
        "round",
        "dataset",
        "status",
        "sample rate",
        "noise mult.",
        "steps",
        "epsilon after",
        "delta",
        "accountant",
    ):
        table.add_column(column)
    spent: dict[str, tuple[float, float]] = {}
    for e in entries:
        if e.kind != "pending":
            continue
        status = "committed" if e.hash in committed else "pending (counted as spent)"
        fp = e.dataset_fingerprint or ""
        eps, delta = e.epsilon_after or 0.0, e.delta or 0.0
        if fp not in spent or eps > spent[fp][0]:
            spent[fp] = (eps, delta)
        table.add_row(
            str(e.seq),
            e.time,
            e.run or "",
            str(e.server_round),
            fp.removeprefix("sha256:")[:12],
            status,
            f"{e.sample_rate:g}",
            f"{e.noise_multiplier:g}",
            str(e.steps),
            f"{eps:.4g}",
            f"{delta:g}",
            e.accountant or "",
        )
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
    if not spent:
        console.print("no rounds recorded")
    for fp, (eps, delta) in sorted(spent.items()):
        console.print(f"dataset {fp}: epsilon spent {eps:.4g} (delta {delta:g})", soft_wrap=True)
    console.print(
        f"head hash: {ledger.head()} (keep a copy elsewhere to detect a rewritten ledger)",
        soft_wrap=True,
    )


@ledger_app.command("verify")
def verify(state: Annotated[Path, Opt("--state", help=_STATE_HELP)]) -> None:
    """Check the hash chain; exit 0 if intact, else print every problem and exit 1."""
    report = _open(state).verify()
    if report.ok:
        typer.echo(f"ledger OK: {report.entries} entries, hash chain intact")
        return
    for problem in report.problems:
        typer.echo(problem)
    sys.exit(1)  # not typer.Exit: main() runs click with standalone_mode=False
