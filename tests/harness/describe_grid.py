"""The server's gathering and naming of nodes tested without a SuperLink: a Flower Grid
whose nodes answer fedguard's describe query in process, a small federation file, and the
task identity Flower's messages need outside a ServerApp."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedguard.deploy_config import FederationConfig, load_federation_config

__all__ = ["FEDERATION", "DescribeGrid", "describe_reply", "federation", "flower_task"]

FEDERATION = """state-dir = "state"
out = "results"
[federation]
name = "card"
rounds = 3
min-nodes = 2
round-timeout = 5.0
[task]
model = "logreg"
input-shape = [1, 8, 8]
num-classes = 10
[training]
local-epochs = 1
batch-size = 8
lr = 0.1
[secagg]
enabled = false
[server]
insecure = true
"""


def federation(tmp_path: Path, text: str = FEDERATION) -> FederationConfig:
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return load_federation_config(path)


def flower_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ids Flower stamps on a message, as inside a ServerApp's task."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


def describe_reply(to: Message, name: str) -> Message:
    """A node's answer to ``to``: a description that fits the task of :data:`FEDERATION`."""
    desc = {"name": name, "client-id": -1, "input-shape": [1, 8, 8], "labels-fit": True}
    return Message(RecordDict({"node": ConfigRecord(desc)}), reply_to=to)  # type: ignore[arg-type]


class DescribeGrid(Grid):
    """Nodes that answer the describe query with a chosen name and description."""

    def __init__(self, claims: dict[int, str]) -> None:
        self.claims, self._queue = claims, []

    def set_run(self, run_id):  # pragma: no cover - not used
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover - not used
        raise NotImplementedError

    def create_message(self, *a, **k):  # pragma: no cover - not used
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.claims)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        batch = list(messages)
        for m in batch:
            m.metadata.__dict__["_message_id"] = m.object_id
            self._queue.append(describe_reply(m, self.claims[m.metadata.dst_node_id]))
        return [m.metadata.message_id for m in batch]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = set(message_ids)
        out = [r for r in self._queue if r.metadata.reply_to_message_id in ids]
        self._queue = [r for r in self._queue if r not in out]
        return out

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover
        raise AssertionError("fedguard must not call Flower's send_and_receive")
