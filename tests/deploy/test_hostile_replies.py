"""Hostile train replies on the plain path (``[secagg] enabled = false``).

The deployed server's round (``exchange_round`` with the run's receipt check, the global
weights, ``max-update-norm`` and the weight cap, as ``deploy_app`` passes them, then
``run_rounds``) runs over a grid whose nodes answer with crafted replies. Each reply
crosses the wire as Flower serialises it. Three honest nodes answer every round; a
fourth sends one kind of bad reply: it is rejected with a logged reason naming it, the
round aggregates exactly the honest updates, and the next round runs.

(Over the 400-line guide: the table of bad inputs, one case each, is most of the file.)
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedguard.fl.limits import MAX_UPDATE_NORM
from fedguard.fl.loop import RoundRecord, TrainRequest, run_rounds
from fedguard.fl.participants import Participants
from fedguard.fl.strategies import FedAvgM
from fedguard.privacy.receipts import PrivacyReceipt
from fedguard.task import Metrics
from fedguard.transport import encode_receipt
from fedguard.transport.grid import exchange_round
from fedguard.transport.messages import (
    attach_receipt,
    decode_request,
    encode_reply,
    encode_train,
)

RUN = "cardio/0123456789abcdef"
TIMEOUT = 0.2  # the grid answers at once: only a missing reply is waited for
SHAPES = [(3, 4), (4,)]
HONEST = {0: 30, 1: 50, 2: 20}  # client id -> examples; client 3 is the hostile one
HOSTILE = 3
NAMES = {0: "hospital-a", 1: "hospital-b", 2: "hospital-c", 3: "mallory"}
NODE_OF = {c: 1000 + c for c in NAMES}
PARTICIPANTS = Participants.enrolled([(NAMES[c], NODE_OF[c], {}) for c in sorted(NAMES)])
CAP = max(HONEST.values())


# ---------------------------------------------------------------- the transport


def over_the_wire(message: Message) -> Message:
    wire = message_to_proto(message).SerializeToString()
    return message_from_proto(ProtoMessage.FromString(wire))


Answer = Callable[[Message, "CraftedGrid"], Iterable[Message]]


class CraftedGrid(Grid):
    """Flower's transport as the ServerApp sees it: node N answers a pushed message with
    ``answers[N](message, grid)`` (any number of replies, crafted), ready at the next pull."""

    def __init__(self, answers: dict[int, Answer]) -> None:
        self.answers = answers
        self.pushed: list[Message] = []
        self._queue: list[Message] = []

    def set_run(self, run_id: int) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.answers)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        batch = list(messages)
        for msg in batch:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # as HttpGrid does
        self.pushed.extend(batch)
        for msg in batch:  # after the whole batch: a reply may answer another's message
            answer = self.answers.get(msg.metadata.dst_node_id)
            if answer is not None:
                self._queue.extend(over_the_wire(r) for r in answer(msg, self))
        return [m.metadata.message_id for m in batch]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = set(message_ids)
        out = [r for r in self._queue if r.metadata.reply_to_message_id in ids]
        self._queue = [r for r in self._queue if r.metadata.reply_to_message_id not in ids]
        return out

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("fedguard must not call Flower's send_and_receive")


@pytest.fixture(autouse=True)
def identity(monkeypatch):
    """The ServerApp's task identity (Flower sets it in the ServerApp process)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


# ---------------------------------------------------------------- honest nodes


def delta_of(cid: int, server_round: int) -> list[np.ndarray]:
    rng = np.random.default_rng([cid, server_round])
    return [rng.normal(0, 0.01, size=s).astype(np.float32) for s in SHAPES]


def receipt(server_round: int, *, run: str = RUN) -> bytes:
    return encode_receipt(
        PrivacyReceipt(
            run=run,
            server_round=server_round,
            dataset_fingerprint="sha256:" + "ab" * 32,
            sample_rate=0.1,
            noise_multiplier=1.0,
            steps=3,
            max_grad_norm=1.0,
            epsilon=0.1 * (server_round + 1),
            delta=1e-5,
            accountant="rdp",
            ledger_seq=2 * server_round,
            ledger_hash="ab" * 32,
            committed=True,
        )
    )


