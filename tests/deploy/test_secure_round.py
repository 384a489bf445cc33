"""A deployed SecAgg+ round end to end, in one process and without Flower's processes.

The ServerApp's :func:`secure_round` drives the real ClientApp of four test nodes (their
real ``node.toml``, data partitions, DP policy, ``[secagg]`` policy and state folders,
written by the test harness's ``write_federation``) through :class:`LoopbackGrid`: a Grid
whose transport is a protobuf round trip of each Flower message and a direct call of the
ClientApp. The grid
can lose, garble or rewrite a node's reply at a given stage (a hostile node), replay a
request, and let a test look at the node's state folder between stages; the protocol code
on both sides is the real one.

(Over the 400-line guide: every case shares the loopback grid and the federation fixture.)
"""

from __future__ import annotations

import dataclasses
import logging
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from harness.federation_files import EPSILON, FederationFiles, write_federation

from fedguard.client.app import NODE_CONFIG_KEY
from fedguard.client.app import app as client_app
from fedguard.client.node import _round_key, node_runtime
from fedguard.deploy_config import FederationConfig, load_federation_config
from fedguard.files import (
    LAST_REPLY_FILE,
    LEDGER_FILE,
    RELEASED_FILE,
    SESSION_FILE,
    SIGNED_FILE,
    UPDATE_FILE,
)
from fedguard.fl.loop import ClientUpdate, Refusal, SecureMean, TrainRequest
from fedguard.fl.participants import Participants
from fedguard.privacy.secagg import (
    ConsistencyReply,
    ConsistencyRequest,
    MaskedInputReply,
    MaskedInputRequest,
    SecAggParams,
    ShareKeysRequest,
    UnmaskRequest,
    make_params,
    quantization_step,
)
from fedguard.server.secure_round import SECAGG_MESSAGE_TYPE, secure_round
from fedguard.task import build_model, get_weights
from fedguard.transport import decode_secagg
from fedguard.transport.grid import describe_nodes
from fedguard.transport.messages import (
    ERROR_BUDGET_REFUSED,
    encode_train,
    secagg_payload,
    secagg_record,
)
from fedguard.transport.poll import send_and_receive
from fedguard.transport.serde import encode_secagg

NODES = 4
ROUNDS = 3
TIMEOUT = 0.3  # the grid answers during the push: only lost replies are waited for

# ---------------------------------------------------------------- the transport

_STAGE_OF_REQUEST = {
    ShareKeysRequest: "share-keys",
    MaskedInputRequest: "masked-input",
    ConsistencyRequest: "consistency",
    UnmaskRequest: "unmask",
}


def stage_of(message: Message) -> str:
    """``train``, ``share-keys``, ``masked-input``, ``consistency``, ``unmask`` or the
    message type."""
    kind = message.metadata.message_type
    if kind == SECAGG_MESSAGE_TYPE:
        payload = secagg_payload(message.content)
        assert payload is not None
        request = decode_secagg(payload, expect=tuple(_STAGE_OF_REQUEST))
        return _STAGE_OF_REQUEST[type(request)]
    return kind


def over_the_wire(message: Message) -> Message:
    """What the other end receives: the message serialised and parsed as Flower does."""
    wire = message_to_proto(message).SerializeToString()
    return message_from_proto(ProtoMessage.FromString(wire))


def garbled(reply: Message, request: Message) -> Message:
    """The reply with every byte of its secagg payload flipped."""
    payload = secagg_payload(reply.content)
    assert payload is not None, "only a secagg reply can be garbled"
    return Message(secagg_record(bytes(b ^ 0xFF for b in payload)), reply_to=request)


Watcher = Callable[[str, int, str], None]  # (stage, node id, "before" | "after")


