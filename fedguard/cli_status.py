"""``fedguard status``: the operator's view of a federation at a glance (``--json`` for
scripts). Fast: no torch, no Flower import (Flower's CLI answers for the SuperLink)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer import Option as Opt

__all__ = ["status"]


def status(
    config: Annotated[Path, Opt("--config", help="federation.toml")],
    as_json: Annotated[bool, Opt("--json", help="one JSON object, for scripts")] = False,
) -> None:
    """Enrolled and connected nodes, the run and its round, each node's epsilon."""
    from fedguard.deploy_config import load_federation_config
    from fedguard.server.status import federation_status

    st = federation_status(load_federation_config(config))
    if as_json:
        typer.echo(st.to_json())
        return
    typer.echo(
        f"federation {st.federation} (run {st.run}): {st.rounds_done} of {st.rounds_planned} "
        f"rounds done; server {st.server}"
    )
    if st.last_round:
        from fedguard.task.metrics import headline  # numpy only: status stays fast

        r = st.last_round
        figures = headline(r) or "no evaluation figures"  # binary tasks lead with ROC-AUC
        typer.echo(
            f"last round {r.get('round')}: {figures}, "
            f"{r.get('clients')} updates aggregated, {r.get('refused')} refused"
        )
    if not st.nodes:
        typer.echo("no node enrolled yet (the server enrols keys-dir/*.pub when it starts)")
        return
    head = f"{'node':<24} {'connection':<12} {'last seen':<26} {'epsilon':>8}  receipt"
    typer.echo(head)
    for n in st.nodes:
        connection = "revoked" if n.revoked_at else n.connection
        eps = "-" if n.epsilon is None else f"{n.epsilon:.3f}"
        receipt = (
            "-"
            if n.receipt_round is None
            else f"round {n.receipt_round}, delta {n.delta:g}, {n.accountant}"
        )
        typer.echo(f"{n.name:<24} {connection:<12} {n.last_seen or '-':<26} {eps:>8}  {receipt}")
