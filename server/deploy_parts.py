"""The pieces of the deployed ServerApp that are plain functions of its config.

Server optimiser, client-level accounting, SecAgg+ parameters, server-side evaluation and
reading back ``metrics.jsonl`` on resume (:mod:`fedguard.server.deploy_app` runs them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedguard._io import read_jsonl
from fedguard.class_labels import declared_labels
from fedguard.deploy_config import FederationConfig
from fedguard.errors import DataError
from fedguard.fl.data import standardise_eval_rows
from fedguard.privacy.client_dp import ClientDP, ClientLevelAccounting
from fedguard.privacy.secagg import SecAggParams, SecAggSettings
from fedguard.task import Metrics, evaluate, load_dataset, set_weights
from fedguard.task.api import LoadRequest, load_task
from fedguard.task.lazy_records import LazyDataset, evaluate_records
from fedguard.task.task_checks import load_task_data

__all__ = [
    "BINARY_FIGURES",
    "client_level",
    "evaluator",
    "noise_shares",
    "protection",
    "read_metrics",
    "run_summary",
    "secagg_params",
    "secagg_settings",
]


def client_level(
    cfg: FederationConfig, *, num_clients: int, cohort_size: int
) -> ClientLevelAccounting:
    """The server's accounting of [client-dp] for ``cohort_size`` of ``num_clients`` nodes.

    ``run_rounds`` draws ``min(cohort_size, num_clients)`` nodes without replacement each
    round: that is the scheme accounted.
    """
    cd = cfg.client_dp
    return ClientLevelAccounting(
        noise_multiplier=cd.noise_multiplier,
        num_clients=num_clients,
        cohort_size=cohort_size,
        delta=cd.delta,
    )


def noise_shares(cfg: FederationConfig, *, cohort_size: int) -> dict[str, Any]:
    """How the nodes size their client-level noise shares, and what that guarantees."""
    cd = cfg.client_dp
    t = secagg_params(cfg, 1, max(2, cohort_size)).threshold
    mech = ClientDP(
        clip_norm=cd.clip_norm, noise_multiplier=cd.noise_multiplier, min_contributors=t
    )
    return {
        "min_contributors": t,
        "share_std": mech.share_std,  # noise_multiplier * clip_norm / sqrt(t - 1)
        "guarantee": (
            "any sum the server unmasks holds >= t shares; the server together with any one "
            "node (which knows its own share) still faces noise std >= noise_multiplier * "
            "clip_norm; c >= 2 colluding nodes leave noise_multiplier * sqrt((t - c) / (t - 1))"
        ),
        "noise_multiplier_seen_by_server_alone": mech.effective_noise_multiplier(contributors=t),
        "noise_multiplier_seen_with_one_colluding_node": mech.effective_noise_multiplier(
            contributors=t, colluders=1
        ),
    }


def protection(cfg: FederationConfig, server_round: int, cohort: int) -> str:
    """The console line saying how the updates are protected from this server."""
    if not cfg.secagg.enabled:
        return "secure aggregation: OFF ([secagg] enabled = false): the server sees each update"
    sa = secagg_params(cfg, server_round, cohort)
    return (
        f"secure aggregation: SecAgg+ (k={sa.degree} neighbours, t={sa.threshold} "
        f"shares, {sa.bits}-bit levels in [-{sa.clip_range:g}, {sa.clip_range:g}], "
        f"ring 2^{sa.ring_bits}); the server sees only the sum"
    )


def secagg_settings(cfg: FederationConfig) -> SecAggSettings:
    """The run's SecAgg+ settings from federation.toml's [secagg] (and [client-dp])."""
    sa = cfg.secagg
    return SecAggSettings(
        run=cfg.federation.name,
        clip_range=sa.clip_range,
        bits=sa.bits,
        dropout_tolerance=sa.dropout_tolerance,
        graph_seed=cfg.federation.seed,
        max_colluding=sa.max_colluding_nodes,
        equal_weights=cfg.client_dp.enabled,
    )


def secagg_params(cfg: FederationConfig, server_round: int, cohort: int) -> SecAggParams:
    """Round ``server_round``'s SecAgg+ parameters for ``cohort`` nodes."""
    # The weight cap is a public constant: nodes tell no count.
    return secagg_settings(cfg).for_round(
        server_round=server_round, cohort=cohort, weight_cap=cfg.federation.weight_cap
    )


