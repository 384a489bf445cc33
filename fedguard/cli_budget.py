"""``fedguard budget``: a node's privacy budget per data set (``--json`` for scripts).
Fast: no torch, opacus or Flower import (a test checks ``sys.modules``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer import Option as Opt

__all__ = ["budget"]


def budget(
    config: Annotated[Path, Opt("--config", help="node.toml")],
    as_json: Annotated[bool, Opt("--json", help="one JSON object, for scripts")] = False,
) -> None:
    """Per data set: epsilon spent, left under privacy.max-epsilon, and per run."""
    from fedguard.budget_report import node_budget
    from fedguard.deploy_config import load_node_config

    b = node_budget(cfg=load_node_config(config))
    if as_json:
        typer.echo(b.to_json())
        return
    typer.echo(
        f"node {b.node}: ledger {b.ledger} ({b.entries} entries, hash chain intact); "
        f"privacy.max-epsilon {b.max_epsilon:g} per record, every run together"
    )
    if not b.datasets:
        typer.echo("no round recorded: nothing spent")
        return
    for d in b.datasets:
        accountant = ", ".join(d.accountant) or "-"
        delta = ", ".join(f"{x:g}" for x in d.delta) or "-"
        typer.echo(
            f"data set {d.fingerprint}: epsilon spent {d.spent:.4g}, left {d.left:.4g} of "
            f"{b.max_epsilon:g} (delta {delta}, accountant {accountant})"
        )
        for r in d.runs:
            extra = "".join(
                f", {n} {what}"
                for n, what in ((r.pending, "interrupted (counted)"), (r.void, "void"))
                if n
            )
            typer.echo(
                f"  run {r.run}: rounds {r.first_round}-{r.last_round}, {r.released} released"
                f"{extra}; data set epsilon after it {r.epsilon_after:.4g}"
            )
    typer.echo(f"head hash: {b.head} (keep a copy elsewhere to detect a rewritten ledger)")
