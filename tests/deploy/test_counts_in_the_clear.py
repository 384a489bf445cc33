"""What leaves a node about its record count (#13.6), through the real ClientApp.

The count n of a node's records is derived from its records: in the clear it tells the
server (and anyone reading its logs) how many patients or customers a member holds. It
also hides in the DP-SGD figures: sample_rate = batch / n, steps = epochs x ceil(n /
batch), and the noise multiplier calibrated for them. Under secure aggregation none of it
leaves a node in the clear; in a plain round the node's policy ``privacy.reveal-count``
decides (off by default: weight 1, no count-revealing receipt field).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from deploy.test_secure_round import (  # the same federation, grid and fixtures
    NODES,
    TIMEOUT,
    Federation,
    fed,
    identity,
)
from flwr.app import Message, RecordDict

from fedguard.client.node import node_runtime
from fedguard.fl.loop import ClientUpdate
from fedguard.privacy.secagg import quantization_step
from fedguard.transport import decode_receipt
from fedguard.transport.grid import exchange_round
from fedguard.transport.messages import encode_train, receipt_payload

__all__ = ["fed", "identity"]  # fixtures, imported for pytest

COUNT_KEYS = {"num-examples", "steps", "sample-rate", "noise-multiplier"}


def _count(fed: Federation, cid: int) -> int:
    return int(node_runtime(str(fed.layout.nodes[cid])).x.shape[0])


def _set_policy(fed: Federation, cid: int, *, required: bool, reveal: bool | None) -> None:
    toml = fed.layout.nodes[cid]
    text = toml.read_text().replace(
        "required = true", "required = true" if required else "required = false"
    )
    if reveal is not None:
        text = text.replace("[privacy]\n", f"[privacy]\nreveal-count = {str(reveal).lower()}\n")
    toml.write_text(text)
    node_runtime.cache_clear()


def _record_replies(fed: Federation, stage: str) -> dict[int, Message]:
    got: dict[int, Message] = {}

    def record(node: int):
        def keep(reply: Message, request: Message) -> Message:
            got[node] = reply
            return reply

        return keep

    for node in fed.node_of.values():
        fed.grid.tamper[stage, node] = record(node)
    return got


def _leaks(fed: Federation, cid: int, reply: Message) -> list[str]:
    """What in ``reply`` gives the node's record count away (empty: nothing)."""
    n = _count(fed, cid)
    out = []
    metrics = reply.content.metric_records.get("metrics", {})
    out += [f"metric {k}={metrics[k]}" for k in sorted(COUNT_KEYS & set(metrics))]
    payload = receipt_payload(reply.content)
    assert payload is not None
    receipt = decode_receipt(payload)
    out += [
        f"receipt {k}={getattr(receipt, k)}"
        for k in ("sample_rate", "noise_multiplier", "steps")
        if getattr(receipt, k) is not None
    ]
    assert n > 64  # batch 64: the count is more than one batch, so the figures move with n
    return out


def test_describe_sends_no_record_count(fed: Federation):
    node = fed.node_of[0]
    msg = Message(RecordDict(), dst_node_id=node, message_type="query.describe")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    record = fed.grid.deliver(msg).content.config_records["node"]
    assert record["name"] == fed.names[0]
    assert "num-examples" not in record, dict(record)


def test_a_secure_round_sends_no_count_in_the_clear_whatever_the_policy(fed: Federation):
    _set_policy(fed, 0, required=True, reveal=True)  # even a node that would reveal it
    replies = _record_replies(fed, "train")
    rnd = fed.round(1, fed.initial_weights())
    assert len(rnd.means) == 1 and len(replies) == NODES
    cid_of = {n: c for c, n in fed.node_of.items()}
    for node, reply in replies.items():
        assert _leaks(fed, cid_of[node], reply) == []
    for r in rnd.receipts:  # the server still gets every node's epsilon
        assert r.epsilon is not None and r.epsilon > 0


def _plain(fed: Federation, cohort: list[int], **kwargs) -> list[ClientUpdate]:
    weights = fed.initial_weights()
    request = dataclasses.replace(fed.request(1), run_id="demo/plain")
    out = exchange_round(
        grid=fed.grid,
        server_round=1,
        cohort=fed.participants().cohort(cohort),
        content=encode_train(weights=weights, request=request),
        timeout=TIMEOUT,
        receipt_run=request.run_key,
        expect=weights,
        **kwargs,
    )
    return [u for u in out if isinstance(u, ClientUpdate)]


def test_a_plain_round_sends_the_count_only_when_the_node_policy_allows(fed: Federation):
    for cid in range(NODES):
        _set_policy(fed, cid, required=False, reveal=None if cid < 2 else True)
    replies = _record_replies(fed, "train")
    updates = _plain(fed, list(range(NODES)), weight_cap=10**6)
    assert len(updates) == NODES
    cid_of = {n: c for c, n in fed.node_of.items()}
    for node, reply in replies.items():
        cid = cid_of[node]
        leaks = _leaks(fed, cid, reply)
        if cid < 2:  # reveal-count unset: off by default
            assert leaks == [], leaks
        else:
            assert f"metric num-examples={_count(fed, cid)}" in leaks
    # A round in which a node withheld its count is averaged with equal weights:
    # weighting the others by their counts would leave it almost no weight.
    assert {u.num_examples for u in updates} == {1}


def test_counts_revealed_in_a_plain_round_are_capped_at_the_public_weight_cap(fed: Federation):
    for cid in range(NODES):
        _set_policy(fed, cid, required=False, reveal=True)
    counts = {c: _count(fed, c) for c in range(NODES)}
    cap = sorted(counts.values())[1]  # below the two largest
    updates = _plain(fed, list(range(NODES)), weight_cap=cap)
    assert {u.client_id: u.num_examples for u in updates} == {
        c: min(n, cap) for c, n in counts.items()
    }


def test_a_weighted_secure_sum_weighs_revealing_nodes_by_their_capped_count(fed: Federation):
    """The count may travel inside the masked vector (only the cohort's total is seen),
    with the node's consent and capped at the federation's public weight-cap."""
    for cid in range(NODES):
        _set_policy(fed, cid, required=True, reveal=cid != 3)  # node-d keeps its count
    counts = {c: _count(fed, c) for c in range(NODES)}
    cap = sorted(counts.values())[1]
    rnd = fed.round(1, fed.initial_weights(), weight_cap=cap)
    weight = {c: (min(counts[c], cap) if c != 3 else 1) for c in range(NODES)}
    got = np.concatenate([m.ravel() for m in rnd.means[0].mean_update]).astype(np.float64)
    clip = rnd.params.clip_range
    clipped = {c: np.clip(fed.trained_delta(c, rnd), -clip, clip) for c in range(NODES)}
    want = sum(weight[c] * clipped[c] for c in range(NODES)) / sum(weight.values())
    bound = quantization_step(clip_range=clip, bits=rnd.params.bits) + clip * 2.0**-22
    assert float(np.max(np.abs(got - want))) <= bound


def test_the_node_config_refuses_a_reveal_count_that_is_not_a_boolean(fed: Federation):
    from fedguard.deploy_config import load_node_config
    from fedguard.errors import ConfigError

    toml: Path = fed.layout.nodes[0]
    toml.write_text(toml.read_text().replace("[privacy]\n", '[privacy]\nreveal-count = "yes"\n'))
    with pytest.raises(ConfigError, match=r"privacy\.reveal-count.*true or false.*yes"):
        load_node_config(toml)