def evaluator(
    cfg: FederationConfig, model: torch.nn.Module
) -> Callable[[list[np.ndarray]], Metrics]:
    """Server-side evaluation on the held-out set named in [task] (if any)."""
    t = cfg.task
    if t.eval_dataset is None:
        nan = float("nan")
        return lambda _w: Metrics(
            loss=nan,
            accuracy=nan,
            precision_macro=nan,
            recall_macro=nan,
            f1_macro=nan,
            roc_auc=None,
            examples=0,
        )
    # The server's own file is evaluated on every row, through the nodes' schema; a
    # built-in (the demo) on its holdout, which the demo's nodes never train on (#13.1).
    own_file = Path(t.eval_dataset).suffix.lower() in (".csv", ".parquet", ".npz")
    if t.task is not None:  # a user task reads the server's evaluation data, every record
        task = load_task(t.task, key=f"{cfg.source}: task.task")
        request = LoadRequest(source=t.eval_dataset, seed=cfg.federation.seed, split="all-test")
        loaded = load_task_data(task, request)
    else:
        loaded = load_dataset(
            name=t.eval_dataset,
            seed=cfg.federation.seed,
            target=t.eval_target,
            schema=t.schema,
            split="all-test" if own_file else "holdout",
        )
    ds = standardise_eval_rows(loaded)  # dp columns: by the server's own rows
    if isinstance(ds, LazyDataset):  # a lazy task's rows: read in batches at each evaluation
        lazy = ds

        def evaluate_lazy(w: list[np.ndarray]) -> Metrics:
            set_weights(model, w)
            return evaluate_records(
                model=model, data=lazy.test, y=lazy.y_test, num_classes=t.num_classes
            )

        return evaluate_lazy
    x, y = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)

    def evaluate_global(w: list[np.ndarray]) -> Metrics:
        set_weights(model, w)
        return evaluate(model=model, x=x, y=y, num_classes=t.num_classes)

    return evaluate_global


def read_metrics(path: Path, *, upto: int) -> list[dict[str, Any]]:
    rows = read_jsonl(path)  # a torn last line (a crash mid-write) is dropped and logged
    bad = [r for r in rows if not isinstance(r.get("round"), int)]
    if bad:
        raise DataError(f"{path}: a line without an integer 'round': {str(bad[0])[:80]}")
    return [r for r in rows if r["round"] <= upto]


BINARY_FIGURES = ("roc_auc", "pr_auc", "f1_pos", "precision_pos", "recall_pos", "threshold")


def run_summary(
    cfg: FederationConfig,
    *,
    run_id: str,
    last: dict[str, Any],
    nodes: list[str],
    seconds: float,
    client_level: ClientLevelAccounting,
    cohort_size: int,
) -> dict[str, Any]:
    """``summary.json`` of a completed run (``last``: its last metrics row)."""
    return {
        "federation": cfg.federation.name,
        "run": run_id,
        "rounds": cfg.federation.rounds,
        "final_accuracy": last["accuracy"],  # null without a held-out set
        # Binary tasks: the figures a rare positive class needs, and the class-1
        # probability to call a row positive, chosen on the server's evaluation rows
        # (fedguard.task.metrics.Metrics); null otherwise.
        **{f"final_{k}": last.get(k) for k in BINARY_FIGURES},
        "epsilon_by_node": last["epsilon_by_node"],  # from the nodes' receipts
        "receipts": last.get("receipts", {}),
        "nodes": nodes,  # enrolled names
        # classes[i]: the label the model calls class i (#17.4), as the console printed it
        "classes": list(declared_labels(cfg.task.schema, cfg.task.num_classes)),
        "wall_seconds_this_run": seconds,
        "config_digest": cfg.digest(),
        # How the updates were protected from this server (None: it saw each one).
        "client_level_dp": (
            {
                **dataclasses.asdict(cfg.client_dp),
                # The figure and what it assumes: accountant, neighbours, sampling.
                **client_level.after(int(last["round"])).as_dict(),
                "noise_shares": noise_shares(cfg, cohort_size=cohort_size),
            }
            if cfg.client_dp.enabled
            else None
        ),
        # Record counts: none in the clear under secure aggregation; in plain rounds
        # only from nodes whose privacy.reveal-count is true (the others weigh 1).
        "weight_cap": cfg.federation.weight_cap,
        "secure_aggregation": (
            {"protocol": "SecAgg+", **dataclasses.asdict(cfg.secagg)}
            if cfg.secagg.enabled
            else None
        ),
    }
