"""A Flower Grid whose nodes answer fedguard's describe query at once, in process: the
server's gathering and naming of nodes tested without a SuperLink."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["DescribeGrid"]


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
            desc = {
                "name": self.claims[m.metadata.dst_node_id],
                "client-id": -1,
                "input-shape": [1, 8, 8],
                "labels-fit": True,
            }
            self._queue.append(
                Message(RecordDict({"node": ConfigRecord(desc)}), reply_to=m)  # type: ignore[arg-type]
            )
        return [m.metadata.message_id for m in batch]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = set(message_ids)
        out = [r for r in self._queue if r.metadata.reply_to_message_id in ids]
        self._queue = [r for r in self._queue if r not in out]
        return out

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover
        raise AssertionError("fedguard must not call Flower's send_and_receive")
