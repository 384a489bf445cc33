"""A re-asked secure round (#14.1): one trained update goes into at most one secure sum.

The documented resume path: the server unmasks round r's sum, crashes before its
checkpoint, restarts and asks round r again. If one node is slow to reconnect the cohort
changes, and a node that replayed its stored update into the new session would hand the
server two sums that differ by exactly that node's update (S1 - S2). These cases drive the
real ClientApp and the real server side of the protocol through the loopback grid of
``test_secure_round`` (real node.toml, data, ledger, state folders, crypto).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from deploy.test_secure_round import (  # the same federation, grid and fixtures
    NODES,
    Federation,
    Round,
    _snapshot,
    fed,
    identity,
)
from flwr.app import Message

import fedguard.server.secure_round as server_side
from fedguard.client.node import node_runtime
from fedguard.files import LEDGER_FILE, UPDATE_FILE
from fedguard.transport.messages import secagg_payload

__all__ = ["fed", "identity"]  # fixtures, imported for pytest


@pytest.fixture
def total_weights(monkeypatch) -> list[int]:
    """The total weight of every sum the server unmasks (the server sees it in the sum)."""
    seen: list[int] = []
    real = server_side.dequantize_mean

    def spy(total, **kwargs):
        out = real(total, **kwargs)
        seen.append(out[1])
        return out

    monkeypatch.setattr(server_side, "dequantize_mean", spy)
    return seen


def _flat(rnd: Round) -> np.ndarray:
    [mean] = rnd.means
    return np.concatenate([m.ravel() for m in mean.mean_update]).astype(np.float64)


def _count(fed: Federation, cid: int) -> int:
    return int(node_runtime(str(fed.layout.nodes[cid])).x.shape[0])


def test_a_re_asked_round_over_a_smaller_cohort_never_isolates_the_missing_update(
    fed: Federation, total_weights: list[int]
):
    weights = fed.initial_weights()
    first = fed.round(1, weights)  # cohort {a, b, c, d}: the server unmasks S1
    assert first.means and first.refusals == []
    missing = fed.cid("node-d")
    ledgers = {c: (fed.state(c) / LEDGER_FILE).read_bytes() for c in range(NODES)}
    # The server restarts before its checkpoint; node-d reconnects too late: {a, b, c}.
    second = fed.round(1, weights, cohort=[c for c in range(NODES) if c != missing])
    if second.means:  # the attack: S1 - S2 is node-d's (weighted) update
        w1, w2 = total_weights
        recovered = (_flat(first) * w1 - _flat(second) * w2) / (w1 - w2)
        clip = first.params.clip_range
        truth = np.clip(fed.trained_delta(missing, first), -clip, clip)
        err = float(np.max(np.abs(recovered - truth)))
        pytest.fail(
            f"S1 - S2 recovered node-d's example count ({w1 - w2}, true "
            f"{_count(fed, missing)}) and its update to within {err:.2g} "
            f"(update norm {np.linalg.norm(truth):.3g})"
        )
    assert len(second.refusals) == NODES - 1 and second.receipts == []
    for r in second.refusals:
        assert "already masked into secure-aggregation session" in r.reason, r.reason
    # Refused after the free replay of the stored reply: nothing trained, nothing spent.
    for c in range(NODES):
        assert (fed.state(c) / LEDGER_FILE).read_bytes() == ledgers[c]


def test_a_re_asked_round_with_the_same_cohort_is_answered_from_the_same_session(
    fed: Federation, total_weights: list[int]
):
    weights = fed.initial_weights()
    sent = _record_masked_inputs(fed)
    first = fed.round(1, weights)
    ledgers = {c: _snapshot(fed.state(c)).get(LEDGER_FILE) for c in range(NODES)}
    again = fed.round(1, weights)  # same cohort, same slots: the same session
    assert again.refusals == [] and len(again.means) == 1
    # The very same masked bytes, so the very same sum: nothing new is released.
    for node, replies in sent.items():
        assert len(replies) == 2 and replies[0] == replies[1], f"node {node} masked anew"
    np.testing.assert_array_equal(_flat(again), _flat(first))
    assert total_weights[0] == total_weights[1]

    def receipts(rnd: Round) -> list[object]:
        return [r.receipt for r in sorted(rnd.receipts, key=lambda r: r.client_id)]

    assert receipts(again) == receipts(first)
    for c in range(NODES):
        assert _snapshot(fed.state(c)).get(LEDGER_FILE) == ledgers[c]


def _record_masked_inputs(fed: Federation) -> dict[int, list[bytes]]:
    """Every masked-input reply each node sends (payload bytes), as the server gets it."""
    sent: dict[int, list[bytes]] = {n: [] for n in fed.node_of.values()}

    def record(node: int):
        def keep(reply: Message, request: Message) -> Message:
            sent[node].append(secagg_payload(reply.content) or b"")
            return reply

        return keep

    for node in fed.node_of.values():
        fed.grid.tamper["masked-input", node] = record(node)
    return sent


def test_a_re_asked_round_never_adds_a_second_noise_share_to_the_same_update(fed: Federation):
    """Keys shared, nothing masked (the server lost every share-keys reply), then asked
    again over a smaller cohort: the node may take part, with the noised update it stored,
    never a second fresh share of the same update."""
    weights = fed.initial_weights()
    watched = fed.cid("node-a")
    stored: list[bytes] = []

    def keep(stage: str, node: int, when: str) -> None:
        path: Path = fed.state(watched) / UPDATE_FILE
        if node == fed.node_of[watched] and when == "after" and stage == "train":
            stored.append(path.read_bytes())

    fed.grid.watchers.append(keep)
    fed.grid.lose.update(("share-keys", n) for n in fed.node_of.values())
    # Shares sized for 2 contributors in both sessions: the very same request, so the node
    # replays its stored reply (another request would be trained afresh, and counted).
    first = fed.round(1, weights, client_dp=(0.05, 1.0, 2))
    assert first.means == []  # aborted before anything was masked
    fed.grid.lose.clear()
    second = fed.round(1, weights, cohort=[0, 1, 2], client_dp=(0.05, 1.0, 2))
    assert second.refusals == [] and len(second.means) == 1
    assert len(stored) == 2 and stored[0] == stored[1], "a second fresh noise share was drawn"
    assert second.means[0].count == 3  # node-a's update, with its one share, is in it
