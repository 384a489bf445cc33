"""A server that lies is caught (#14.6): the attacks, performed with the real protocol.

Each test plays a hostile server in process against real :class:`SecAggClient` nodes (real
X25519, AES-GCM, Shamir, ECDSA P-384): it tells holders different survivor lists, swaps a
neighbour's keys, gives two nodes different parameters, forges or reuses signatures. On
the code before the consistency stage the first attack recovered node X's quantised input
exactly, the key swap opened a node's sealed share and the parameter split went unnoticed;
now each is refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedguard.errors import ConfigError
from fedguard.privacy.secagg import (
    ConsistencyReply,
    ConsistencyRequest,
    SecAggAbortedError,
    SecAggClient,
    SecAggError,
    ShareKeysRequest,
    UnmaskRequest,
    make_params,
    quorum,
    shamir,
)
from fedguard.privacy.secagg import _hazmat as hz
from fedguard.privacy.secagg.client import pairwise_mask_key, self_mask_key
from fedguard.privacy.secagg.signing import advertise_message, consistency_message

RNG_SEED = 5
X, Y = 7, 6  # X: the victim; Y: a node colluding with the server
GROUP_A, GROUP_B = (1, 2), (3, 4, 5)  # told "X survived" / "X dropped"


def seven(harness):
    """7 nodes, complete graph, tolerance 0.49: t = 4 of 7 holders (a bare majority)."""
    return harness.params(7, tolerance=0.49)


def two_survivor_lists(harness, hand_round, *, max_colluding: int):
    """The server, with colluding node Y, tells A that X survived and B that X dropped.

    Returns what each honest holder revealed ({holder: reply or the refusal}) and the
    round, so the caller can try to rebuild X's input from the shares it got.
    """
    r = hand_round(seven(harness), max_colluding=max_colluding)
    p = r.params
    assert p.threshold == 4
    inputs = harness.inputs(p, seed=3)
    r.advertise()
    r.share()
    r.mask(inputs, RNG_SEED)
    with_x = tuple(range(1, 8))
    without_x = tuple(s for s in with_x if s != X)
    sets = {h: with_x for h in (*GROUP_A, X)} | {h: without_x for h in GROUP_B}
    signed: dict[tuple[int, ...], list[ConsistencyReply]] = {with_x: [], without_x: []}
    for holder, survivors in sets.items():
        reply = r.clients[holder].consistency(ConsistencyRequest(survivors=survivors))
        signed[survivors].append(reply)
    # The colluding node signs both sets (the server holds its node key).
    key_y = r.keys[p.names[Y - 1]]
    for survivors in signed:
        sig = hz.sign(key_y, label=hz.SIGN_CONSISTENCY, message=consistency_message(p, survivors))
        signed[survivors].append(ConsistencyReply(slot=Y, signature=sig))
    revealed: dict[int, object] = {}
    for holder in (*GROUP_A, *GROUP_B, X):
        survivors = sets[holder]
        request = UnmaskRequest(survivors=survivors, signatures=tuple(signed[survivors]))
        try:
            revealed[holder] = r.clients[holder].unmask(request)
        except SecAggError as exc:
            revealed[holder] = exc
    return r, inputs, revealed


def recover_x(r, revealed) -> np.ndarray | None:
    """The server's attempt: X's seed and masking key from the shares it holds (Y's both
    kinds included), then X's masked input minus every mask. None when it cannot."""
    p = r.params
    y_state = r.clients[Y].state()
    seed_shares = {Y: y_state.held[X][0]}
    key_shares = {Y: y_state.held[X][1]}
    for reply in revealed.values():
        if isinstance(reply, Exception):
            continue
        seed_shares |= {s.holder: s.share for s in reply.seed_shares if s.owner == X}
        key_shares |= {s.holder: s.share for s in reply.key_shares if s.owner == X}
    if len(seed_shares) < p.threshold or len(key_shares) < p.threshold:
        return None
    seed = shamir.combine(seed_shares, threshold=p.threshold)
    private = shamir.combine(key_shares, threshold=p.threshold)
    masked = next(m for d, s, m in r.seen if d == "up" and s == X and hasattr(m, "masked"))
    expander = hz.MaskExpander(length=masked.masked.size, dtype=p.dtype)
    value = masked.masked - expander.expand(self_mask_key(p, slot=X, seed=seed))
    for peer in range(1, 7):
        public = r.clients[peer].state()
        key = pairwise_mask_key(
            p,
            private=private,
            peer_public=hz.public_key(public.masking_private),
            slots=(X, peer),
        )
        mask = expander.expand(key)
        value = value - mask if peer > X else value + mask
    return value


def test_two_survivor_lists_are_refused_and_x_stays_hidden(harness, hand_round):
    """Before: A revealed X's seed share, B its key share, and X's input came out exactly.
    Now (nodes allow c = 1 colluder: q = max(4, floor(8 / 2) + 1) = 5) neither list gets
    five signatures: every honest holder refuses and nothing of X can be rebuilt."""
    r, _, revealed = two_survivor_lists(harness, hand_round, max_colluding=1)
    assert r.clients[1].quorum == 5
    refused = {h for h, reply in revealed.items() if isinstance(reply, SecAggError)}
    assert refused == {*GROUP_A, *GROUP_B, X}
    for holder in refused:
        assert "valid signatures on the survivor set, 5 required" in str(revealed[holder])
    assert recover_x(r, revealed) is None


