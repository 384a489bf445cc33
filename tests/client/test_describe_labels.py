"""A node's describe answer says whether the server's class count fits the node's, and
nothing about which classes its records hold (red team: asked with every class count in
turn, `labels-fit` used to give away the node's largest label)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from harness.federation_files import write_federation

from fedguard.client.app import _description
from fedguard.client.node import node_runtime

SCHEMA = """
[target]
column = "y"
labels = ["a", "b", "c", "d"]
[columns.x]
type = "numeric"
range = [0, 10]
"""


def _node(tmp_path: Path, labels: list[str]) -> Path:
    layout = write_federation(out=tmp_path, nodes=2, rounds=1)
    toml = layout.nodes[0]
    (toml.parent / "schema.toml").write_text(SCHEMA)
    rows = "".join(f"{i % 10},{labels[i % len(labels)]}\n" for i in range(40))
    (toml.parent / "d.csv").write_text("x,y\n" + rows)
    data = (
        f'[data]\ndataset = "{toml.parent / "d.csv"}"\nschema = "{toml.parent / "schema.toml"}"\n\n'
    )
    text = re.sub(r"\[data\][^\[]*", lambda _m: data, toml.read_text())
    toml.write_text(text)
    return toml


def _fits(toml: Path, k: int) -> bool:
    node_runtime.cache_clear()
    message = Message(RecordDict({"task": ConfigRecord({"num-classes": k})}), dst_node_id=1,
                      message_type="query.describe")  # fmt: skip
    return bool(_description(str(toml), message)["labels-fit"])


def test_the_answer_does_not_depend_on_which_declared_classes_the_records_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for attr, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, attr, value)  # a message outside a Flower run
    some = _node(tmp_path / "some", ["a", "b"])  # records of two of the four classes
    every = _node(tmp_path / "every", ["a", "b", "c", "d"])
    answers_some = [_fits(some, k) for k in range(1, 7)]
    answers_every = [_fits(every, k) for k in range(1, 7)]
    assert answers_some == answers_every == [False, False, False, True, True, True]
