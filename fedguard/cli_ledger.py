"""``fedguard ledger``: show and verify a node's privacy ledger (for its data protection officer).

Only parses options and calls :mod:`fedguard.privacy.ledger`; errors are ``FedguardError``s,
which ``fedguard.cli.main`` prints as one line (exit status 2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedguard.files import LEDGER_FILE

if TYPE_CHECKING:
    from fedguard.privacy.ledger import Ledger, ServerReceipt

__all__ = ["ledger_app"]

ledger_app = typer.Typer(
    no_args_is_help=True,
    help="Show and verify a node's privacy ledger (every epsilon spent; edits are detected, "
    "a ledger rewritten whole only against the server's receipts: verify --against).",
)

Opt = typer.Option
_STATE_HELP = "the node's state folder (holds ledger.jsonl)"


def _open(state: Path) -> Ledger:
    from fedguard.privacy.ledger import Ledger, LedgerError

    path = state / LEDGER_FILE
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
    committed, voided = ledger.committed(), ledger.voided()
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
        if e.hash in voided:  # its update never left the node: counted for no record
            status = "void (never released, given back)"
        elif fp not in spent or eps > spent[fp][0]:
            spent[fp] = (eps, delta)
        table.add_row(
            str(e.seq),
            e.time,
            e.run or "",
            str(e.server_round),
            fp.removeprefix("hmac:")[:12],
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
def verify(
    state: Annotated[Path, Opt("--state", help=_STATE_HELP)],
    against: Annotated[
        Path | None,
        Opt(
            "--against",
            help="the server's metrics.jsonl: also match every receipt it stored for this "
            "node, by entry number and hash (names a rewritten or truncated ledger)",
        ),
    ] = None,
    node: Annotated[
        str | None,
        Opt("--node", help="this node's name in --against (needed if it holds several)"),
    ] = None,
) -> None:
    """Check the ledger's lines and hash chain (exit 0 if intact, else list every problem
    and exit 1). Alone, this detects edited, reordered or deleted lines but NOT a ledger
    rewritten whole with recomputed hashes, nor its newest lines removed; with --against,
    it also detects a ledger rewritten or truncated before the newest entry the server
    received (not entries the server never received)."""
    ledger = _open(state)
    if against is None:
        report = ledger.verify()
        anchor = ""
    else:
        receipts = _server_receipts(against, node)
        report = ledger.verify_against(receipts)
        anchor = f", and the {len(receipts)} receipts {against} holds match it"
    if report.ok:
        typer.echo(f"ledger OK: {report.entries} entries, hash chain intact{anchor}")
        return
    for problem in report.problems:
        typer.echo(problem)
    sys.exit(1)  # not typer.Exit: main() runs click with standalone_mode=False


def _server_receipts(path: Path, node: str | None) -> list[ServerReceipt]:
    """The distinct receipts ``node`` sent that the server stored in ``path``."""
    import json

    from fedguard.errors import DataError
    from fedguard.privacy.ledger import ServerReceipt

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--against {path}: cannot read the server's metrics ({exc})") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise DataError(f"--against {path} line {number}: not JSON") from None
        by_node = row.get("receipts") if isinstance(row, dict) else None
        if isinstance(by_node, dict):
            rows.append((number, by_node))
    names = sorted({n for _, by_node in rows for n in by_node})
    if node is None:
        if len(names) != 1:
            raise DataError(
                f"--node: {path} holds receipts of {len(names)} nodes {names}; name this one"
            )
        node = names[0]
    elif node not in names:
        raise DataError(f"--node: expected one of {names} (the nodes in {path}), got {node!r}")
    seen: dict[tuple[int, str], ServerReceipt] = {}
    for number, by_node in rows:
        r = by_node.get(node)
        if r is None:  # the node had sent no receipt yet
            continue
        try:
            key = (int(r["ledger_seq"]), str(r["ledger_hash"]))
            if key not in seen:  # each row repeats every node's newest receipt
                seen[key] = ServerReceipt(
                    where=f"{path.name} line {number}",
                    run=str(r["run"]),
                    server_round=int(r["server_round"]),
                    ledger_seq=key[0],
                    ledger_hash=key[1],
                )
        except (TypeError, KeyError, ValueError):
            raise DataError(
                f"--against {path} line {number}: node {node!r}: expected a receipt with "
                "run, server_round, ledger_seq and ledger_hash"
            ) from None
    return sorted(seen.values(), key=lambda r: r.ledger_seq)