def test_the_boundary_more_colluders_than_nodes_allow_for(harness, hand_round):
    """The threat model's edge, stated exactly: nodes that allow c = 0 colluders (q = 4)
    are not protected against a server plus one colluding node; the same attack then
    recovers X's input. This is why c is each node's own setting (max-colluding-nodes)."""
    r, inputs, revealed = two_survivor_lists(harness, hand_round, max_colluding=0)
    assert quorum(r.params) == 4
    truth = harness.quantized(r.params, inputs, range(1, 8), RNG_SEED)[X]
    recovered = recover_x(r, revealed)
    assert recovered is not None and np.array_equal(recovered, truth)


def test_without_a_colluder_a_split_list_never_reaches_quorum(harness, hand_round):
    """Honest nodes only (c = 0, q = 4): A and X sign one list, B the other; neither has
    four signatures, so nobody reveals anything."""
    r = hand_round(seven(harness))
    r.advertise()
    r.share()
    r.mask(harness.inputs(r.params, seed=3), RNG_SEED)
    everyone, without_x = tuple(range(1, 8)), tuple(range(1, 7))
    a = [r.clients[h].consistency(ConsistencyRequest(survivors=everyone)) for h in (1, 2, 7)]
    b = [r.clients[h].consistency(ConsistencyRequest(survivors=without_x)) for h in (3, 4, 5)]
    with pytest.raises(SecAggError, match="3 valid signatures on the survivor set, 4 required"):
        r.clients[1].unmask(UnmaskRequest(survivors=everyone, signatures=tuple(a)))
    with pytest.raises(SecAggError, match="3 valid signatures on the survivor set, 4 required"):
        r.clients[3].unmask(UnmaskRequest(survivors=without_x, signatures=tuple(b)))
    # Nor can B's signatures be passed off as signatures on A's list.
    with pytest.raises(SecAggError, match=r"slot 3 \('node-3'\): its signature"):
        r.clients[2].unmask(UnmaskRequest(survivors=everyone, signatures=(*a, *b)))


def test_a_node_signs_one_survivor_set_only(harness, hand_round):
    r = hand_round(harness.params(5))
    r.advertise()
    r.share()
    r.mask(harness.inputs(r.params, seed=1), RNG_SEED)
    requests = r.server.consistency_requests()
    r.clients[1].consistency(requests[1])
    with pytest.raises(SecAggError, match="protocol stage 3 requested in stage 4"):
        r.clients[1].consistency(ConsistencyRequest(survivors=(1, 2, 3, 4)))


def test_a_substituted_neighbour_key_is_refused_naming_the_slot(harness, hand_round):
    """Before: node 1 sealed its share for slot 2 to the server's key, which opened it."""
    r = hand_round(harness.params(5))
    requests = r.advertise()
    server_private, server_public = hz.new_keypair()
    del server_private  # with it the server would have opened node 1's share for slot 2
    forged = ShareKeysRequest(
        neighbours=tuple(
            dataclasses.replace(n, encryption_key=server_public) if n.slot == 2 else n
            for n in requests[1].neighbours
        )
    )
    with pytest.raises(SecAggError, match=r"slot 2 \('node-2'\): its keys are not signed"):
        r.clients[1].share_keys(forged)
    # Re-signing with a key of the server's own does not help: the roster decides.
    impostor = hz.new_signing_key()
    r2 = hand_round(harness.params(5))
    requests = r2.advertise()
    nk = next(n for n in requests[1].neighbours if n.slot == 2)
    message = advertise_message(r2.params, slot=2, encryption=server_public, masking=nk.masking_key)
    resigned = dataclasses.replace(
        nk,
        encryption_key=server_public,
        signature=hz.sign(impostor, label=hz.SIGN_ADVERTISE, message=message),
    )
    forged = ShareKeysRequest(
        neighbours=tuple(resigned if n.slot == 2 else n for n in requests[1].neighbours)
    )
    with pytest.raises(SecAggError, match=r"slot 2 \('node-2'\)"):
        r2.clients[1].share_keys(forged)


@pytest.mark.parametrize(
    "change",
    [{"clip_range": 100.0}, {"bits": 8}, {"graph_seed": 1234}, {"weight_cap": 1}],
    ids=["clip-range", "bits", "graph-seed", "weight-cap"],
)
def test_two_nodes_told_different_parameters_are_refused(harness, hand_round, change):
    """Before: node 2 masked with clip range 100 among nodes at 1 and every share opened.
    Now its signed keys (and every key it derives) belong to another session."""
    r = hand_round(harness.params(5))
    other = dataclasses.replace(r.params, **change)
    assert other.context() != r.params.context()
    r.clients[2] = SecAggClient.create(
        params=other, slot=2, signing_key=r.keys["node-2"], roster=r.roster
    )
    requests = r.advertise()
    with pytest.raises(SecAggError, match=r"slot 2 \('node-2'\): its keys are not signed"):
        r.clients[1].share_keys(requests[1])
    # And node 2 refuses everyone else's keys in the same way.
    with pytest.raises(SecAggError, match=r"its keys are not signed by its roster key"):
        r.clients[2].share_keys(requests[2])


