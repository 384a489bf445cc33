"""#14.4: privacy is spent when something is released, not when nothing was.

A secure round that aborts before a node sent its masked input released nothing derived
from that node's update; the node learns of the abort when a later round's request
arrives, marks the round void in its ledger (a hash-chained line referencing the pending
entry) and its epsilon no longer counts. The write-ahead stays: an update that may have
left (masked input sent, plain reply returned) is spent. Real ClientApp, real server side
of SecAgg+, real ledgers, through the loopback grid of ``deploy/test_secure_round``.
"""

from __future__ import annotations

import pytest
from deploy.test_secure_round import NODES, Federation, fed, identity

from fedguard.client.node import node_runtime
from fedguard.client.released import read_journal
from fedguard.files import INDEX_FILE, LEDGER_FILE, RELEASED_FILE
from fedguard.privacy.ledger import Ledger
from fedguard.privacy.record_budget import load_index, record_spend

__all__ = ["fed", "identity"]  # fixtures, imported for pytest


def _ledger(fed: Federation, cid: int) -> Ledger:
    return Ledger(path=fed.state(cid) / LEDGER_FILE)


def _spent(fed: Federation, cid: int) -> float:
    """The node's own figure: the most-spent record's epsilon, from its ledger and index."""
    runtime = node_runtime(str(fed.layout.nodes[cid]))
    records, entries = runtime.records(), _ledger(fed, cid).entries()
    index, warning = load_index(
        path=fed.state(cid) / INDEX_FILE, entries=entries, key_check=records.key_check
    )
    assert warning is None, warning
    spend = record_spend(index=index, warning=None, records=records, entries=entries)
    policy = runtime.config.privacy
    return spend.epsilon(method=policy.accountant, delta=policy.delta)


def test_a_round_aborted_before_masking_is_given_back_and_a_completed_one_is_spent(
    fed: Federation,
):
    weights = fed.initial_weights()
    # Two of four nodes vanish after sharing keys (threshold 3): the server aborts the
    # round before it asks anyone for a masked input.
    gone = {fed.node_of[fed.cid("node-b")], fed.node_of[fed.cid("node-d")]}
    fed.grid.lose.update(("share-keys", n) for n in gone)
    first = fed.round(1, weights)
    assert len(first.receipts) == NODES and first.means == []
    assert not [m for stage, m in fed.grid.sent if stage == "masked-input"]
    one_round = {c: _spent(fed, c) for c in range(NODES)}
    assert all(e > 0 for e in one_round.values())  # write-ahead: spent until shown void

    fed.grid.lose.clear()
    second = fed.round(2, weights)
    assert second.means and second.means[0].count == NODES
    for c in range(NODES):
        kinds = [e.kind for e in _ledger(fed, c).entries()]
        assert kinds == ["pending", "commit", "void", "pending", "commit"], kinds
        assert _ledger(fed, c).verify().ok
        # Round 1 released nothing: the node has spent exactly one round (round 2's).
        assert _spent(fed, c) == pytest.approx(one_round[c], rel=1e-9)
        # Round 2's ledger entry (what its receipt reports) charges one round, not two.
        assert _ledger(fed, c).entries()[3].epsilon_after == pytest.approx(one_round[c])
        # Masked and sent: no longer held for a possible give-back.
        assert read_journal(fed.state(c) / RELEASED_FILE).held is None

    third = fed.round(3, weights)  # completed rounds stay spent
    assert third.means
    for c in range(NODES):
        assert "void" not in [e.kind for e in _ledger(fed, c).entries()[3:]]
        assert _spent(fed, c) > one_round[c] * 1.2