class LoopbackGrid(Grid):
    """Flower's transport as the ServerApp sees it, delivering to the real ClientApp.

    Each pushed message gets its id (as HttpGrid assigns it), crosses the wire to the
    node's ClientApp (with the node's ``fedguard-node-config`` in its Context), and the
    reply crosses back, ready for the next pull, unless it is lost or garbled on the way.
    """

    def __init__(self, nodes: Mapping[int, Path]) -> None:
        self.nodes = dict(nodes)  # node id -> node.toml
        self.lose: set[tuple[str, int]] = set()  # (stage, node id): the reply never arrives
        self.garble: set[tuple[str, int]] = set()  # (stage, node id): payload bytes flipped
        self.replay: set[tuple[str, int]] = set()  # (stage, node id): delivered twice
        # (stage, node id) -> rewrite(reply, request): what a hostile node sends instead
        self.tamper: dict[tuple[str, int], Callable[[Message, Message], Message]] = {}
        self.watchers: list[Watcher] = []
        self.sent: list[tuple[str, Message]] = []  # every request pushed, with its stage
        self.replayed: dict[tuple[str, int], Message] = {}  # the node's answer to a replay
        self._replies: dict[str, Message] = {}

    def set_run(self, run_id: int) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id)  # fmt: skip

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = msg.object_id
            assert mid not in self._replies
            msg.metadata.__dict__["_message_id"] = mid  # as HttpGrid does
            ids.append(mid)
            stage, node = stage_of(msg), msg.metadata.dst_node_id
            self.sent.append((stage, msg))
            self._watch(stage, node, "before")
            reply = self.deliver(msg)
            self._watch(stage, node, "after")
            if (stage, node) in self.replay:
                self.replayed[stage, node] = self.deliver(msg)
            if (stage, node) in self.lose:
                continue
            if (stage, node) in self.garble:
                reply = garbled(reply, msg)
            if (stage, node) in self.tamper:
                reply = self.tamper[stage, node](reply, msg)
            self._replies[mid] = over_the_wire(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in list(message_ids) if m in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("fedguard must not call Flower's send_and_receive")

    def deliver(self, msg: Message) -> Message:
        """Run the node's ClientApp on the message as it arrives there; its reply."""
        node = msg.metadata.dst_node_id
        context = Context(
            run_id=msg.metadata.run_id,
            node_id=node,
            node_config={NODE_CONFIG_KEY: str(self.nodes[node])},
            state=RecordDict(),
            run_config={},
        )
        return client_app(over_the_wire(msg), context)

    def _watch(self, stage: str, node: int, when: str) -> None:
        for watcher in self.watchers:
            watcher(stage, node, when)


@pytest.fixture
def identity(monkeypatch):
    """The ServerApp's task identity (Flower sets it in the ServerApp process)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


# ---------------------------------------------------------------- the federation


@dataclass
class Round:
    request: TrainRequest
    weights: list[np.ndarray]  # the global weights sent
    receipts: list[ClientUpdate]
    refusals: list[Refusal]
    means: list[SecureMean]
    params: SecAggParams


@dataclass
class Federation:
    layout: FederationFiles
    cfg: FederationConfig
    grid: LoopbackGrid
    node_of: dict[int, int]  # client id -> node id
    names: dict[int, str]
    said: list[str] = field(default_factory=list)

    def state(self, cid: int) -> Path:
        return self.layout.nodes[cid].parent / "state"

    def accountant(self, cid: int) -> str:
        """The name of the node's accountant file in its state folder."""
        store = node_runtime(str(self.layout.nodes[cid])).accountant_store()
        assert store.path.parent == self.state(cid)
        return store.path.name

    def cid(self, name: str) -> int:
        return next(c for c, n in self.names.items() if n == name)

    def participants(self) -> Participants:
        return Participants.enrolled([(self.names[c], self.node_of[c], {}) for c in self.node_of])

    def initial_weights(self) -> list[np.ndarray]:
        t = self.cfg.task
        model = build_model(name=t.model, input_shape=t.input_shape, num_classes=t.num_classes)
        return get_weights(model)

    def request(self, server_round: int) -> TrainRequest:
        tr = self.cfg.training
        return TrainRequest(
            server_round=server_round,
            local_epochs=tr.local_epochs,
            batch_size=tr.batch_size,
            lr=tr.lr,
            momentum=tr.momentum,
            max_grad_norm=tr.max_grad_norm,
            total_rounds=self.cfg.federation.rounds,
            federation=self.cfg.federation.name,
            model=self.cfg.task.model,
        )

    def round(
        self,
        server_round: int,
        weights: list[np.ndarray],
        *,
        cohort: list[int] | None = None,
        clip_range: float | None = None,
        client_dp: tuple[float, float, int | None] | None = None,
        weight_cap: int | None = None,
    ) -> Round:
        """One secure round as the deployed ServerApp runs it (server/deploy_app.py)."""
        cohort = sorted(self.node_of) if cohort is None else cohort
        sa = self.cfg.secagg
        clip = sa.clip_range if clip_range is None else clip_range
        request = self.request(server_round)
        params = make_params(
            run=self.cfg.federation.name,
            server_round=server_round,
            cohort=len(cohort),
            clip_range=clip,
            bits=sa.bits,
            # A public constant ([federation] weight-cap), never learnt from the nodes.
            weight_cap=1 if client_dp else weight_cap or self.cfg.federation.weight_cap,
            dropout_tolerance=sa.dropout_tolerance,
            graph_seed=self.cfg.federation.seed,
        )
        if client_dp is not None:  # (clip, noise multiplier, min contributors or threshold)
            clip_norm, noise, least = client_dp
            request = dataclasses.replace(
                request,
                client_clip=clip_norm,
                client_noise=noise,
                client_min_contributors=params.threshold if least is None else least,
            )
        out = list(
            secure_round(
                grid=self.grid,
                params=params,
                cohort=self.participants().cohort(cohort),
                train_content=lambda setup: encode_train(
                    weights=weights, request=request, secagg=setup
                ),
                shapes=[w.shape for w in weights],
                timeout=TIMEOUT,
                say=self.said.append,
                receipt_run=request.run_key,
            )
        )
        # The mean, when there is one, comes last, after every node's receipt.
        assert not any(isinstance(x, SecureMean) for x in out[:-1])
        return Round(
            request=request,
            weights=weights,
            receipts=[x for x in out if isinstance(x, ClientUpdate)],
            refusals=[x for x in out if isinstance(x, Refusal)],
            means=[x for x in out if isinstance(x, SecureMean)],
            params=params,
        )

    def trained_delta(self, cid: int, rnd: Round) -> np.ndarray:
        """The node's own update of ``rnd`` (float64, flat), from its replay cache."""
        runtime = node_runtime(str(self.layout.nodes[cid]))
        result = runtime._replay(_round_key(rnd.request, rnd.weights))
        assert result is not None, f"{self.names[cid]} kept no reply for this very round"
        return np.concatenate(
            [
                (np.asarray(w, np.float64) - np.asarray(g, np.float64)).ravel()
                for w, g in zip(result.weights, rnd.weights, strict=True)
            ]
        )

    def check_mean(self, rnd: Round, survivors: list[int]) -> None:
        """The secure mean is the example-weighted mean of the survivors' clipped updates,
        within one quantisation step (plus float32 rounding of the mean)."""
        assert len(rnd.means) == 1
        mean = rnd.means[0]
        assert mean.count == len(survivors)
        assert [m.shape for m in mean.mean_update] == [w.shape for w in rnd.weights]
        got = np.concatenate([m.ravel() for m in mean.mean_update]).astype(np.float64)
        clip = rnd.params.clip_range
        clipped = {c: np.clip(self.trained_delta(c, rnd), -clip, clip) for c in survivors}
        # Equal weights: the nodes keep their record counts (privacy.reveal-count off).
        weight = dict.fromkeys(survivors, 1)
        want = sum(weight[c] * clipped[c] for c in survivors) / sum(weight[c] for c in survivors)
        # One step for the stochastic rounding; float32 rounding (of each node's delta and
        # of the mean) stays below clip * 2**-23.
        bound = quantization_step(clip_range=clip, bits=rnd.params.bits) + clip * 2.0**-22
        err = float(np.max(np.abs(got - want)))
        assert err <= bound, f"secure mean off by {err:.3g} > {bound:.3g}"
        # Not vacuous: the updates differ, so the mean is none of them.
        for c in survivors:
            assert np.max(np.abs(clipped[c] - want)) > 10 * bound


@pytest.fixture
def fed(tmp_path: Path, identity) -> Federation:
    layout = write_federation(out=tmp_path / "fed", nodes=NODES, rounds=ROUNDS)
    cfg = load_federation_config(layout.federation)
    node_ids = {cid: 0x5EC0000 + 17 * cid for cid in range(NODES)}
    grid = LoopbackGrid({node_ids[cid]: toml for cid, toml in enumerate(layout.nodes)})
    info = describe_nodes(grid, list(node_ids.values()), timeout=TIMEOUT)
    names = {cid: str(info[n]["name"]) for cid, n in node_ids.items()}
    assert names == {cid: toml.parent.name for cid, toml in enumerate(layout.nodes)}
    grid.sent.clear()
    return Federation(layout=layout, cfg=cfg, grid=grid, node_of=node_ids, names=names)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    # The node's event log grows with every request, refused ones too (#17.2).
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != "node-events.log"
    }


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "fedguard.server.secure_round" and r.levelno == logging.WARNING
    ]


