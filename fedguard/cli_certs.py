"""``fedguard certs``: TLS certificates and SuperNode keys for a Flower deployment.

Only parses options and calls :mod:`fedguard.deploy.certs`; errors are ``FedguardError``s, which
``fedguard.cli.main`` prints as one line (exit status 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["certs_app"]

certs_app = typer.Typer(
    no_args_is_help=True,
    help="Make TLS certificates (operator) and SuperNode keys (each hospital).",
)

Opt = typer.Option


@certs_app.command("init")
def init(
    out: Annotated[Path, Opt("--out", help="folder for ca.crt, ca.key, server.pem, server.key")],
    host: Annotated[
        list[str] | None,
        Opt(
            "--host",
            help="IP address or DNS name SuperNodes use to reach the SuperLink (repeatable;"
            " default: 127.0.0.1 and localhost)",
        ),
    ] = None,
    days: Annotated[int, Opt("--days", help="validity in days, 1 to 3650")] = 365,
    force: Annotated[bool, Opt("--force", help="replace existing files")] = False,
) -> None:
    """Make a federation CA and the SuperLink's server certificate (operator)."""
    from fedguard.deploy.certs import init_federation

    hosts = tuple(host) if host else ("127.0.0.1", "localhost")
    made = init_federation(out=out, hosts=hosts, days=days, force=force)
    for path in (made.ca_cert, made.ca_key, made.server_cert, made.server_key):
        typer.echo(f"wrote {path}")
    typer.echo(
        f'next: in federation.toml [server] set ca-cert = "{made.ca_cert}", server-cert = '
        f'"{made.server_cert}", server-key = "{made.server_key}", then run `fedguard server '
        f"--config federation.toml`; give {made.ca_cert.name} to every node (node.toml "
        f"[node] ca-cert); keep {made.ca_key.name} offline"
    )


@certs_app.command("node")
def node(
    name: Annotated[str, typer.Argument(metavar="NAME", help="node name, e.g. hospital-a")],
    out: Annotated[Path, Opt("--out", help="folder for NAME and NAME.pub")],
    force: Annotated[bool, Opt("--force", help="replace existing files")] = False,
) -> None:
    """Make a SuperNode's EC P-384 key pair (each hospital).

    NAME (e.g. hospital-a): a letter or digit, then up to 62 of A-Z a-z 0-9 _ . -
    """
    from fedguard.deploy.certs import make_node_keys

    made = make_node_keys(name=name, out=out, force=force)
    typer.echo(f"wrote {made.private_key}")
    typer.echo(f"wrote {made.public_key}")
    typer.echo(
        f"next: give {made.public_key.name} to the operator (it goes into the server's "
        f"keys-dir); keep {made.name} private: node.toml [node] private-key = "
        f'"{made.private_key}", then `fedguard client --config node.toml`'
    )
