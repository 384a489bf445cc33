"""The ``fedguard`` command.

Errors a user can fix (bad options, config keys, data files) print one line and exit
with status 2; nothing is written in that case.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedguard.cli_budget import budget
from fedguard.cli_certs import certs_app
from fedguard.cli_ledger import ledger_app
from fedguard.cli_status import status
from fedguard.cli_sweep import sweep
from fedguard.errors import FedguardError

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    # Typer's pretty tracebacks print every frame's local variables (a config, the process
    # environment): main() reports unexpected errors itself, in one line.
    pretty_exceptions_enable=False,
    help="fedguard: privacy-preserving federated training.",
)
app.add_typer(certs_app, name="certs")
app.add_typer(ledger_app, name="ledger")
app.command("sweep")(sweep)
app.command("status")(status)
app.command("budget")(budget)

# Quiet, offline Flower/Ray in every process fedguard starts: no telemetry, no update checks.
_QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}

Opt = typer.Option


@app.callback()
def _root() -> None:
    """fedguard: privacy-preserving federated training."""


@app.command()
def simulate(
    config: Annotated[Path | None, Opt("--config", help="TOML file; keys as these options")] = None,
    dataset: Annotated[
        str | None,
        Opt(
            help="digits, breast_cancer, fashion_mnist, fashion_mnist_scattering, "
            "or a .csv/.parquet/.npz path"
        ),
    ] = None,
    target: Annotated[str | None, Opt(help="label column of a CSV/Parquet file")] = None,
    schema: Annotated[
        Path | None, Opt(help="declared feature schema (TOML) of a CSV/Parquet file")
    ] = None,
    model: Annotated[str | None, Opt(help="logreg, mlp, cnn, tb_cnn or scatter_cnn")] = None,
    hidden: Annotated[int | None, Opt(help="width of the mlp's hidden layer")] = None,
    task: Annotated[
        str | None, Opt(help="your own task, package.module:attribute (instead of --model)")
    ] = None,
    fix_model: Annotated[
        bool | None,
        Opt("--fix-model", help="let Opacus replace BatchNorm and co. in --task's model"),
    ] = None,
    clients: Annotated[int | None, Opt(help="number of virtual clients")] = None,
    clients_per_round: Annotated[int | None, Opt(help="cohort size (default: all)")] = None,
    rounds: Annotated[int | None, Opt()] = None,
    local_epochs: Annotated[int | None, Opt()] = None,
    batch_size: Annotated[
        int | None,
        Opt(
            help="batch size asked for; with DP each record is sampled with probability "
            "1/ceil(n/b) per step (Poisson), so a client of n records trains on batches of "
            "n/ceil(n/b) records on average (at most b)"
        ),
    ] = None,
    lr: Annotated[float | None, Opt(help="client learning rate")] = None,
    momentum: Annotated[float | None, Opt(help="client SGD momentum")] = None,
    strategy: Annotated[
        str | None, Opt(help="fedavgm (default), fedavg, fedadam or fedprox: the server strategy")
    ] = None,
    server_lr: Annotated[
        float | None, Opt(help="server step size (fedadam: Adam's, ~0.01)")
    ] = None,
    server_momentum: Annotated[float | None, Opt(help="FedAvgM momentum (0: FedAvg)")] = None,
    prox_mu: Annotated[
        float | None, Opt(help="fedprox: the clients' proximal term mu/2 ||w - w_global||^2")
    ] = None,
    epsilon: Annotated[
        float | None, Opt(help="each client's target epsilon for the whole run")
    ] = None,
    delta: Annotated[float | None, Opt()] = None,
    no_dp: Annotated[bool | None, Opt("--no-dp", help="train without differential privacy")] = None,
    max_grad_norm: Annotated[float | None, Opt(help="per-sample clipping norm")] = None,
    class_weights: Annotated[
        str | None,
        Opt(help="public per-class loss weights in (0, 1], e.g. 0.05,1 (epsilon unchanged)"),
    ] = None,
    accountant: Annotated[str | None, Opt(help="rdp or prv")] = None,
    partition: Annotated[str | None, Opt(help="iid, dirichlet or shards")] = None,
    alpha: Annotated[float | None, Opt(help="Dirichlet concentration (smaller: more skew)")] = None,
    seed: Annotated[int | None, Opt()] = None,
    engine: Annotated[
        str | None,
        Opt(help="inprocess (fast), ray (inprocess sharded over Ray workers) or flower"),
    ] = None,
    workers: Annotated[
        int | None, Opt(help="--engine ray: workers a round's cohort is sharded over")
    ] = None,
    ray_address: Annotated[
        str | None, Opt(help="--engine ray: a Ray cluster to join (auto, ray://head:10001)")
    ] = None,
    threads: Annotated[int | None, Opt(help="torch threads for the in-process engine")] = None,
    device: Annotated[
        str | None, Opt(help="in-process engine: cpu, cuda or auto (cuda if available)")
    ] = None,
    vectorize: Annotated[
        str | None,
        Opt(help="in-process DP: train a round's clients together: auto (where it can), on, off"),
    ] = None,
    client_cpus: Annotated[
        float | None, Opt(help="--engine flower: CPUs per virtual client (Ray; 0.5 = two per CPU)")
    ] = None,
    client_gpus: Annotated[
        float | None,
        Opt(help="--engine flower: GPUs per virtual client (Ray; 0.25 = four per GPU)"),
    ] = None,
    secagg: Annotated[
        bool | None, Opt("--secagg/--no-secagg", help="SecAgg+ secure aggregation (in-process)")
    ] = None,
    secagg_clip_range: Annotated[
        float | None, Opt(help="secure aggregation: updates clipped to [-c, c] per coordinate")
    ] = None,
    secagg_bits: Annotated[int | None, Opt(help="secure aggregation: quantisation bits")] = None,
    secagg_protocol: Annotated[
        str | None,
        Opt(help="secure aggregation: sum (exact sum, masks not expanded) or full (every stage)"),
    ] = None,
    client_dp: Annotated[
        bool | None, Opt("--client-dp", help="client-level DP, noise added in shares (--secagg)")
    ] = None,
    client_clip: Annotated[float | None, Opt(help="client-level DP: L2 clip per update")] = None,
    client_noise: Annotated[
        float | None, Opt(help="client-level DP: noise multiplier of the sum")
    ] = None,
    out: Annotated[Path | None, Opt("--out", help="results folder")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="replace an earlier run in --out")] = False,
    verbose: Annotated[
        bool, Opt("--verbose", help="also show Flower's own output (colours, tracebacks)")
    ] = False,
) -> None:
    """Simulate a federation of virtual clients on this machine."""
    _quiet(verbose)
    from fedguard.config import load_simulation_config

    overrides = {
        "dataset": dataset,
        "target": target,
        "schema": schema,
        "model": model,
        "hidden": hidden,
        "task": task,
        "fix-model": fix_model,
        "clients": clients,
        "clients-per-round": clients_per_round,
        "rounds": rounds,
        "local-epochs": local_epochs,
        "batch-size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "strategy": strategy,
        "server-lr": server_lr,
        "server-momentum": server_momentum,
        "prox-mu": prox_mu,
        "epsilon": epsilon,
        "delta": delta,
        "no-dp": no_dp,
        "max-grad-norm": max_grad_norm,
        "class-weights": class_weights,
        "accountant": accountant,
        "partition": partition,
        "alpha": alpha,
        "seed": seed,
        "engine": engine,
        "workers": workers,
        "ray-address": ray_address,
        "threads": threads,
        "device": device,
        "vectorize": vectorize,
        "client-cpus": client_cpus,
        "client-gpus": client_gpus,
        "secagg": secagg,
        "secagg-clip-range": secagg_clip_range,
        "secagg-bits": secagg_bits,
        "secagg-protocol": secagg_protocol,
        "client-dp": client_dp,
        "client-clip": client_clip,
        "client-noise": client_noise,
        "out": out,
    }
    cfg = load_simulation_config(path=config, overrides=overrides)
    # Imported once the config is valid: it pulls in torch (seconds), and a config error
    # must be answered at once (#17.8).
    from fedguard.simulations.progress import run_with_progress

    run_with_progress(cfg, overwrite=overwrite)


@app.command()
def server(
    config: Annotated[Path, Opt("--config", help="federation.toml")],
    insecure: Annotated[
        bool, Opt("--insecure", help="no TLS, no node auth: local experiments only")
    ] = False,
    verbose: Annotated[
        bool, Opt("--verbose", help="also show Flower's own output (colours, tracebacks)")
    ] = False,
) -> None:
    """Run the aggregation server (Flower SuperLink + fedguard's ServerApp)."""
    _quiet(verbose)
    from fedguard.server.launcher import run_server

    run_server(config_path=config, insecure=insecure)


@app.command()
def client(
    config: Annotated[Path, Opt("--config", help="node.toml")],
    verbose: Annotated[
        bool, Opt("--verbose", help="also show Flower's own output (colours, tracebacks)")
    ] = False,
) -> None:
    """Run a node (Flower SuperNode + fedguard's ClientApp) under its own privacy policy."""
    _quiet(verbose)
    from fedguard.client.launcher import run_client

    run_client(config_path=config)


@app.command()
def demo(
    out: Annotated[Path, Opt("--out", help="folder for certificates, configs and results")] = Path(
        "runs/demo-deploy"
    ),
    nodes: Annotated[int, Opt(help="client processes")] = 3,
    rounds: Annotated[int, Opt()] = 12,
    verbose: Annotated[
        bool, Opt("--verbose", help="also show Flower's own output (colours, tracebacks)")
    ] = False,
) -> None:
    """A real local federation on loopback: CA, server, nodes with TLS + node auth + DP."""
    _quiet(verbose)  # inherited by the server and nodes it starts (FEDGUARD_VERBOSE)
    from fedguard.deploy.demo import run_demo

    run_demo(out=out, nodes=nodes, rounds=rounds)


def _quiet(verbose: bool) -> None:
    """fedguard's own lines only, unless ``--verbose`` (#17.8)."""
    from fedguard.console import set_verbose

    set_verbose(verbose)
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
        return
    import warnings

    # Opacus warns when the best RDP order is the largest one it tried. The epsilon it
    # then reports is still a valid upper bound, only looser than it could be (it happens
    # at small epsilon, with much noise): the guarantee holds, and nothing the user could
    # change would make the figure wrong. So it is silenced, not shown every round.
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``fedguard`` console script."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, standalone_mode=False)
    except FedguardError as exc:
        print(f"fedguard: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        # click's usage errors (unknown option, bad int) carry their own exit code.
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        log = _write_error_log(exc)
        print(
            f"fedguard: unexpected error: {type(exc).__name__}: {_one_line(exc)} (details: {log})",
            file=sys.stderr,
        )
        sys.exit(1)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _write_error_log(exc: BaseException) -> str:
    """The traceback, frames and messages only (never local variables or the environment),
    in a private temp file; its path (or why there is none)."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        fd, path = tempfile.mkstemp(prefix="fedguard-error-", suffix=".log")  # 0600
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as err:
        return f"no log written: {err.strerror}"
    return path