def test_forged_and_reused_signatures_are_refused(harness, hand_round):
    r = hand_round(harness.params(5))
    r.advertise()
    r.share()
    r.mask(harness.inputs(r.params, seed=1), RNG_SEED)
    requests = r.consistency()
    good = requests[1].signatures
    everyone = requests[1].survivors
    by_slot = {s.slot: s for s in good}
    # Slot 3's signature presented as slot 4's as well (one node counted twice).
    reused = (*(s for s in good if s.slot != 4), dataclasses.replace(by_slot[3], slot=4))
    forged = (*(s for s in good if s.slot != 5), ConsistencyReply(slot=5, signature=b"\x30" * 70))
    impostor = hz.sign(
        hz.new_signing_key(),
        label=hz.SIGN_CONSISTENCY,
        message=consistency_message(r.params, everyone),
    )
    by_impostor = (*(s for s in good if s.slot != 5), ConsistencyReply(slot=5, signature=impostor))
    cases = [
        (1, reused, r"slot 4 \('node-4'\): its signature on the survivor set does not verify"),
        (2, forged, r"slot 5 \('node-5'\): its signature"),
        (3, by_impostor, r"slot 5 \('node-5'\): its signature"),
        (4, (*good, by_slot[2]), "signature of slot 2: repeated"),
    ]
    for holder, signatures, match in cases:
        with pytest.raises(SecAggError, match=match):
            r.clients[holder].unmask(UnmaskRequest(survivors=everyone, signatures=signatures))
    # The one node not tampered with still unmasks; the round cannot finish without quorum.
    reply = r.clients[5].unmask(requests[5])
    assert {s.owner for s in reply.seed_shares} == {1, 2, 3, 4, 5}
    with pytest.raises(SecAggAbortedError, match="reconstruction"):
        r.server.receive_unmask([reply])


def test_a_consistency_signature_is_not_an_advertisement_signature(harness, hand_round):
    """Domain separation: a node's signature under one label never verifies under another."""
    r = hand_round(harness.params(3))
    key = r.keys["node-1"]
    message = consistency_message(r.params, (1, 2, 3))
    signature = hz.sign(key, label=hz.SIGN_CONSISTENCY, message=message)
    assert hz.verify(key.public_key(), signature, label=hz.SIGN_CONSISTENCY, message=message)
    assert not hz.verify(key.public_key(), signature, label=hz.SIGN_ADVERTISE, message=message)


def test_a_node_missing_from_the_roster_or_not_itself_is_refused(harness, hand_round):
    r = hand_round(harness.params(4))
    p = r.params
    partial = {n: k for n, k in r.roster.items() if n != "node-3"}
    with pytest.raises(SecAggError, match=r"node 'node-3' \(slot 3\) is not in this node's roster"):
        SecAggClient.create(params=p, slot=1, signing_key=r.keys["node-1"], roster=partial)
    # Slot 1 named as node-2, but this node holds node-1's key: not its slot.
    with pytest.raises(SecAggError, match="slot 1 is 'node-1' in the session, whose roster key"):
        SecAggClient.create(params=p, slot=1, signing_key=r.keys["node-2"], roster=r.roster)
    unnamed = dataclasses.replace(p, names=())
    with pytest.raises(SecAggError, match="names no nodes"):
        SecAggClient.create(params=unnamed, slot=1, signing_key=r.keys["node-1"], roster=r.roster)
    with pytest.raises(ConfigError, match="secagg names: expected 4 distinct"):
        dataclasses.replace(p, names=("node-1", "node-1", "node-3", "node-4"))


def test_colluders_who_could_meet_the_threshold_alone_are_refused_up_front(harness, hand_round):
    # A quorum beyond the cohort (c >= n) always has t <= c: refused for that first.
    r = hand_round(harness.params(4))
    with pytest.raises(SecAggError, match=r"threshold \d+ with 4 colluding nodes assumed"):
        SecAggClient.create(
            params=dataclasses.replace(r.params, max_colluding=4),
            slot=1,
            signing_key=r.keys["node-1"],
            roster=r.roster,
            max_colluding=4,
        )


def test_quorum_formula():
    p = make_params(
        run="q",
        server_round=1,
        cohort=100,
        clip_range=1.0,
        bits=8,
        weight_cap=1,
        dropout_tolerance=1 / 3,
        graph_seed=0,
    )
    assert [quorum(dataclasses.replace(p, max_colluding=c)) for c in (0, 1, 2, 10)] == [
        max(p.threshold, 51),
        max(p.threshold, 51),
        max(p.threshold, 52),
        max(p.threshold, 56),
    ]
    # Two sets with q signers each share 2q - n > c signers: an honest node signed twice.
    for c in range(0, 30):
        q = quorum(dataclasses.replace(p, max_colluding=c))
        assert 2 * q - p.cohort > c
