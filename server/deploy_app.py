"""The ServerApp of a real deployment (`fedguard server`): FedAvg(M) over enrolled nodes.

It reads the operator's ``federation.toml`` (path given as the run config key
``config-path``), waits for ``min-nodes`` nodes, and runs the shared round loop
(:func:`fedguard.federation.run_rounds`). After every round it checkpoints the global
model (safetensors, with round and config digest) and rewrites ``metrics.jsonl``; a
restarted server resumes after the last checkpointed round, so no round runs twice.
At the start of every round it looks at ``server.keys-dir``: a node whose key was deleted
there is unregistered from the SuperLink and sent nothing more
(:mod:`fedguard.server.enrolment`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedguard._io import atomic_write_json, atomic_write_text, read_jsonl
from fedguard._procs import flower_env
from fedguard.deploy_config import CONFIG_KEY, FederationConfig, load_federation_config
from fedguard.errors import DataError
from fedguard.federation import (
    ClientUpdate,
    Refusal,
    RoundRecord,
    SecureMean,
    TrainRequest,
    run_rounds,
)
from fedguard.flower_compat import check_flower_version, patch_object_pull_backoff
from fedguard.messages import encode_train
from fedguard.optimizers import FedAdam, FedAvgM, ServerOptimizer
from fedguard.privacy.client_dp import ClientDP, ClientLevelSpent, client_level_spent
from fedguard.privacy.receipts import PrivacyReceipt
from fedguard.privacy.secagg import SecAggParams, make_params
from fedguard.server.app import describe_nodes, exchange_round, wait_for_nodes
from fedguard.server.checkpoint import CHECKPOINT, resume, save_round
from fedguard.server.enrolment import Enrolment, Revocation
from fedguard.server.secure_round import secure_round
from fedguard.task import Metrics, build_model, evaluate, get_weights, load_dataset, set_weights

__all__ = ["CHECKPOINT", "CONFIG_KEY", "app", "make_server_optimizer"]

NODE_GRACE_S = 20.0

_log = logging.getLogger(__name__)

app = ServerApp()


def _say(text: str) -> None:
    # `flwr run --stream` relays the ServerApp's stdout to the operator's terminal.
    print(text, flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    check_flower_version()
    # A message seen before its payload costs a 1 s back-off per retry in stock Flower.
    patch_object_pull_backoff()
    cfg = load_federation_config(Path(str(context.run_config[CONFIG_KEY])))
    torch.set_num_threads(1)
    cfg.out.mkdir(parents=True, exist_ok=True)
    cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    t = cfg.task
    model = build_model(
        name=t.model,
        input_shape=tuple(t.input_shape),
        num_classes=t.num_classes,
        generator=torch.Generator().manual_seed(cfg.federation.seed),
    )
    server = make_server_optimizer(cfg)
    point = resume(
        cfg.state_dir / CHECKPOINT,
        config_digest=cfg.digest(),
        weights=get_weights(model),
        server=server,
    )
    weights, first_round = point.weights, point.first_round
    records: list[dict[str, Any]] = []
    if point.checkpoint is not None:
        done = point.checkpoint.server_round
        records = _read_metrics(cfg.out / "metrics.jsonl", upto=done)
        _say(f"resuming after round {done} from {cfg.state_dir / CHECKPOINT}")
    if first_round > cfg.federation.rounds:
        _say("all rounds already done")
        return

    revoked = _revocations(cfg)
    revoked_now = revoked()  # keys deleted while the server was down
    info = {n: v for n, v in _gather_nodes(grid, cfg).items() if n not in revoked_now}
    names = sorted(str(v["name"]) for v in info.values())
    node_of = {names.index(str(v["name"])): node for node, v in info.items()}
    _say(f"{len(names)} nodes: {', '.join(names)}")
    if cfg.secagg.enabled:
        sa = _secagg_params(cfg, first_round, sorted(node_of))
        _say(
            f"secure aggregation: SecAgg+ (k={sa.degree} neighbours, t={sa.threshold} shares, "
            f"{sa.bits}-bit levels in [-{sa.clip_range:g}, {sa.clip_range:g}], "
            f"ring 2^{sa.ring_bits}); the server sees only the sum"
        )
    else:
        _say("secure aggregation: OFF ([secagg] enabled = false): the server sees each update")
    epsilon_of: dict[str, float] = dict(records[-1].get("epsilon_by_node", {})) if records else {}
    # Each node's newest privacy receipt (its ledger entry's public fields).
    receipts: dict[str, dict[str, Any]] = dict(records[-1].get("receipts", {})) if records else {}
    evaluate_global = _evaluator(cfg, model)

    def train_cohort(
        server_round: int, cohort: list[int], global_weights: list[np.ndarray]
    ) -> Iterator[ClientUpdate | Refusal | SecureMean]:
        tr = cfg.training
        gone = revoked()
        for c in (c for c in cohort if node_of[c] in gone):
            r = gone[node_of[c]]
            yield Refusal(
                client_id=c,
                reason=f"{names[c]}: enrolment revoked on {r.at} ({r.reason}); not sent "
                f"round {server_round}",
            )
        cohort = [c for c in cohort if node_of[c] not in gone]
        if not cohort:
            return
        params = _secagg_params(cfg, server_round, cohort) if cfg.secagg.enabled else None
        cd = cfg.client_dp
        request = TrainRequest(
            server_round=server_round,
            local_epochs=tr.local_epochs,
            batch_size=tr.batch_size,
            lr=tr.lr,
            momentum=tr.momentum,
            max_grad_norm=tr.max_grad_norm,
            total_rounds=cfg.federation.rounds,
            federation=cfg.federation.name,
            model=t.model,
            prox_mu=cfg.federation.prox_mu if cfg.federation.strategy == "fedprox" else 0.0,
            # Same id after a restart from the checkpoint: nodes keep the run's noise plan.
            run_id=f"{cfg.federation.name}/{cfg.digest()}",
            # Client-level DP: every node adds noise for a sum of at least t updates.
            client_clip=cd.clip_norm if cd.enabled else 0.0,
            client_noise=cd.noise_multiplier if cd.enabled else 0.0,
            client_min_contributors=params.threshold if cd.enabled and params else 0,
        )
        if params is not None:
            replies: Iterable[ClientUpdate | Refusal | SecureMean] = secure_round(
                grid=grid,
                params=params,
                cohort=cohort,
                node_of=node_of,
                train_content=lambda setup: encode_train(
                    weights=global_weights,
                    request=request,
                    simulation=None,
                    state_dir=None,
                    secagg=setup,
                ),
                shapes=[w.shape for w in global_weights],
                timeout=cfg.federation.round_timeout,
                label=lambda c: names[c],
                say=_say,
                receipt_run=request.run_key,
            )
        else:
            replies = _plain_round(server_round, cohort, global_weights, request)
        for reply in replies:
            if isinstance(reply, ClientUpdate) and reply.epsilon is not None:
                epsilon_of[names[reply.client_id]] = reply.epsilon
            if isinstance(reply, ClientUpdate) and isinstance(reply.receipt, PrivacyReceipt):
                receipts[names[reply.client_id]] = dataclasses.asdict(reply.receipt)
            yield reply

    def _plain_round(
        server_round: int,
        cohort: list[int],
        global_weights: list[np.ndarray],
        request: TrainRequest,
    ) -> Iterator[ClientUpdate | Refusal]:
        content = encode_train(
            weights=global_weights, request=request, simulation=None, state_dir=None
        )
        yield from exchange_round(
            grid=grid,
            server_round=server_round,
            cohort=cohort,
            node_of=node_of,
            content=content,
            timeout=cfg.federation.round_timeout,
            label=lambda c: names[c],
            receipt_run=request.run_key,
            expect=global_weights,
            max_update_norm=cfg.federation.max_update_norm,
            # As under secure aggregation: a public constant, never learnt from the nodes.
            weight_cap=cfg.federation.weight_cap,
        )

    def on_round(record: RoundRecord, new_weights: list[np.ndarray]) -> None:
        # No held-out set: metrics are NaN, written as null (JSON has no NaN).
        row: dict[str, Any] = {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in record.as_dict().items()
        }
        row["epsilon_by_node"] = dict(sorted(epsilon_of.items()))
        row["receipts"] = dict(sorted(receipts.items()))
        records.append(row)
        # Checkpoint first: a crash after it replays nothing; before it, the round reruns.
        save_round(
            cfg.state_dir / CHECKPOINT,
            server_round=record.round,
            config_digest=cfg.digest(),
            weights=new_weights,
            server=server,
        )
        atomic_write_text(
            cfg.out / "metrics.jsonl",
            "".join(json.dumps(r, allow_nan=False) + "\n" for r in records),
        )
        eps = ", ".join(f"{k} {v:.3f}" for k, v in sorted(epsilon_of.items()))
        quality = (
            ""
            if math.isnan(record.accuracy)
            else f" accuracy {record.accuracy:.4f} loss {record.loss:.4f}"
        )
        client = (
            ""
            if record.client_epsilon is None
            else f"; client-level epsilon {client_level(record.round).describe()}"
        )
        _say(
            f"round {record.round}:{quality} nodes {record.clients} refused {record.refused} "
            f"{record.seconds:.2f}s; epsilon: {eps}{client}"
        )

    started = time.perf_counter()
    cohort_size = max(cfg.federation.min_nodes, math.ceil(cfg.federation.fraction * len(names)))
    client_level = _client_level(cfg, num_clients=len(names), cohort_size=cohort_size)
    run_rounds(
        first_round=first_round,
        last_round=cfg.federation.rounds,
        seed=cfg.federation.seed,
        num_clients=len(names),
        cohort_size=min(cohort_size, len(names)),
        weights=weights,
        server=server,
        train_cohort=train_cohort,
        evaluate=evaluate_global,
        on_round=on_round,
        client_epsilon=(lambda r: client_level(r).epsilon) if cfg.client_dp.enabled else None,
    )
    last = records[-1]
    atomic_write_json(
        cfg.out / "summary.json",
        {
            "federation": cfg.federation.name,
            "rounds": cfg.federation.rounds,
            "final_accuracy": last["accuracy"],  # null without a held-out set
            "epsilon_by_node": last["epsilon_by_node"],  # from the nodes' receipts
            "receipts": last.get("receipts", {}),
            "nodes": names,
            "wall_seconds_this_run": time.perf_counter() - started,
            "config_digest": cfg.digest(),
            # How the updates were protected from this server (None: it saw each one).
            "client_level_dp": (
                {
                    **dataclasses.asdict(cfg.client_dp),
                    # The figure and what it assumes: accountant, neighbours, sampling.
                    **client_level(int(last["round"])).as_dict(),
                    "noise_shares": _noise_shares(cfg, cohort_size=min(cohort_size, len(names))),
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
        },
    )
    _say(f"done: accuracy {last['accuracy']}; results in {cfg.out}")


def make_server_optimizer(cfg: FederationConfig) -> ServerOptimizer:
    """The server optimiser for ``[federation] strategy``.

    fedadam: FedAdam with step size ``server-lr``; fedavgm: FedAvgM with
    ``server-momentum``; fedavg and fedprox: FedAvgM without momentum (FedProx changes
    the nodes' objective, not the aggregation).
    """
    f = cfg.federation
    if f.strategy == "fedadam":
        return FedAdam(server_lr=f.server_lr)
    momentum = f.server_momentum if f.strategy == "fedavgm" else 0.0
    return FedAvgM(server_lr=f.server_lr, server_momentum=momentum)


def _revocations(cfg: FederationConfig) -> Callable[[], dict[int, Revocation]]:
    """Look at keys-dir (each call): unregister nodes whose key left it; all revoked ids.

    Without node authentication (insecure, or no keys-dir) nobody is enrolled, so nobody
    can be revoked.
    """
    keys_dir = cfg.server.keys_dir
    if cfg.server.insecure or keys_dir is None:
        return dict
    enrolment = Enrolment(
        keys_dir=keys_dir, state_dir=cfg.state_dir, env=flower_env(cfg.state_dir / "flwr")
    )

    def check() -> dict[int, Revocation]:
        found = enrolment.revoke_removed()
        for r in found.new:
            _say(
                f"revoked {r.name}: {r.reason}; node {r.node_id} unregistered from the "
                "SuperLink: it is sent nothing more and its calls are refused"
            )
        for r, error in found.failed:
            _say(
                f"revoking {r.name} ({r.reason}): unregistering node {r.node_id} failed "
                f"({error}); it is sent nothing, and unregistering is tried again next round"
            )
        return found.revoked

    return check


def _client_level(
    cfg: FederationConfig, *, num_clients: int, cohort_size: int
) -> Callable[[int], ClientLevelSpent]:
    """Client-level epsilon after a round (the server's accounting of [client-dp]).

    ``run_rounds`` draws ``min(cohort_size, num_clients)`` nodes without replacement each
    round: that is the scheme accounted.
    """
    cd = cfg.client_dp
    return lambda r: client_level_spent(
        noise_multiplier=cd.noise_multiplier,
        num_clients=num_clients,
        cohort_size=min(cohort_size, num_clients),
        rounds=r,
        delta=cd.delta,
    )


def _noise_shares(cfg: FederationConfig, *, cohort_size: int) -> dict[str, Any]:
    """How the nodes size their client-level noise shares, and what that guarantees."""
    cd = cfg.client_dp
    t = _secagg_params(cfg, 1, list(range(max(2, cohort_size)))).threshold
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


def _secagg_params(cfg: FederationConfig, server_round: int, cohort: list[int]) -> SecAggParams:
    sa = cfg.secagg
    return make_params(
        run=cfg.federation.name,
        server_round=server_round,
        cohort=len(cohort),
        clip_range=sa.clip_range,
        bits=sa.bits,
        # A public constant (nodes tell no count); client-level DP: equal weights.
        weight_cap=1 if cfg.client_dp.enabled else cfg.federation.weight_cap,
        dropout_tolerance=sa.dropout_tolerance,
        graph_seed=cfg.federation.seed,
    )


def _gather_nodes(grid: Grid, cfg: FederationConfig) -> dict[int, dict[str, str | int]]:
    """Describe the connected nodes until every known one answered, or ``min-nodes`` did
    and a grace period passed (after a server restart nodes reconnect one by one)."""
    deadline = time.monotonic() + cfg.federation.round_timeout
    grace_end: float | None = None
    info: dict[int, dict[str, str | int]] = {}
    asked = 0
    while True:
        nodes = wait_for_nodes(
            grid, cfg.federation.min_nodes, wait_s=max(1.0, deadline - time.monotonic())
        )
        missing = [n for n in nodes if n not in info]
        if missing:
            # A reply to an earlier ask is not counted: a node that answers each ask a bit
            # later than the wait (busy with a killed run's last message, seen after a
            # server restart) is given longer each time.
            asked += 1
            wait = min(NODE_GRACE_S * asked, max(1.0, deadline - time.monotonic()))
            info.update(describe_nodes(grid, missing, timeout=wait))
        if len(info) >= cfg.federation.min_nodes:
            grace_end = grace_end or time.monotonic() + NODE_GRACE_S
        if not [n for n in nodes if n not in info] or (grace_end and time.monotonic() > grace_end):
            return info
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(info)} of {cfg.federation.min_nodes} nodes answered "
                f"within {cfg.federation.round_timeout:.0f}s"
            )
        time.sleep(0.5)


def _evaluator(
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
    ds = load_dataset(
        name=t.eval_dataset,
        seed=cfg.federation.seed,
        target=t.eval_target,
        schema=t.schema,
        split="all-test" if own_file else "holdout",
    )
    x, y = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)

    def evaluate_global(w: list[np.ndarray]) -> Metrics:
        set_weights(model, w)
        return evaluate(model=model, x=x, y=y, num_classes=t.num_classes)

    return evaluate_global


def _read_metrics(path: Path, *, upto: int) -> list[dict[str, Any]]:
    rows = read_jsonl(path)  # a torn last line (a crash mid-write) is dropped and logged
    bad = [r for r in rows if not isinstance(r.get("round"), int)]
    if bad:
        raise DataError(f"{path}: a line without an integer 'round': {str(bad[0])[:80]}")
    return [r for r in rows if r["round"] <= upto]