# ---------------------------------------------------------------- the cases


def test_four_nodes_nobody_drops_mean_matches_weighted_mean(fed: Federation):
    rnd = fed.round(1, fed.initial_weights())
    assert rnd.refusals == []
    assert sorted(r.client_id for r in rnd.receipts) == list(range(NODES))
    for r in rnd.receipts:
        assert r.weights is None  # no update reached the server in the clear
        assert r.num_examples == 0  # no record count in the clear
        assert r.epsilon is not None and 0 < r.epsilon <= EPSILON
    assert rnd.means[0].dropped == 0
    fed.check_mean(rnd, survivors=list(range(NODES)))
    assert not any("aborted" in s or "recovered" in s for s in fed.said)


def test_one_node_lost_at_masked_input_is_recovered(fed: Federation, caplog):
    # A tighter clipping range than the demo's, so that clipping is exercised too.
    lost = fed.cid("node-c")
    fed.grid.lose.add(("masked-input", fed.node_of[lost]))
    rnd = fed.round(1, fed.initial_weights(), clip_range=0.02)
    # The premise: 4 nodes, each neighbouring all others, any 3 holders reconstruct.
    assert (rnd.params.degree, rnd.params.threshold) == (3, 3)
    assert sorted(r.client_id for r in rnd.receipts) == list(range(NODES))  # all trained
    assert rnd.refusals == []
    assert (rnd.means[0].count, rnd.means[0].dropped) == (3, 1)
    survivors = [c for c in range(NODES) if c != lost]
    assert any(np.any(np.abs(fed.trained_delta(c, rnd)) > 0.02) for c in survivors)
    fed.check_mean(rnd, survivors=survivors)
    [line] = [s for s in fed.said if "recovered from dropped nodes" in s]
    assert line.endswith(": node-c")
    assert any("node-c dropped" in w for w in _warnings(caplog))