def sent(msg: Message) -> tuple[list[np.ndarray], TrainRequest]:
    return decode_request(msg)


def honest_content(cid: int, msg: Message, *, examples: int | None = None) -> RecordDict:
    weights, request = sent(msg)
    new = [w + d for w, d in zip(weights, delta_of(cid, request.server_round), strict=True)]
    n = HONEST.get(cid, 40) if examples is None else examples
    content = encode_reply(weights=new, metrics={"num-examples": n, "train-loss": 0.5})
    return attach_receipt(content, receipt(request.server_round))


def honest(cid: int) -> Answer:
    return lambda msg, grid: [Message(honest_content(cid, msg), reply_to=msg)]


def with_records(msg: Message, **records: Any) -> Message:
    """The honest reply with records replaced (None: removed) or added."""
    content = honest_content(HOSTILE, msg)
    for name, record in records.items():
        if record is None:
            del content[name]
        else:
            content[name] = record
    return Message(content, reply_to=msg)


def with_weights(msg: Message, change: Callable[[list[np.ndarray]], list[np.ndarray]]) -> Message:
    content = honest_content(HOSTILE, msg)
    arrays = content.array_records["weights"].to_numpy_ndarrays()
    content["weights"] = ArrayRecord(change(arrays))
    return Message(content, reply_to=msg)


def with_array(msg: Message, array: Array) -> Message:
    """The honest reply whose first array is ``array`` (bytes of the sender's choosing)."""
    content = honest_content(HOSTILE, msg)
    record = content.array_records["weights"]
    first = next(iter(record))
    record[first] = array
    return Message(content, reply_to=msg)


def raw_array(data: bytes, stype: str = "numpy.ndarray") -> Array:
    return Array(dtype="float32", shape=(3, 4), stype=stype, data=data)


def npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def npy_header_only(shape: tuple[int, ...]) -> bytes:
    """A .npy header promising ``shape`` float32 values, followed by 12 of them."""
    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + np.zeros(12, np.float32).tobytes()


def npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros((3, 4), np.float32))
    return buf.getvalue()


def metrics(**values: float) -> MetricRecord:
    return MetricRecord({"num-examples": 40, "train-loss": 0.5, **values})


def one(make: Callable[[Message], Message]) -> Answer:
    return lambda msg, grid: [make(msg)]


def scaled(factor: float) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    return lambda ws: [w * np.float32(factor) for w in ws]


def set_first(value: float) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    def change(ws: list[np.ndarray]) -> list[np.ndarray]:
        ws[0].flat[5] = value
        return ws

    return change


def forged(msg: Message, grid: CraftedGrid) -> list[Message]:
    """A reply from mallory that answers hospital-a's message (src forged)."""
    theirs = next(m for m in grid.pushed if m.metadata.dst_node_id == NODE_OF[0])
    reply = Message(honest_content(HOSTILE, theirs), reply_to=theirs)
    reply.metadata.__dict__["_src_node_id"] = NODE_OF[HOSTILE]
    return [reply]


