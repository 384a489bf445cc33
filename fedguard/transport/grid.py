"""Sending to nodes and vetting what comes back: one set of rules for every exchange.

Every server-side exchange with nodes (a plain round's train replies, a secure round's
train replies and its later stages, the nodes' descriptions; in a deployment and in a
Flower-engine simulation alike) sends through :func:`exchange` and keeps only what
:func:`vet_replies` lets through:

- a reply from a node that was not asked, one that does not answer the message its
  sender was sent, or a second reply from the same node is dropped (and logged);
- an error reply becomes a :class:`Failed` with the node's reason, made printable;
- an error reply the SuperLink sends for a node it holds offline counts for that node;
- every node asked that is in neither list is ``missing`` (no reply within the timeout).

The callers decode the :class:`Answered` contents with the codec (``fedguard.transport.messages``)
and turn a decoding error into a refusal. Nothing here trusts what a node says about
itself: replies are matched by the Flower node id the SuperLink saw, never by a name or
id the node sent. It never imports ``fedguard.client``, ``fedguard.server`` nor
``fedguard.simulations``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedguard.console import printable
from fedguard.errors import FedguardError
from fedguard.fl.loop import ClientUpdate, Refusal
from fedguard.fl.participants import Cohort, Participant
from fedguard.transport.messages import decode_description, decode_reply_content
from fedguard.transport.poll import send_and_receive  # polls every 0.05 s, not 3 s
from fedguard.transport.receipts import read_receipt

__all__ = [
    "Answered",
    "Describer",
    "Exchanged",
    "Failed",
    "SUPERLINK_NODE_ID",
    "NodeWaitError",
    "describe_nodes",
    "exchange",
    "exchange_round",
    "names_in",
    "superlink_error",
    "vet_replies",
    "wait_for_nodes",
]

_log = logging.getLogger(__name__)

NODE_WAIT_S = 120.0
# The node id Flower gives the SuperLink in the replies it writes itself (flwr.common.constant,
# not public API; tests/transport/test_grid.py pins it to the installed Flower's).
SUPERLINK_NODE_ID = 1


class NodeWaitError(FedguardError):
    """Fewer nodes connected than a run needs, within the time it waits for them."""


@dataclass(frozen=True)
class Answered:
    """A reply fit to decode: from a node asked, to its own message, its first, no error."""

    node_id: int
    content: RecordDict


@dataclass(frozen=True)
class Failed:
    """A node asked that answered with an error (its own, or the SuperLink's for it)."""

    node_id: int
    reason: str  # printable: safe on one console line


@dataclass(frozen=True)
class Exchanged:
    """What one exchange brought back."""

    replies: tuple[Answered | Failed, ...]  # in arrival order, at most one per node
    missing: tuple[int, ...]  # node ids asked that sent nothing in time, sorted
    waited: float  # seconds


def _node_label(node_id: int) -> str:
    return f"node {node_id}"


def vet_replies(
    messages: Sequence[Message],
    replies: Iterable[Message],
    *,
    what: str,
    name_of: Callable[[int], str] = _node_label,
) -> tuple[Answered | Failed, ...]:
    """The replies to ``messages`` that count, at most one per node (module docstring).

    ``messages`` must have been pushed (each has its message id). ``what`` starts each
    log line (e.g. ``"round 3"``); ``name_of(node_id)`` names a node asked in it.
    """
    asked = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    seen: set[int] = set()
    out: list[Answered | Failed] = []
    for reply in replies:
        node = reply.metadata.src_node_id
        offline = superlink_error(reply, asked)
        if offline is not None:  # the SuperLink answered for a node it holds offline
            gone = asked[reply.metadata.reply_to_message_id]
            if gone not in seen:
                seen.add(gone)
                out.append(Failed(node_id=gone, reason=offline))
            continue
        if node in seen or asked.get(reply.metadata.reply_to_message_id) != node:
            who = name_of(node) if node in asked.values() else _node_label(node)
            _log.warning(
                "%s: dropped a reply from %s (not asked, a repeat, or not answering its own "
                "message)",
                what,
                printable(who),
            )
            continue
        seen.add(node)
        if reply.has_error():
            out.append(Failed(node_id=node, reason=printable(reply.error.reason)))
        else:
            out.append(Answered(node_id=node, content=reply.content))
    return tuple(out)


def exchange(
    grid: Grid,
    messages: Sequence[Message],
    *,
    timeout: float,
    what: str,
    name_of: Callable[[int], str] = _node_label,
) -> Exchanged:
    """Send ``messages``, wait up to ``timeout`` s, and vet the replies."""
    started = time.monotonic()
    replies = send_and_receive(grid, messages, timeout=timeout)
    waited = time.monotonic() - started
    vetted = vet_replies(messages, replies, what=what, name_of=name_of)
    answered = {r.node_id for r in vetted}
    missing = sorted({m.metadata.dst_node_id for m in messages} - answered)
    return Exchanged(replies=vetted, missing=tuple(missing), waited=waited)


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


def wait_for_nodes(grid: Grid, count: int, *, wait_s: float = NODE_WAIT_S) -> list[int]:
    """The connected nodes' ids, sorted, once at least ``count`` are connected.

    Raises
    ------
    NodeWaitError
        Fewer than ``count`` connected within ``wait_s`` seconds.
    """
    deadline = time.monotonic() + wait_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise NodeWaitError(
                f"nodes: expected at least {count} connected within {wait_s:.0f}s, got {len(nodes)}"
            )
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
    result is keyed by the node id the SuperLink saw, never by what a node calls itself;
    the values are the node's own claims: print them only through ``printable``. A node
    whose reply is an error or not a description is left out (and logged).
    """
    return Describer(grid, task=task).ask(nodes, timeout=timeout)


class Describer:
    """:func:`describe_nodes` asked again and again, where a reply to an earlier ask counts.

    After a server restart a node may still be busy with the killed run's last message
    and answer each ask after its wait: counting only the latest ask's replies, a node
    that answered all three asks in 120 s was never counted (seen in CI).
    """

    def __init__(self, grid: Grid, *, task: dict[str, int] | None = None) -> None:
        self.grid = grid
        self.content = RecordDict({"task": ConfigRecord(dict(task))}) if task else RecordDict()
        self.asked: list[Message] = []
        self.pending: set[str] = set()
        self.described: set[int] = set()

    def ask(
        self, nodes: list[int], *, timeout: float, poll_interval: float = 0.05
    ) -> dict[int, dict[str, Any]]:
        """Ask ``nodes``; wait up to ``timeout`` s for each to reply. Returns every
        description that came in meanwhile, to this ask or an earlier one, each node's
        first only (an error or a bad description leaves the node to be asked again)."""
        if not timeout >= 0:
            raise ValueError(f"timeout: expected a number of seconds >= 0, got {timeout!r}")
        msgs = [Message(self.content, dst_node_id=n, message_type="query.describe") for n in nodes]
        ids = set(self.grid.push_messages(msgs))
        self.pending.update(ids)
        self.asked.extend(msgs)
        deadline = time.monotonic() + timeout
        info: dict[int, dict[str, Any]] = {}
        heard: set[int] = set()  # nodes that answered this ask's own message
        while True:
            got = list(self.grid.pull_messages(self.pending)) if self.pending else []
            self.pending.difference_update(m.metadata.reply_to_message_id for m in got)
            for message in got:  # one by one: a node may answer two asks in one pull
                for reply in vet_replies(self.asked, [message], what="describe"):
                    if message.metadata.reply_to_message_id in ids:
                        heard.add(reply.node_id)
                    if reply.node_id not in self.described:
                        info.update(self._described(reply))
            remaining = deadline - time.monotonic()
            done = all(n in heard or n in self.described for n in nodes)
            if done or not self.pending or remaining <= 0:
                return info
            time.sleep(min(poll_interval, remaining))

    def _described(self, reply: Answered | Failed) -> dict[int, dict[str, Any]]:
        """{node: its description}, or nothing (logged) for an error or a bad one."""
        if isinstance(reply, Failed):
            _log.warning("node %s did not describe itself: %s", reply.node_id, reply.reason)
            return {}
        try:
            description = decode_description(reply.content)
        except ValueError as exc:
            _log.warning("node %s described itself badly: %s", reply.node_id, printable(exc))
            return {}
        self.described.add(reply.node_id)
        return {reply.node_id: description}


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
    done = exchange(
        grid, msgs, timeout=timeout, what=f"round {server_round}", name_of=names_in(cohort)
    )
    check = _ReplyCheck(server_round, receipt_run, expect, max_update_norm, weight_cap)
    out: list[ClientUpdate | Refusal] = []
    withheld: list[int] = []
    # Sorted by client id: the running sum is then added in the same order on every engine.
    for reply in sorted(done.replies, key=lambda r: cohort.client_id_of(r.node_id)):
        member = cohort.by_node(reply.node_id)
        if member is None:  # vet_replies keeps only nodes asked
            continue
        if isinstance(reply, Failed):
            out.append(Refusal(client_id=member.client_id, reason=f"{member.name}: {reply.reason}"))
            continue
        update = check.update(member, reply.content)
        out.append(update)
        if isinstance(update, ClientUpdate) and update.num_examples == 0:
            withheld.append(member.client_id)
    if withheld:
        _log.info(
            "round %d: equal weights (%s kept their record count)",
            server_round,
            ", ".join(cohort.member(c).name for c in withheld),
        )
        out = [
            dataclasses.replace(u, num_examples=1) if isinstance(u, ClientUpdate) else u
            for u in out
        ]
    yield from out
    for node in sorted(done.missing, key=cohort.client_id_of):
        member = cohort.by_node(node)
        if member is not None:
            reason = f"{member.name}: no reply within {done.waited:.0f}s"
            yield Refusal(client_id=member.client_id, reason=reason)


@dataclass(frozen=True)
class _ReplyCheck:
    """How one plain round decodes a reply fit to decode (see :func:`exchange_round`)."""

    server_round: int
    receipt_run: str | None
    expect: list[np.ndarray] | None
    max_update_norm: float | None
    weight_cap: int | None

    def update(self, member: Participant, content: RecordDict) -> ClientUpdate | Refusal:
        """The member's update (``num_examples`` 0: it kept its count), or why not."""
        try:
            decoded = decode_reply_content(
                content, expect=self.expect, max_update_norm=self.max_update_norm
            )
            receipt = (
                None
                if self.receipt_run is None
                else read_receipt(
                    content, run=self.receipt_run, server_round=self.server_round, required=True
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"{member.name}: malformed reply: {printable(exc)}"
            return Refusal(client_id=member.client_id, reason=reason)
        m = decoded.metrics
        examples = int(m.get("num-examples", 0))
        if self.weight_cap is not None and examples > self.weight_cap:
            _log.warning(
                "round %d: %s claims %d examples; counted as %d (the weight cap)",
                self.server_round,
                member.name,
                examples,
                self.weight_cap,
            )
            examples = self.weight_cap
        return ClientUpdate(
            client_id=member.client_id,
            weights=decoded.weights,
            num_examples=examples,
            train_loss=m.get("train-loss", float("nan")),
            epsilon=m.get("epsilon") if receipt is None else receipt.epsilon,
            receipt=receipt,
        )


def names_in(cohort: Cohort) -> Callable[[int], str]:
    """``name_of`` for an exchange with ``cohort``: a node's participant name."""

    def name_of(node_id: int) -> str:
        member = cohort.by_node(node_id)
        return _node_label(node_id) if member is None else member.name

    return name_of