def test_too_many_lost_aborts_the_round_and_the_next_round_proceeds(fed: Federation):
    weights = fed.initial_weights()
    lost = {fed.node_of[fed.cid("node-b")], fed.node_of[fed.cid("node-d")]}
    fed.grid.lose.update(("masked-input", n) for n in lost)
    first = fed.round(1, weights)
    assert len(first.receipts) == NODES  # they trained and spent epsilon: receipts stand
    assert first.means == []  # nothing aggregated
    [line] = [s for s in fed.said if "aborted" in s]
    assert line.startswith("round 1: ") and "nothing aggregated" in line
    unmasks = [m for stage, m in fed.grid.sent if stage == "unmask"]
    assert unmasks == []  # aborted before any node was asked to reveal a share

    fed.grid.lose.clear()
    fed.said.clear()
    second = fed.round(2, weights)  # nothing aggregated: the same global weights
    assert (second.means[0].count, second.means[0].dropped) == (NODES, 0)
    fed.check_mean(second, survivors=list(range(NODES)))
    assert not any("aborted" in s for s in fed.said)
    for cid in range(NODES):
        epsilons = [r.epsilon for r in (*first.receipts, *second.receipts) if r.client_id == cid]
        assert epsilons[0] < epsilons[1]  # the aborted round was spent all the same


def test_garbled_share_keys_reply_counts_as_dropped(fed: Federation, caplog):
    bad = fed.cid("node-b")
    fed.grid.garble.add(("share-keys", fed.node_of[bad]))
    rnd = fed.round(1, fed.initial_weights())
    warnings = [w for w in _warnings(caplog) if "node-b" in w]
    assert warnings and "malformed reply" in warnings[0]
    # node-b never shared keys, so it is out of the round, not a dropout to recover from.
    assert (rnd.means[0].count, rnd.means[0].dropped) == (3, 0)
    fed.check_mean(rnd, survivors=[c for c in range(NODES) if c != bad])
    asked = {m.metadata.dst_node_id for stage, m in fed.grid.sent if stage == "masked-input"}
    assert fed.node_of[bad] not in asked