def stranger(msg: Message, grid: CraftedGrid) -> list[Message]:
    """A reply from a node nobody asked (id 999), to mallory's message."""
    reply = Message(honest_content(HOSTILE, msg), reply_to=msg)
    reply.metadata.__dict__["_src_node_id"] = 999
    return [reply]


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: how mallory answers, and the reason logged (None: dropped, not
    refused: its first reply counts, the repeat is dropped)."""

    name: str
    answer: Answer
    fragment: str | None


CASES = [
    Case(
        "NaN in weights",
        one(lambda m: with_weights(m, set_first(math.nan))),
        "weights[0]: expected finite values, got 1 NaN/Inf",
    ),
    Case(
        "+Inf in weights",
        one(lambda m: with_weights(m, set_first(math.inf))),
        "expected finite values, got 1 NaN/Inf",
    ),
    Case(
        "wrong shape",
        one(lambda m: with_weights(m, lambda ws: [np.zeros((3, 5), np.float32), ws[1]])),
        "weights[0]: expected float32 (3, 4), got float32 (3, 5)",
    ),
    Case(
        "float64 instead of float32",
        one(lambda m: with_weights(m, lambda ws: [w.astype(np.float64) for w in ws])),
        "expected float32 (3, 4), got float64 (3, 4)",
    ),
    Case(
        "int32 weights",
        one(lambda m: with_weights(m, lambda ws: [w.astype(np.int32) for w in ws])),
        "got int32 (3, 4)",
    ),
    Case(
        "one array too few",
        one(lambda m: with_weights(m, lambda ws: ws[:1])),
        "expected 2 arrays, got 1",
    ),
    Case(
        "one array too many",
        one(lambda m: with_weights(m, lambda ws: [*ws, ws[1]])),
        "expected 2 arrays, got 3",
    ),
    Case(
        "no arrays",
        one(lambda m: with_weights(m, lambda ws: [])),
        "expected 2 arrays, got 0",
    ),
    Case(
        "absurd update norm (x1e6)",
        one(lambda m: with_weights(m, scaled(1e6))),
        f"expected an L2 norm <= {MAX_UPDATE_NORM:g}",
    ),
    Case(
        "huge finite value (3e38)",
        one(lambda m: with_weights(m, set_first(3e38))),
        "expected an L2 norm <=",
    ),
    Case(
        "receipt of round 0 (stale)",
        one(lambda m: with_records(m, receipt=ConfigRecord({"payload": receipt(0)}))),
        "round 0, not run",
    ),
    Case(
        "receipt of another run",
        one(
            lambda m: with_records(m, receipt=ConfigRecord({"payload": receipt(1, run="other/ff")}))
        ),
        "is for run 'other/ff'",
    ),
    Case(
        "no receipt",
        one(lambda m: with_records(m, receipt=None)),
        "expected a privacy receipt for run",
    ),
    Case(
        "receipt bytes undecodable",
        one(lambda m: with_records(m, receipt=ConfigRecord({"payload": b"\xff" * 9}))),
        "PrivacyReceipt",
    ),
    Case(
        "receipt payload not bytes",
        one(lambda m: with_records(m, receipt=ConfigRecord({"payload": "ok"}))),
        "receipt record lacks its payload bytes",
    ),
    Case(
        "weights record missing",
        one(lambda m: with_records(m, weights=None)),
        "expected records weights (arrays), metrics (metrics); optionally receipt (config);"
        " got metrics (metrics), receipt (config)",
    ),
    Case(
        "metrics record missing",
        one(lambda m: with_records(m, metrics=None)),
        "got receipt (config), weights (arrays)",
    ),
    Case(
        "extra record",
        one(lambda m: with_records(m, labels=ConfigRecord({"y": [1, 0, 1]}))),
        "got labels (config), metrics",
    ),
    Case(
        "weights sent as a metrics record",
        one(lambda m: with_records(m, weights=MetricRecord({"w": [1.0]}))),
        "receipt (config), weights (metrics)",
    ),
    Case(
        "array bytes: garbage",
        one(lambda m: with_array(m, raw_array(b"garbage!" * 8))),
        "weights[0]: expected .npy bytes, got undecodable",
    ),
    Case(
        "array bytes: empty",
        one(lambda m: with_array(m, raw_array(b""))),
        "expected .npy bytes",
    ),
    Case(
        "array bytes: pickled object array",
        one(
            lambda m: with_array(
                m, raw_array(npy(np.array([1, "x"], dtype=object), allow_pickle=True))
            )
        ),
        "expected a numeric dtype, got object",
    ),
    Case(
        "array bytes: header promising 2**40 values",
        one(lambda m: with_array(m, raw_array(npy_header_only((1 << 40,))))),
        "expected 4398046511104 bytes of float32 (1099511627776,), got 48",
    ),
    Case(
        "array bytes: truncated .npy",
        one(lambda m: with_array(m, raw_array(npy(np.zeros((3, 4), np.float32))[:-5]))),
        "expected 48 bytes of float32 (3, 4), got 43",
    ),
    Case(
        "array bytes: .npz archive",
        one(lambda m: with_array(m, raw_array(npz_bytes()))),
        "expected .npy bytes",
    ),
    Case(
        "array serialised as torch",
        one(lambda m: with_array(m, raw_array(b"1234", stype="torch.raw"))),
        "expected a numpy.ndarray, got serialisation 'torch.raw'",
    ),
    Case(
        "num-examples 0",
        one(lambda m: with_records(m, metrics=metrics(**{"num-examples": 0}))),
        "expected an integer >= 1, got 0",
    ),
    Case(
        "num-examples 2.5",
        one(lambda m: with_records(m, metrics=metrics(**{"num-examples": 2.5}))),
        "expected an integer >= 1, got 2.5",
    ),
    Case(
        "NaN metric",
        one(lambda m: with_records(m, metrics=metrics(**{"train-loss": math.nan}))),
        "non-finite ['train-loss']",
    ),
    Case(
        "error reply",
        one(lambda m: Message(Error(code=4002, reason="OSError: disk full"), reply_to=m)),
        "mallory: OSError: disk full",
    ),
    Case(
        "no reply (timeout)",
        lambda m, g: [],
        "mallory: no reply within",
    ),
    Case(
        "reply answering another node's message",
        forged,
        "mallory: no reply within",
    ),
    Case(
        "reply from a node not asked",
        stranger,
        "mallory: no reply within",
    ),
    Case(
        "the same reply twice",
        lambda m, g: [Message(honest_content(HOSTILE, m), reply_to=m)] * 2,
        None,
    ),
]


def exact_mean(server_round: int, counted: dict[int, int]) -> list[np.ndarray]:
    total = sum(counted.values())
    return [
        sum(
            np.float64(n) * delta_of(c, server_round)[i].astype(np.float64)
            for c, n in counted.items()
        )
        / total
        for i in range(len(SHAPES))
    ]


def run(
    answers: dict[int, Answer], rounds: int = 1
) -> tuple[list[np.ndarray], list[RoundRecord], list[np.ndarray]]:
    """The deployed server's plain rounds over ``answers``: (start, records, final)."""
    grid = CraftedGrid({NODE_OF[c]: a for c, a in answers.items()})
    rng = np.random.default_rng(0)
    start = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    records: list[RoundRecord] = []

    def train_cohort(server_round: int, cohort: list[int], weights: list[np.ndarray]):
        request = TrainRequest(
            server_round=server_round, local_epochs=1, batch_size=8, lr=0.1,
            total_rounds=rounds, federation="cardio", model="logreg", run_id=RUN,
        )  # fmt: skip
        assert request.run_key == RUN
        content = encode_train(weights=weights, request=request)
        return exchange_round(
            grid=grid,
            server_round=server_round,
            cohort=PARTICIPANTS.cohort(cohort),
            content=content,
            timeout=TIMEOUT,
            receipt_run=RUN,
            expect=weights,
            max_update_norm=MAX_UPDATE_NORM,
            weight_cap=CAP,
        )

    nan = float("nan")
    final = run_rounds(
        first_round=1,
        last_round=rounds,
        seed=0,
        num_clients=len(NAMES),
        cohort_size=len(NAMES),
        weights=start,
        server=FedAvgM(server_lr=1.0, server_momentum=0.0),
        train_cohort=train_cohort,
        evaluate=lambda w: Metrics(
            loss=nan,
            accuracy=nan,
            precision_macro=nan,
            recall_macro=nan,
            f1_macro=nan,
            roc_auc=None,
            examples=0,
        ),
        on_round=lambda record, w: records.append(record),
    )
    return start, records, final


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_hostile_reply_is_rejected_and_the_round_aggregates_the_others(case: Case, caplog):
    caplog.set_level(logging.WARNING)
    fragment = case.fragment
    answers = {c: honest(c) for c in HONEST} | {HOSTILE: case.answer}
    start, records, final = run(answers, rounds=2)
    counted = HONEST if fragment is not None else HONEST | {HOSTILE: 40}
    for r, record in enumerate(records, start=1):
        assert record.round == r and record.clients == len(counted)
        assert record.refused == (0 if fragment is None else 1)
    # Exactly the honest updates, example-weighted: round 1's mean, then round 2's.
    want = [s.astype(np.float64) for s in start]
    for r in (1, 2):
        want = [w + m for w, m in zip(want, exact_mean(r, counted), strict=True)]
    for got, w in zip(final, want, strict=True):
        np.testing.assert_allclose(got, w, rtol=0, atol=1e-6)
    logged = [w for w in warnings(caplog) if "mallory" in w]
    if fragment is None:
        assert any("dropped a reply from mallory (not asked, a repeat" in w for w in logged)
    else:
        hits = [w for w in logged if fragment in w]
        assert len(hits) == 2, logged  # once per round, naming the node
        assert all(
            h.startswith(
                ("round 1: client 3 refused: mallory", "round 2: client 3 refused: mallory")
            )
            for h in hits
        )
        assert all("\n" not in h for h in hits)


