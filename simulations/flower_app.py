"""fedguard's Flower ServerApp (Message API): FedAvg(M) over the shared round loop.

The round itself (cohort sampling, running weighted sum, server update, evaluation) is
:func:`fedguard.fl.loop.run_rounds`, the same function the in-process engine runs; this
module only turns a cohort into messages and replies into updates.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedguard.config import SimulationConfig
from fedguard.deploy.flower import send_and_receive  # polls every 0.05 s, not 3 s
from fedguard.deploy.flower.constants import SUPERLINK_NODE_ID
from fedguard.deploy_config import MAX_UPDATE_NORM
from fedguard.fl.loop import (
    ClientUpdate,
    Refusal,
    RoundRecord,
    federated_data,
    initial_model,
    request_for,
    run_rounds,
)
from fedguard.fl.participants import Cohort, Participant, Participants
from fedguard.messages import decode_reply, encode_train
from fedguard.optimizers import FedAvgM
from fedguard.server.receipts import read_receipt
from fedguard.server.run_files import printable
from fedguard.task import Metrics, evaluate, get_weights, set_weights

__all__ = [
    "describe_nodes",
    "exchange_round",
    "make_simulation_server_app",
    "superlink_error",
    "wait_for_nodes",
]

_log = logging.getLogger(__name__)

# How long the server waits for a round's replies before counting the missing as dropped.
ROUND_TIMEOUT_S = 600.0
NODE_WAIT_S = 120.0


def wait_for_nodes(grid: Grid, count: int, *, wait_s: float = NODE_WAIT_S) -> list[int]:
    deadline = time.monotonic() + wait_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {count} nodes connected within {wait_s:.0f}s")
        time.sleep(0.1)


def describe_nodes(
    grid: Grid,
    nodes: list[int],
    *,
    timeout: float = NODE_WAIT_S,
    task: dict[str, int] | None = None,
) -> dict[int, dict[str, Any]]:
    """Ask every node who it is: {node id: its description}, at least "name", "client-id".

    ``task`` (public constants of the task, e.g. its class count) travels with the query,
    so that a node can say whether its data fits without telling what its data holds. A
    deployed node tells no record count (a simulation's virtual client may send one; it is
    not kept either): weights come from the replies, capped by a public constant. The
    values are the node's own claims: print them only through ``printable``.
    """
    content = RecordDict({"task": ConfigRecord(dict(task))}) if task else RecordDict()
    msgs = [Message(content, dst_node_id=n, message_type="query.describe") for n in nodes]
    info: dict[int, dict[str, Any]] = {}
    for reply in send_and_receive(grid, msgs, timeout=timeout):
        node = reply.metadata.src_node_id
        if node not in nodes:
            continue  # the SuperLink's own error for an offline node, or not asked
        if reply.has_error():
            _log.warning("node %s did not describe itself: %s", node, printable(reply.error.reason))
            continue
        record = reply.content.config_records.get("node")
        cid = None if record is None else record.get("client-id")
        if record is None or not isinstance(cid, int) or "name" not in record:
            _log.warning("node %s described itself badly", node)
            continue
        described = {k: v for k, v in record.items() if k != "num-examples"}
        info[node] = {**described, "name": str(record["name"]), "client-id": cid}
    return info


def exchange_round(
    *,
    grid: Grid,
    server_round: int,
    cohort: Cohort,
    content: RecordDict,
    timeout: float,
    receipt_run: str | None = None,
    expect: list[np.ndarray] | None = None,
    max_update_norm: float | None = None,
    weight_cap: int | None = None,
) -> Iterator[ClientUpdate | Refusal]:
    """Send ``content`` to the cohort's nodes and turn their replies into updates.

    Each node is named in reasons and logs by its participant name.

    A reply from a node not asked, one answering another node's message, a second reply,
    an error reply or a malformed one is never aggregated, and the reason is logged with
    the node's name; a node that does not answer in time counts as dropped. Malformed
    means: records other than weights + metrics (+ receipt), arrays that are not numeric
    ``.npy``, NaN/Inf, and, with ``expect`` (the global weights sent), another number of
    arrays, another dtype or shape, or an update (reply - ``expect``) with an L2 norm above
    ``max_update_norm``. With ``receipt_run`` (a deployment) every reply must carry a
    privacy receipt for that run and this round: without one a stale or replayed reply
    could not be told from a fresh one. ``weight_cap`` caps a reply's ``num-examples``
    (as secure aggregation caps a node's weight). A reply without ``num-examples`` (the
    node keeps its record count) weighs 1, and then so does every update of the round:
    weighting the others by their counts would leave that node almost no weight.
    """
    msgs = [
        Message(
            content,
            dst_node_id=p.node_id,
            message_type=MessageType.TRAIN,
            group_id=str(server_round),
        )
        for p in cohort
    ]

    def label(client_id: int) -> str:
        return cohort.member(client_id).name

    started = time.monotonic()
    replies = list(send_and_receive(grid, msgs, timeout=timeout))
    waited = time.monotonic() - started
    # Pushing gave each message its id: a reply must answer the one its sender was sent.
    asked = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}
    answered: set[int] = set()
    out: list[ClientUpdate | Refusal] = []
    withheld: list[int] = []
    # Sorted by client id: the running sum is then added in the same order on every engine.
    for reply in sorted(replies, key=lambda r: cohort.client_id_of(r.metadata.src_node_id)):
        node = reply.metadata.src_node_id
        offline = superlink_error(reply, asked)
        if offline is not None:  # the SuperLink answered for a node it holds offline
            gone = cohort.client_id_of(asked[reply.metadata.reply_to_message_id])
            if gone not in answered:
                answered.add(gone)
                out.append(Refusal(client_id=gone, reason=f"{label(gone)}: {offline}"))
            continue
        cid = cohort.client_id_of(node)
        if cid < 0 or cid in answered or asked.get(reply.metadata.reply_to_message_id) != node:
            _log.warning(
                "round %d: dropped a reply from %s (%s)",
                server_round,
                f"node {node}" if cid < 0 else label(cid),
                "not asked, a repeat, or not answering its own message",
            )
            continue
        answered.add(cid)
        if reply.has_error():
            reason = printable(reply.error.reason)
            out.append(Refusal(client_id=cid, reason=f"{label(cid)}: {reason}"))
            continue
        try:
            decoded = decode_reply(reply, expect=expect, max_update_norm=max_update_norm)
            receipt = (
                None
                if receipt_run is None
                else read_receipt(
                    reply.content, run=receipt_run, server_round=server_round, required=True
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"{label(cid)}: malformed reply: {printable(exc)}"
            out.append(Refusal(client_id=cid, reason=reason))
            continue
        m = decoded.metrics
        if "num-examples" not in m:
            withheld.append(cid)
        examples = int(m.get("num-examples", 1))
        if weight_cap is not None and examples > weight_cap:
            _log.warning(
                "round %d: %s claims %d examples; counted as %d (the weight cap)",
                server_round,
                label(cid),
                examples,
                weight_cap,
            )
            examples = weight_cap
        out.append(
            ClientUpdate(
                client_id=cid,
                weights=decoded.weights,
                num_examples=examples,
                train_loss=m.get("train-loss", float("nan")),
                epsilon=m.get("epsilon") if receipt is None else receipt.epsilon,
                receipt=receipt,
            )
        )
    if withheld:
        _log.info(
            "round %d: equal weights (%s kept their record count)",
            server_round,
            ", ".join(label(c) for c in withheld),
        )
        out = [
            dataclasses.replace(u, num_examples=1) if isinstance(u, ClientUpdate) else u
            for u in out
        ]
    yield from out
    for cid in sorted(set(cohort.client_ids) - answered):
        yield Refusal(client_id=cid, reason=f"{label(cid)}: no reply within {waited:.0f}s")


def superlink_error(reply: Message, asked: dict[str, int]) -> str | None:
    """Why the SuperLink itself answered one of our messages (the node is offline, the
    message expired), or None when ``reply`` came from a node.

    Flower answers a message to a node it holds offline with its own error reply (source:
    the SuperLink). Taken for "no reply" such a round ended in a second and said it had
    waited the whole timeout.
    """
    if reply.metadata.src_node_id != SUPERLINK_NODE_ID or not reply.has_error():
        return None
    if reply.metadata.reply_to_message_id not in asked:
        return None
    return f"offline (the SuperLink: {printable(reply.error.reason, limit=120)})"


def make_simulation_server_app(
    *,
    config: SimulationConfig,
    state_dir: Path,
    on_round: Callable[[RoundRecord, list[np.ndarray]], None],
) -> ServerApp:
    """A ServerApp that runs ``config``'s federation over whatever grid Flower gives it."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.set_num_threads(config.threads)
        data = federated_data(config)
        ds = data.dataset
        model = initial_model(config, data)
        info = describe_nodes(grid, wait_for_nodes(grid, config.clients))
        # A virtual client's name is its client id.
        clients = Participants(
            Participant(name=str(cid), node_id=node, client_id=cid)
            for node, cid in ((node, int(v["client-id"])) for node, v in info.items())
        )
        x_test, y_test = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)

        def train_cohort(
            server_round: int, cohort: list[int], weights: list[np.ndarray]
        ) -> Iterator[ClientUpdate | Refusal]:
            content = encode_train(
                weights=weights,
                request=request_for(config, server_round),
                simulation=config,
                state_dir=str(state_dir),
            )
            return exchange_round(
                grid=grid,
                server_round=server_round,
                cohort=clients.cohort(cohort),
                content=content,
                timeout=ROUND_TIMEOUT_S,
                expect=weights,
                max_update_norm=MAX_UPDATE_NORM,
            )

        def evaluate_global(weights: list[np.ndarray]) -> Metrics:
            set_weights(model, weights)
            return evaluate(model=model, x=x_test, y=y_test, num_classes=ds.num_classes)

        run_rounds(
            first_round=1,
            last_round=config.rounds,
            seed=config.seed,
            num_clients=config.clients,
            cohort_size=config.cohort_size,
            weights=get_weights(model),
            server=FedAvgM(server_lr=config.server_lr, server_momentum=config.server_momentum),
            train_cohort=train_cohort,
            evaluate=evaluate_global,
            on_round=on_round,
            dp=not config.no_dp,
        )

    return app