def test_train_without_secagg_is_refused_by_a_node_that_requires_it(fed: Federation):
    weights = fed.initial_weights()
    fed.round(1, weights)  # the nodes have a ledger and an accountant to protect
    cid = fed.cid("node-a")
    before = _snapshot(fed.state(cid))
    assert LEDGER_FILE in before and fed.accountant(cid) in before
    content = encode_train(weights=weights, request=fed.request(2))
    msg = Message(content, dst_node_id=fed.node_of[cid], message_type=MessageType.TRAIN,
                  group_id="2")  # fmt: skip
    [reply] = send_and_receive(fed.grid, [msg], timeout=TIMEOUT)
    assert reply.has_error() and not reply.has_content()
    assert reply.error.code == ERROR_BUDGET_REFUSED
    assert "secagg.required" in reply.error.reason
    assert _snapshot(fed.state(cid)) == before  # nothing trained, nothing spent


def test_cohort_below_min_neighbours_is_refused_before_training(fed: Federation):
    cohort = [fed.cid("node-a"), fed.cid("node-b")]
    before = {cid: _snapshot(fed.state(cid)) for cid in cohort}
    rnd = fed.round(1, fed.initial_weights(), cohort=cohort)
    assert rnd.receipts == [] and rnd.means == []
    assert sorted(r.client_id for r in rnd.refusals) == cohort
    for r in rnd.refusals:
        assert "a cohort of 2 is below this node's secagg.min-neighbours 2" in r.reason
    assert any("aborted" in s for s in fed.said)
    assert {stage for stage, _ in fed.grid.sent} == {"train"}  # no key was ever shared
    for cid in cohort:
        after = _snapshot(fed.state(cid))
        assert after == before[cid]  # nothing trained, nothing spent, no session begun
        assert not {LEDGER_FILE, fed.accountant(cid), LAST_REPLY_FILE} & after.keys()


def test_round_secrets_are_0600_at_rest_gone_after_and_unmask_is_answered_once(
    fed: Federation,
):
    cid_of = {n: c for c, n in fed.node_of.items()}
    seen: set[tuple[str, str]] = set()

    def at_rest(stage: str, node: int, when: str) -> None:
        state = fed.state(cid_of[node])
        session, update = state / SESSION_FILE, state / UPDATE_FILE
        if (stage, when) == ("train", "before"):
            assert not session.exists() and not update.exists()
        elif when == "before" or (stage, when) == ("share-keys", "after"):
            # Between stages the node's secrets wait in its state folder, owner-only.
            assert _mode(state) == 0o700
            assert _mode(session) == 0o600
            masked = stage in ("consistency", "unmask")
            assert (_mode(update) == 0o600) if not masked else not update.exists()
        elif stage in ("masked-input", "consistency"):  # sent: the update is not needed
            assert _mode(session) == 0o600 and not update.exists()
        elif stage == "unmask":  # the last stage answered: no secret is left
            assert not session.exists() and not update.exists()
        if (stage, when) != ("train", "before"):
            assert _mode(state / RELEASED_FILE) == 0o600
        seen.add((stage, when))

    fed.grid.watchers.append(at_rest)
    twice = fed.node_of[fed.cid("node-c")]
    fed.grid.replay.add(("unmask", twice))  # the grid delivers node-c's unmask twice
    rnd = fed.round(1, fed.initial_weights())
    assert (rnd.means[0].count, rnd.means[0].dropped) == (NODES, 0)
    stages = ("train", "share-keys", "masked-input", "consistency", "unmask")
    assert seen == {(s, w) for s in stages for w in ("before", "after")}
    for cid in range(NODES):
        left = _snapshot(fed.state(cid))
        # Only the journal of what was sent (public keys, sealed and revealed shares,
        # the masked input): no private key, seed or update.
        kept = sorted(n for n in left if n.startswith("secagg"))
        assert kept == [RELEASED_FILE, SIGNED_FILE], sorted(left)  # what it sent and signed

    # The same unmask request again: the very same reply bytes, nothing new revealed.
    again = fed.grid.replayed["unmask", twice]
    assert again.has_content() and not again.has_error()
    [first] = [m for s, m in fed.grid.sent if s == "unmask" and m.metadata.dst_node_id == twice]
    payload = secagg_payload(first.content)
    assert payload is not None
    fed.grid.watchers.clear()
    msg = Message(secagg_record(payload), dst_node_id=twice, message_type=SECAGG_MESSAGE_TYPE,
                  group_id="1")  # fmt: skip
    [reply] = send_and_receive(fed.grid, [msg], timeout=TIMEOUT)
    assert secagg_payload(reply.content) == secagg_payload(again.content)
    # Another unmask question (a survivor now called dropped) is refused: answering it
    # could reveal both kinds of share of one neighbour.
    asked = decode_secagg(payload, expect=UnmaskRequest)
    assert isinstance(asked, UnmaskRequest) and asked.survivors
    other = UnmaskRequest(survivors=asked.survivors[1:], signatures=asked.signatures)
    msg = Message(secagg_record(encode_secagg(other)), dst_node_id=twice,
                  message_type=SECAGG_MESSAGE_TYPE, group_id="1")  # fmt: skip
    [reply] = send_and_receive(fed.grid, [msg], timeout=TIMEOUT)
    assert reply.has_error() and not reply.has_content()
    assert "already answered for another request" in reply.error.reason