def test_a_replayed_reply_of_an_earlier_round_is_refused(caplog):
    """Mallory trains in round 1, then resends that very reply (receipt included) in round
    2 and 3: the receipt names round 1, so both replays are refused."""
    kept: list[RecordDict] = []

    def replay(msg: Message, grid: CraftedGrid) -> list[Message]:
        if not kept:
            kept.append(honest_content(HOSTILE, msg, examples=40))
        return [Message(kept[0], reply_to=msg)]

    caplog.set_level(logging.WARNING)
    start, records, final = run({c: honest(c) for c in HONEST} | {HOSTILE: replay}, rounds=3)
    assert [(r.clients, r.refused) for r in records] == [(4, 0), (3, 1), (3, 1)]
    refused = [w for w in warnings(caplog) if "mallory" in w]
    assert refused == [
        f"round {r}: client 3 refused: mallory: malformed reply: privacy receipt is for run "
        f"'{RUN}' round 1, not run '{RUN}' round {r} (stale or replayed)"
        for r in (2, 3)
    ]
    want = [s.astype(np.float64) for s in start]
    want = [w + m for w, m in zip(want, exact_mean(1, HONEST | {HOSTILE: 40}), strict=True)]
    for r in (2, 3):
        want = [w + m for w, m in zip(want, exact_mean(r, HONEST), strict=True)]
    for got, w in zip(final, want, strict=True):
        np.testing.assert_allclose(got, w, rtol=0, atol=1e-6)


