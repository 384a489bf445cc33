"""A node's error reply never quotes its records (audit): a data error names the file, the
row and the offending value, which is for the node's own log, not for the server."""

from __future__ import annotations

import re
from pathlib import Path

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from harness.federation_files import write_federation

from fedguard.client.app import NODE_CONFIG_KEY
from fedguard.client.app import app as client_app
from fedguard.client.node import node_runtime
from fedguard.fl.loop import TrainRequest
from fedguard.task import build_model, get_weights
from fedguard.transport.messages import ERROR_CLIENT_FAILED, encode_train

SECRET = "HIV-positive (J. Smith)"

SCHEMA = """
[target]
column = "y"
labels = ["no", "yes"]
[columns.dx]
type = "categorical"
levels = ["none", "flu"]
[columns.age]
type = "numeric"
range = [0, 100]
"""


def test_a_data_error_reply_quotes_no_record(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)
    layout = write_federation(out=tmp_path / "demo", nodes=2, rounds=3)
    toml = layout.nodes[0]
    (toml.parent / "schema.toml").write_text(SCHEMA)
    (toml.parent / "d.csv").write_text(f"dx,age,y\nnone,40,no\n{SECRET},51,yes\nflu,33,no\n")
    text = re.sub(
        r"\[data\][^\[]*",
        '[data]\ndataset = "d.csv"\nschema = "schema.toml"\n\n',
        toml.read_text(),
    ).replace("required = true", "required = false")
    toml.write_text(text)
    node_runtime.cache_clear()
    weights = get_weights(build_model(name="logreg", input_shape=(3,), num_classes=2))
    request = TrainRequest(
        server_round=1, local_epochs=1, batch_size=8, lr=0.1, max_grad_norm=1.0,
        total_rounds=3, federation="demo", model="logreg", run_id="demo/abc",
    )  # fmt: skip
    msg = Message(
        encode_train(weights=weights, request=request),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
        group_id="1",
    )
    msg.metadata.__dict__["_message_id"] = msg.object_id
    context = Context(
        run_id=7, node_id=1, node_config={NODE_CONFIG_KEY: str(toml)}, state=RecordDict(),
        run_config={},
    )  # fmt: skip
    reply = client_app(msg, context)
    assert reply.has_error() and reply.error.code == ERROR_CLIENT_FAILED
    reason = reply.error.reason
    assert SECRET not in reason and "d.csv" not in reason and "row" not in reason, reason
    assert "could not load its data (DataError)" in reason


def test_a_refusal_keeps_no_exact_epsilon_when_the_node_keeps_its_count():
    """Audit: a budget refusal's exact figures ('spent so far 2.0241') gave n away."""
    from fedguard.client.app import _EXACT_FIGURE
    from fedguard.privacy.receipts import coarse_epsilon

    reason = "round 3 refused: epsilon would reach 3.0412 > budget 3 (spent so far 2.0241, rdp)"
    out = _EXACT_FIGURE.sub(lambda m: f"{coarse_epsilon(float(m[0])):.1f}", reason)
    assert out == "round 3 refused: epsilon would reach 3.1 > budget 3 (spent so far 2.1, rdp)"