def test_client_level_dp_noise_shares_sum_to_the_mechanisms_noise(fed: Federation):
    clip_norm, noise = 0.05, 1.0
    rnd = fed.round(1, fed.initial_weights(), client_dp=(clip_norm, noise, None))
    assert len(rnd.means) == 1 and rnd.means[0].count == 4
    got = np.concatenate([m.ravel() for m in rnd.means[0].mean_update]).astype(np.float64)
    # Equal weights; each node clipped its update to clip_norm and added N(0, (z C)^2 / (t-1)):
    # sized so that the sum minus any one node's own share still carries z C (#14.3).
    clipped = []
    for c in sorted(fed.node_of):
        d = fed.trained_delta(c, rnd)
        clipped.append(d * min(1.0, clip_norm / np.linalg.norm(d)))
    noise_in_mean = got - np.mean(clipped, axis=0)
    t = rnd.params.threshold
    want = noise * clip_norm * np.sqrt(4 / (t - 1)) / 4
    assert np.std(noise_in_mean) == pytest.approx(want, rel=0.15)


def test_a_node_refuses_client_dp_shares_sized_for_more_contributors_than_guaranteed(
    fed: Federation,
):
    rnd = fed.round(1, fed.initial_weights(), client_dp=(0.05, 1.0, 4))
    # t = 3 of 4 (one may drop): shares sized for 4 would leave a 3-node sum under-noised.
    assert rnd.params.threshold == 3 and not rnd.means
    assert len(rnd.refusals) == 4
    assert all("guarantees 3" in r.reason for r in rnd.refusals)


# ---------------------------------------------------------------- hostile nodes


def _masked(rewrite: Callable[[MaskedInputReply], MaskedInputReply]):
    """A tamper: the node's real masked input, rewritten before it is sent."""

    def tamper(reply: Message, request: Message) -> Message:
        payload = secagg_payload(reply.content)
        assert payload is not None
        real = decode_secagg(payload, expect=MaskedInputReply)
        assert isinstance(real, MaskedInputReply)
        return Message(secagg_record(encode_secagg(rewrite(real))), reply_to=request)

    return tamper


def _other_ring(m: MaskedInputReply) -> MaskedInputReply:
    other = np.uint32 if m.masked.dtype == np.uint64 else np.uint64
    return MaskedInputReply(slot=m.slot, masked=m.masked.astype(other))


@pytest.mark.parametrize(
    ("rewrite", "reason"),
    [
        # node-a is slot 1, whose input reaches the server first.
        (lambda m: MaskedInputReply(slot=m.slot, masked=m.masked[:-1]), "values, not"),
        (_other_ring, "not ring integers"),
        (lambda m: MaskedInputReply(slot=m.slot + 1, masked=m.masked), "names slot 2, not 1"),
    ],
    ids=["one-value-short", "other-ring", "other-slot"],
)
def test_a_malformed_masked_input_is_rejected_and_the_others_are_summed(
    fed: Federation, caplog, rewrite, reason
):
    bad = fed.cid("node-a")
    fed.grid.tamper["masked-input", fed.node_of[bad]] = _masked(rewrite)
    rnd = fed.round(1, fed.initial_weights())
    # Keys shared, input refused: a dropout, whose masks its neighbours' shares remove.
    assert (rnd.means[0].count, rnd.means[0].dropped) == (3, 1)
    fed.check_mean(rnd, survivors=[c for c in range(NODES) if c != bad])
    assert any(w.startswith("round 1: node-a ") and reason in w for w in _warnings(caplog))