def test_an_inflated_example_count_is_capped_at_the_cohorts_largest(caplog):
    caplog.set_level(logging.WARNING)
    inflated = one(lambda m: Message(honest_content(HOSTILE, m, examples=10**9), reply_to=m))
    start, records, final = run({c: honest(c) for c in HONEST} | {HOSTILE: inflated})
    assert (records[0].clients, records[0].refused) == (4, 0)
    want = exact_mean(1, HONEST | {HOSTILE: CAP})  # not 10**9: it would be mallory's alone
    for got, s, w in zip(final, start, want, strict=True):
        np.testing.assert_allclose(got, s + w, rtol=0, atol=1e-6)
    assert any("mallory claims 1000000000 examples; counted as 50" in w for w in warnings(caplog))


def test_a_reply_without_its_count_makes_the_round_equally_weighted(caplog):
    """A node that keeps its record count (privacy.reveal-count off) weighs 1, and so does
    every update of that round: weighted by the others' counts it would hardly count."""
    caplog.set_level(logging.INFO)
    quiet = one(lambda m: with_records(m, metrics=MetricRecord({"train-loss": 0.5})))
    start, records, final = run({c: honest(c) for c in HONEST} | {HOSTILE: quiet})
    assert (records[0].clients, records[0].refused) == (4, 0)
    want = exact_mean(1, dict.fromkeys([*HONEST, HOSTILE], 1))
    for got, s, w in zip(final, start, want, strict=True):
        np.testing.assert_allclose(got, s + w, rtol=0, atol=1e-6)
    assert any("equal weights (mallory kept their record count)" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_when_every_reply_is_hostile_the_model_is_kept_and_the_next_round_runs(caplog):
    bad = {c: case.answer for c, case in zip(NAMES, CASES[:4], strict=False)}
    start, records, final = run(bad, rounds=2)
    assert [(r.clients, r.refused) for r in records] == [(0, 4), (0, 4)]
    for got, s in zip(final, start, strict=True):
        np.testing.assert_array_equal(got, s)
