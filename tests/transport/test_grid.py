"""Node discovery and reply vetting (fedguard.transport.grid) against hostile replies.

A scripted Grid hands back, for each pushed ``query.describe``, whatever replies a test
lays out: honest ones, a second one from the same node, one a node sends in answer to
another node's message, one from a node nobody asked, malformed ones. Discovery must key
every description by the node id the SuperLink saw, keep at most one per node asked (the
first), and leave out what is not a description; it never takes a node's word for who it
is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import flwr.common.constant
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedguard.transport.grid import (
    SUPERLINK_NODE_ID,
    Answered,
    Failed,
    NodeWaitError,
    describe_nodes,
    vet_replies,
    wait_for_nodes,
)

Reply = Callable[[dict[int, Message]], list[Message]]


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task identity Flower gives an app it runs."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


class ScriptedGrid(Grid):
    """A Grid whose replies are ``script(messages by destination node)``, all at once."""

    def __init__(self, nodes: list[int], script: Reply) -> None:
        self.nodes, self.script = nodes, script
        self.pushed: dict[int, Message] = {}

    def set_run(self, run_id: int) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # as HttpGrid does
            self.pushed[msg.metadata.dst_node_id] = msg
            ids.append(msg.object_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies, self.script = self.script(self.pushed), lambda _: []
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("fedguard must not call Flower's send_and_receive")


def description(to: Message, *, src: int | None = None, **fields: object) -> Message:
    """A reply to ``to`` holding a ``node`` record of ``fields``, sent by node ``src``."""
    reply = Message(RecordDict({"node": ConfigRecord(dict(fields))}), reply_to=to)  # type: ignore[arg-type]
    if src is not None:
        reply.metadata.__dict__["_src_node_id"] = src
    return reply


def test_the_superlink_node_id_is_flowers():
    assert SUPERLINK_NODE_ID == flwr.common.constant.SUPERLINK_NODE_ID


def test_discovery_keeps_one_description_per_node_asked_keyed_by_node_id():
    def script(sent: dict[int, Message]) -> list[Message]:
        return [
            description(sent[11], name="alice", **{"client-id": 0}),
            description(sent[12], name="bob", **{"client-id": 1}),
            # The same node again, now claiming another name: the first answer stands.
            description(sent[12], name="mallory", **{"client-id": 1}),
            # Node 13 answers node 11's message, as alice: not an answer to its own.
            description(sent[11], src=13, name="alice", **{"client-id": 0}),
            # Node 99 was never asked.
            description(sent[11], src=99, name="eve", **{"client-id": 5}),
        ]

    grid = ScriptedGrid([11, 12, 13], script)
    info = describe_nodes(grid, [11, 12, 13], timeout=1)
    assert info == {
        11: {"name": "alice", "client-id": 0},
        12: {"name": "bob", "client-id": 1},
    }


@pytest.mark.parametrize(
    "make",
    [
        lambda to: Message(RecordDict(), reply_to=to),  # no record at all
        lambda to: Message(RecordDict({"other": ConfigRecord({"name": "x"})}), reply_to=to),
        lambda to: Message(  # a description plus another record
            RecordDict(
                {
                    "node": ConfigRecord({"name": "x", "client-id": 0}),
                    "m": MetricRecord({"x": 1.0}),
                }
            ),
            reply_to=to,
        ),
        lambda to: description(to, name=["x"], **{"client-id": 0}),  # name not a string
        lambda to: description(to, name="x", **{"client-id": True}),  # a bool is no id
        lambda to: description(to, name="x"),  # no client id
        lambda to: Message(Error(code=4002, reason="no\nforged line"), reply_to=to),
    ],
    ids=["empty", "no node record", "extra record", "name", "bool id", "no id", "error"],
)
def test_a_malformed_description_leaves_the_node_out(make, caplog):
    grid = ScriptedGrid([21], lambda sent: [make(sent[21])])
    assert describe_nodes(grid, [21], timeout=1) == {}
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "node 21" in logged and "\n" not in logged  # named, on one line


def test_vetting_counts_the_superlinks_answer_for_an_offline_node():
    msg = Message(RecordDict(), dst_node_id=31, message_type="train")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    offline = Message(Error(code=3, reason="node offline"), reply_to=msg)
    offline.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    late = Message(RecordDict({"m": MetricRecord({"x": 1.0})}), reply_to=msg)
    got = vet_replies([msg], [offline, late], what="round 1")
    assert len(got) == 1 and isinstance(got[0], Failed) and got[0].node_id == 31
    assert got[0].reason.startswith("offline (the SuperLink: node offline")
    fine = vet_replies([msg], [late], what="round 1")
    assert len(fine) == 1 and isinstance(fine[0], Answered) and fine[0].node_id == 31


def test_waiting_for_more_nodes_than_connect_is_a_fedguard_error():
    grid = ScriptedGrid([1, 2], lambda sent: [])
    assert wait_for_nodes(grid, 2, wait_s=0) == [1, 2]
    with pytest.raises(NodeWaitError, match=r"expected at least 3 connected within 0s, got 2"):
        wait_for_nodes(grid, 3, wait_s=0)