def test_a_node_can_shift_the_sum_unseen_but_not_outside_the_encodable_range(fed: Federation):
    """What a hostile node can do under secure aggregation: add any ring value to its
    masked input. The server cannot see it while the sum stays encodable (this is the
    poisoning README describes); a sum no honest cohort can produce aborts the round."""
    weights = fed.initial_weights()
    node = fed.node_of[fed.cid("node-b")]

    def shifted(m: MaskedInputReply) -> MaskedInputReply:
        masked = m.masked.copy()
        masked[0] += masked.dtype.type(1000)  # one coordinate's level sum
        return MaskedInputReply(slot=m.slot, masked=masked)

    fed.grid.tamper["masked-input", node] = _masked(shifted)
    first = fed.round(1, weights)
    assert (first.means[0].count, first.means[0].dropped) == (NODES, 0)  # accepted
    got = first.means[0].mean_update[0].ravel()[0]
    clip, bits = first.params.clip_range, first.params.bits
    weight = dict.fromkeys(range(NODES), 1)  # equal weights (no node reveals its count)
    total_weight = sum(weight.values())
    shift = 1000 * quantization_step(clip_range=clip, bits=bits) / total_weight
    delta = {c: np.clip(fed.trained_delta(c, first)[0], -clip, clip) for c in range(NODES)}
    honest = sum(weight[c] * delta[c] for c in range(NODES)) / total_weight
    step = quantization_step(clip_range=clip, bits=bits)
    assert abs(got - (honest + shift)) <= step + clip * 2.0**-22

    def heavy(m: MaskedInputReply) -> MaskedInputReply:
        masked = m.masked.copy()
        masked[-1] += masked.dtype.type(1 << 30)  # the weight: no cohort weighs that much
        return MaskedInputReply(slot=m.slot, masked=masked)

    fed.grid.tamper["masked-input", node] = _masked(heavy)
    fed.said.clear()
    second = fed.round(2, weights)
    assert second.means == []  # nothing aggregated, and the server goes on
    [line] = [s for s in fed.said if "nothing aggregated" in s]
    assert line.startswith("round 2: secure sum: expected a total weight in [4, ")

    del fed.grid.tamper["masked-input", node]
    third = fed.round(3, weights)
    fed.check_mean(third, survivors=list(range(NODES)))


def test_a_train_reply_without_its_privacy_receipt_is_refused(fed: Federation):
    bad = fed.cid("node-d")

    def no_receipt(reply: Message, request: Message) -> Message:
        content = reply.content
        del content["receipt"]
        return Message(content, reply_to=request)

    fed.grid.tamper["train", fed.node_of[bad]] = no_receipt
    rnd = fed.round(1, fed.initial_weights())
    [refusal] = rnd.refusals
    assert refusal.client_id == bad
    assert refusal.reason.startswith("node-d: malformed reply: expected a privacy receipt")
    # It never got its neighbours' keys: out of the round, not a dropout to recover.
    assert (rnd.means[0].count, rnd.means[0].dropped) == (3, 0)
    fed.check_mean(rnd, survivors=[c for c in range(NODES) if c != bad])


def test_a_node_signs_one_survivor_set_per_session_even_across_processes(fed: Federation):
    """A hostile server asks a deployed node (a fresh process per message, state on disk)
    to sign a second survivor set after the first: the node refuses; the same request
    gets the very same signature bytes back."""
    rnd = fed.round(1, fed.initial_weights())
    assert rnd.means and rnd.means[0].count == NODES
    node = fed.node_of[fed.cid("node-b")]
    [first] = [m for s, m in fed.grid.sent if s == "consistency" and m.metadata.dst_node_id == node]
    payload = secagg_payload(first.content)
    assert payload is not None
    asked = decode_secagg(payload, expect=ConsistencyRequest)
    assert isinstance(asked, ConsistencyRequest) and len(asked.survivors) == NODES

    def ask(request_bytes: bytes) -> Message:
        msg = Message(secagg_record(request_bytes), dst_node_id=node,
                      message_type=SECAGG_MESSAGE_TYPE, group_id="1")  # fmt: skip
        [reply] = send_and_receive(fed.grid, [msg], timeout=TIMEOUT)
        return reply

    again = ask(payload)
    assert again.has_content() and not again.has_error()
    signed = decode_secagg(secagg_payload(again.content) or b"", expect=ConsistencyReply)
    assert isinstance(signed, ConsistencyReply) and signed.slot == fed.cid("node-b") + 1
    # The second list: one survivor now said to have dropped.
    other = ConsistencyRequest(survivors=asked.survivors[:-1])
    refused = ask(encode_secagg(other))
    assert refused.has_error() and not refused.has_content()
    assert "already answered for another request" in refused.error.reason
