"""A deployed node's ClientApp has no simulation code path (#20.2).

Attack: a hostile server sends the deployed ClientApp (``fedguard.client.app``) a train
request carrying the record a Flower-engine simulation used to ship in every message: a
whole simulation config and a state folder of the server's choosing. Before the
simulation got its own ClientApp, a node without its node config (the way the
simulation engine ran the same app) built a virtual client from that record: it loaded
the data set the server named, trained on it and wrote an accountant into the folder the
server named. Now the record is an unknown one: the node refuses the message and builds
nothing, with or without a node config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedguard.client.app import NODE_CONFIG_KEY
from fedguard.client.app import app as client_app
from fedguard.config import SimulationConfig
from fedguard.fl.data import federated_data, initial_model
from fedguard.fl.loop import request_for
from fedguard.task import get_weights
from fedguard.transport.messages import ERROR_CLIENT_FAILED, encode_train


def _hostile_request(planted: Path) -> RecordDict:
    """A valid deployed train request plus the old simulation record naming ``planted``."""
    config = SimulationConfig(out=planted / "out", dataset="digits", clients=2, rounds=1)
    weights = get_weights(initial_model(config, federated_data(config)))
    content = encode_train(weights=weights, request=request_for(config, 1))
    content["simulation"] = ConfigRecord(
        {"config": json.dumps(config.to_dict()), "state-dir": str(planted)}
    )
    return content


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task identity Flower gives an app it runs."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 7)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


def _deliver(content: RecordDict, node_config: dict[str, str | int]) -> Message:
    msg = Message(content, dst_node_id=7, message_type=MessageType.TRAIN, group_id="1")
    msg.metadata.__dict__["_message_id"] = msg.object_id  # as the SuperLink sets it
    context = Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={}
    )
    return client_app(msg, context)


@pytest.mark.parametrize(
    "node_config",
    [
        # How Flower's simulation engine starts a ClientApp: a partition id, no node.toml.
        {"partition-id": 0},
        # A deployed node's context (its node.toml need not exist: the request is refused
        # before the node loads anything).
        {NODE_CONFIG_KEY: "/nonexistent/node.toml"},
    ],
    ids=["simulation-engine context", "deployed context"],
)
def test_a_simulation_record_builds_no_virtual_client(
    tmp_path: Path, node_config: dict[str, str | int]
):
    planted = tmp_path / "planted"
    reply = _deliver(_hostile_request(planted), node_config)
    assert reply.has_error() and not reply.has_content()
    assert reply.error.code == ERROR_CLIENT_FAILED
    assert "simulation (config)" in reply.error.reason  # refused as a record it does not take
    assert not planted.exists()  # no virtual client state, no data, nothing written


def test_the_deployed_client_app_reaches_no_simulation_module():
    """What the deployed ClientApp's module imports, run in a fresh interpreter: no
    ``fedguard.simulations`` module is among them (tests/test_layers.py checks the same
    from the source)."""
    import subprocess
    import sys

    code = (
        "import sys, fedguard.client.app; "
        "print(sorted(m for m in sys.modules if m.startswith('fedguard.simulations')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
