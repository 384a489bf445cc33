"""Server messages a node must not accept, through the real ClientApp of a demo node.

Each bad ``train`` (or secure-aggregation stage) message crosses the wire as Flower
serialises it and reaches the node's real ClientApp (its node.toml, data, DP policy and
state folder). The node must answer with an error naming what was wrong, and not train:
its state folder (ledger, accountant, run plans, last reply, secagg session) is unchanged
byte for byte. The node trained one valid round first, so there is a ledger to protect,
and that valid round shows the requests below differ from one it accepts only in the
flaw each carries.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.supercore.task_identity import TaskIdentity
from harness.federation_files import write_federation

from fedguard.client.app import NODE_CONFIG_KEY
from fedguard.client.app import app as client_app
from fedguard.client.node import node_runtime
from fedguard.files import EVENTS_FILE, LEDGER_FILE
from fedguard.fl.loop import TrainRequest
from fedguard.privacy.secagg import Setup, make_params
from fedguard.server.secure_round import SECAGG_MESSAGE_TYPE
from fedguard.task import build_model, get_weights
from fedguard.transport.messages import (
    ERROR_BUDGET_REFUSED,
    ERROR_CLIENT_FAILED,
    encode_train,
    secagg_record,
)
from fedguard.transport.serde import encode_secagg

NODE_ID = 0x5EC0001
RUN = "demo/0123456789abcdef"
WEIGHTS = get_weights(build_model(name="logreg", input_shape=(1, 8, 8), num_classes=10))


def train_request(server_round: int = 1) -> TrainRequest:
    return TrainRequest(
        server_round=server_round,
        local_epochs=1,
        batch_size=64,
        lr=0.5,
        max_grad_norm=0.5,
        total_rounds=3,
        federation="demo",
        model="logreg",
        run_id=RUN,
    )


def over_the_wire(message: Message) -> Message:
    wire = message_to_proto(message).SerializeToString()
    return message_from_proto(ProtoMessage.FromString(wire))


@dataclasses.dataclass
class Node:
    toml: Path
    state: Path

    def deliver(self, content: RecordDict, kind: str = MessageType.TRAIN) -> Message:
        """What the node's ClientApp answers to ``content`` (as a ``kind`` message)."""
        msg = Message(content, dst_node_id=NODE_ID, message_type=kind, group_id="2")
        msg.metadata.__dict__["_message_id"] = msg.object_id  # as the SuperLink sets it
        context = Context(
            run_id=7,
            node_id=NODE_ID,
            node_config={NODE_CONFIG_KEY: str(self.toml)},
            state=RecordDict(),
            run_config={},
        )
        return client_app(over_the_wire(msg), context)

    def snapshot(self) -> dict[str, bytes]:
        # node-events.log: the node's own account of each request (it grows, #17.2).
        files = (p for p in self.state.rglob("*") if p.is_file() and p.name != EVENTS_FILE)
        return {str(p.relative_to(self.state)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """node-a of a demo federation, with ``[secagg] required = false`` (so a plain round
    is one it would train), after one valid round."""
    with pytest.MonkeyPatch.context() as mp:  # the task identity Flower gives an app
        mp.setattr(TaskIdentity, "_run_id", 7)
        mp.setattr(TaskIdentity, "_node_id", 1)
        mp.setattr(TaskIdentity, "_task_id", 3)
        layout = write_federation(
            out=tmp_path_factory.mktemp("hostile") / "demo", nodes=2, rounds=3
        )
        toml = layout.nodes[0]
        toml.write_text(toml.read_text().replace("required = true", "required = false"))
        node_runtime.cache_clear()
        n = Node(toml=toml, state=toml.parent / "state")
        good = encode_train(weights=WEIGHTS, request=train_request(1))
        reply = n.deliver(good)
        assert reply.has_content() and not reply.has_error()  # it trains a valid request
        assert LEDGER_FILE in n.snapshot()
        yield n


def valid() -> RecordDict:
    """A valid request for round 2 (the node would train it)."""
    return encode_train(weights=WEIGHTS, request=train_request(2))


def changed(change: Callable[[RecordDict], object]) -> Callable[[], RecordDict]:
    def make() -> RecordDict:
        content = valid()
        change(content)
        return content

    return make


def with_weights(arrays: list[np.ndarray]) -> Callable[[], RecordDict]:
    return changed(lambda c: c.__setitem__("weights", ArrayRecord(arrays)))


def with_first_array(data: bytes) -> Callable[[], RecordDict]:
    def change(content: RecordDict) -> None:
        record = content.array_records["weights"]
        record[next(iter(record))] = Array(
            dtype="float32", shape=(10, 64), stype="numpy.ndarray", data=data
        )

    return changed(change)


def setting(key: str, value: object) -> Callable[[], RecordDict]:
    def change(content: RecordDict) -> None:
        config = content.config_records["request"]
        if value is None:
            del config[key]
        else:
            config[key] = value  # type: ignore[assignment]

    return changed(change)


def in_new_run(make: Callable[[], RecordDict]) -> Callable[[], RecordDict]:
    """``make``'s content for another run: the node would plan that run's noise first."""

    def new() -> RecordDict:
        content = make()
        content.config_records["request"]["run-id"] = "demo/another-run"
        return content

    return new


def poisoned(value: float) -> list[np.ndarray]:
    out = [w.copy() for w in WEIGHTS]
    out[0].flat[3] = value
    return out


def pickled() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


def setup_for(server_round: int) -> bytes:
    params = make_params(
        run="demo",
        server_round=server_round,
        cohort=2,
        clip_range=1.0,
        bits=16,
        weight_cap=1000,
        dropout_tolerance=1 / 3,
        graph_seed=0,
    )
    return encode_secagg(Setup(params=params, slot=1))


SECAGG_PAYLOAD = "payload"


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: the message content, and a fragment of the node's error reason."""

    name: str
    content: Callable[[], RecordDict]
    fragment: str
    policy: bool = False  # refused by the node's policy (ERROR_BUDGET_REFUSED)


CASES = [
    Case(
        "request record missing",
        changed(lambda c: c.__delitem__("request")),
        "train request: expected records weights (arrays), request (config); optionally"
        " secagg (config); got weights (arrays)",
    ),
    Case(
        "weights record missing",
        changed(lambda c: c.__delitem__("weights")),
        "got request (config)",
    ),
    Case(
        "extra record",
        changed(lambda c: c.__setitem__("debug", ConfigRecord({"x": 1}))),
        "got debug (config), request (config), weights (arrays)",
    ),
    Case(
        "weights as a config record",
        changed(lambda c: c.__setitem__("weights", ConfigRecord({"w": 1.0}))),
        "weights (config)",
    ),
    Case(
        "NaN in weights",
        with_weights(poisoned(math.nan)),
        "train request weights[0]: expected finite values, got 1 NaN/Inf",
    ),
    Case(
        "Inf in weights", with_weights(poisoned(-math.inf)), "expected finite values, got 1 NaN/Inf"
    ),
    Case(
        "integer weights",
        with_weights([w.astype(np.int32) for w in WEIGHTS]),
        "weights[0]: expected floats, got int32",
    ),
    Case(
        "wrong shape",
        with_weights([np.zeros((10, 65), np.float32), WEIGHTS[1]]),
        "expected shape (10, 64), got (10, 65)",
    ),
    Case(
        "one array too few",
        with_weights(WEIGHTS[:1]),
        "expected 2 arrays (one per state_dict entry), got 1",
    ),
    Case(
        "one array too many",
        with_weights([*WEIGHTS, WEIGHTS[1]]),
        "expected 2 arrays (one per state_dict entry), got 3",
    ),
    Case(
        "wrong shape, in a run the node has not planned yet",
        in_new_run(with_weights([np.zeros((10, 65), np.float32), WEIGHTS[1]])),
        "expected shape (10, 64), got (10, 65)",
    ),
    Case(
        "undecodable array bytes",
        with_first_array(b"\x93NUMPY garbage"),
        "train request weights[0]: expected .npy bytes",
    ),
    Case(
        "pickled object array", with_first_array(pickled()), "expected a numeric dtype, got object"
    ),
    Case("lr NaN", setting("lr", math.nan), "request lr: expected a finite number > 0, got nan"),
    Case(
        "lr a string", setting("lr", "0.5"), "request lr: expected a finite number > 0, got '0.5'"
    ),
    Case("lr negative", setting("lr", -0.5), "got -0.5"),
    Case(
        "local-epochs 0",
        setting("local-epochs", 0),
        "request local-epochs: expected an integer >= 1, got 0",
    ),
    Case(
        "local-epochs a float",
        setting("local-epochs", 1.0),
        "request local-epochs: expected an integer, got 1.0",
    ),
    Case("local-epochs a bool", setting("local-epochs", True), "expected an integer, got True"),
    Case(
        "batch-size negative",
        setting("batch-size", -64),
        "request batch-size: expected an integer >= 1, got -64",
    ),
    Case(
        "momentum 1.5",
        setting("momentum", 1.5),
        "request momentum: expected a number in [0, 1), got 1.5",
    ),
    Case(
        "max-grad-norm +Inf",
        setting("max-grad-norm", math.inf),
        "request max-grad-norm: expected a finite number > 0, got inf",
    ),
    Case(
        "client-noise negative",
        setting("client-noise", -1.0),
        "request client-noise: expected a finite number >= 0, got -1.0",
    ),
    Case(
        "server-round missing",
        setting("server-round", None),
        "request server-round: expected an integer, got nothing (missing)",
    ),
    Case(
        "model missing",
        setting("model", None),
        "request model: expected a string, got nothing (missing)",
    ),
    Case("unknown request key", setting("upload-data-to", "http://x"), "got ['upload-data-to']"),
    Case("unknown model", setting("model", "resnet-1000"), "resnet-1000"),
    Case(
        "more local epochs than the policy allows",
        setting("local-epochs", 10**6),
        "max-local-epochs",
        policy=True,
    ),
    Case(
        "secagg setup undecodable",
        changed(lambda c: c.__setitem__("secagg", ConfigRecord({SECAGG_PAYLOAD: b"\x00garbage"}))),
        "SecAggMessage",
    ),
    Case(
        "secagg payload not bytes",
        changed(lambda c: c.__setitem__("secagg", ConfigRecord({SECAGG_PAYLOAD: "x"}))),
        "secagg record lacks its payload bytes",
    ),
    Case(
        "secagg setup of another round",
        changed(lambda c: c.__setitem__("secagg", ConfigRecord({SECAGG_PAYLOAD: setup_for(5)}))),
        "round 5 does not match the request",
        policy=True,
    ),
    Case(
        "simulation record sent to a deployed node",
        changed(
            lambda c: c.__setitem__(
                "simulation", ConfigRecord({"config": "{}", "state-dir": "/tmp/x"})
            )
        ),
        # No message type carries a simulation's config: the record is just an extra one.
        "optionally secagg (config); got request (config), simulation (config), weights",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_node_answers_an_error_naming_the_flaw_and_spends_nothing(node: Node, case: Case):
    before = node.snapshot()
    events = node.state / EVENTS_FILE
    logged = events.read_text()
    reply = node.deliver(case.content())
    assert reply.has_error() and not reply.has_content()
    assert len(events.read_text()) > len(logged)  # the node's own log says it (#17.2)
    assert reply.error.code == (ERROR_BUDGET_REFUSED if case.policy else ERROR_CLIENT_FAILED)
    assert case.fragment in reply.error.reason, reply.error.reason
    assert "\n" not in reply.error.reason
    assert node.snapshot() == before  # no ledger entry, no accountant change, no plan


@pytest.mark.parametrize(
    "payload", [b"", b"\xff" * 40, setup_for(2)], ids=["empty", "garbage", "a-setup-out-of-turn"]
)
def test_a_secure_aggregation_stage_it_cannot_accept_is_refused(node: Node, payload: bytes):
    before = node.snapshot()
    reply = node.deliver(secagg_record(payload), kind=SECAGG_MESSAGE_TYPE)
    assert reply.has_error() and reply.error.code == ERROR_CLIENT_FAILED
    assert "SecAggMessage" in reply.error.reason or "no secure-aggregation" in reply.error.reason
    assert node.snapshot() == before


def test_the_node_still_trains_a_valid_request_afterwards(node: Node):
    reply = node.deliver(valid())
    assert reply.has_content() and not reply.has_error()
