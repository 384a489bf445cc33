"""Dropouts at every stage: within the tolerance the round completes with the survivors'
exact sum; beyond it the round aborts with a clear message and nothing is aggregated.
Nodes refuse requests that would let a server isolate one update."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fedguard.privacy.secagg import (
    MaskedInputRequest,
    SecAggAbortedError,
    SecAggError,
    ShareKeysRequest,
    UnmaskRequest,
    secure_sum_in_process,
)

RNG_SEED = 77
ABORT_AT_UNMASK = r"aborted at unmask: slot \d+ has \d+ live holders of its shares, \d+ needed"


def run(params, inputs, drop):
    return secure_sum_in_process(
        params=params,
        input_for=lambda slot: None if slot in drop else inputs[slot],
        rng=np.random.default_rng(RNG_SEED),
    )


def dropped_sets(cohort: int, count: int) -> list[set[int]]:
    rng = np.random.default_rng(cohort * 100 + count)
    random = {int(s) for s in rng.choice(np.arange(1, cohort + 1), size=count, replace=False)}
    return [set(range(1, count + 1)), set(range(cohort - count + 1, cohort + 1)), random]


@pytest.mark.parametrize(
    ("cohort", "tolerance"), [(3, 1 / 3), (5, 1 / 3), (10, 1 / 3), (30, 1 / 3), (10, 0.45)]
)
def test_up_to_the_tolerance_the_round_completes_with_the_survivors_sum(harness, cohort, tolerance):
    params = harness.params(cohort, tolerance=tolerance)
    tolerated = math.floor(tolerance * cohort)
    assert params.degree == cohort - 1 and params.threshold == cohort - tolerated
    inputs = harness.inputs(params, seed=cohort)
    for drop in dropped_sets(cohort, tolerated):
        result = run(params, inputs, drop)
        survivors = [s for s in range(1, cohort + 1) if s not in drop]
        assert result.survivors == tuple(survivors)
        assert result.dropped == tuple(sorted(drop))
        expected = harness.plain_total(params, inputs, survivors, RNG_SEED)
        assert [int(v) for v in result.total] == expected


@pytest.mark.parametrize(("cohort", "tolerance"), [(3, 1 / 3), (10, 1 / 3), (10, 0.45)])
def test_one_more_dropout_aborts_and_the_next_round_proceeds(harness, cohort, tolerance):
    params = harness.params(cohort, tolerance=tolerance)
    inputs = harness.inputs(params, seed=cohort)
    drop = dropped_sets(cohort, math.floor(tolerance * cohort) + 1)[2]
    with pytest.raises(SecAggAbortedError, match=ABORT_AT_UNMASK) as info:
        run(params, inputs, drop)
    assert "too many nodes dropped" in str(info.value)
    following = dataclasses.replace(params, server_round=params.server_round + 1)
    result = run(following, inputs, drop=set())
    expected = harness.plain_total(following, inputs, range(1, cohort + 1), RNG_SEED)
    assert [int(v) for v in result.total] == expected


def test_nobody_sends_a_masked_input(harness):
    params = harness.params(3)
    with pytest.raises(SecAggAbortedError, match="no masked input arrived"):
        run(params, harness.inputs(params, seed=0), drop={1, 2, 3})


# --- drops at other stages, the round driven by hand ---------------------------------


def test_a_node_that_never_advertises_is_left_out(harness, hand_round):
    params = harness.params(10)
    inputs = harness.inputs(params, seed=1)
    r = hand_round(params)
    requests = r.advertise(skip={4})
    assert 4 not in requests and all(
        4 not in {n.slot for n in q.neighbours} for q in requests.values()
    )
    r.share()
    r.mask(inputs, RNG_SEED)
    result = r.unmask()
    survivors = [s for s in range(1, 11) if s != 4]
    assert result.survivors == tuple(survivors) and result.dropped == ()
    assert [int(v) for v in result.total] == harness.plain_total(
        params, inputs, survivors, RNG_SEED
    )


def test_a_node_that_advertises_but_never_shares_is_left_out(harness, hand_round):
    params = harness.params(10)
    inputs = harness.inputs(params, seed=2)
    r = hand_round(params)
    r.advertise()
    requests = r.share(skip={7})
    assert 7 not in requests
    assert all(7 not in {s.sender for s in q.shares} for q in requests.values())
    r.mask(inputs, RNG_SEED)
    result = r.unmask()
    survivors = [s for s in range(1, 11) if s != 7]
    assert result.survivors == tuple(survivors) and result.dropped == ()
    assert [int(v) for v in result.total] == harness.plain_total(
        params, inputs, survivors, RNG_SEED
    )


def test_a_node_that_drops_during_unmask_still_counts(harness, hand_round):
    params = harness.params(10)  # threshold 7 of 10
    inputs = harness.inputs(params, seed=3)
    r = hand_round(params)
    r.advertise()
    r.share()
    r.mask(inputs, RNG_SEED)
    result = r.unmask(skip={2, 5, 8})  # 7 holders of each seed remain
    assert result.survivors == tuple(range(1, 11))
    assert [int(v) for v in result.total] == harness.plain_total(
        params, inputs, range(1, 11), RNG_SEED
    )


def test_too_few_unmask_replies_abort_at_reconstruction(harness, hand_round):
    params = harness.params(10)
    inputs = harness.inputs(params, seed=3)
    r = hand_round(params)
    r.advertise()
    r.share()
    r.mask(inputs, RNG_SEED)
    with pytest.raises(SecAggAbortedError, match="aborted at reconstruction"):
        r.unmask(skip={2, 5, 8, 9})


def test_drops_at_every_stage_in_one_round(harness, hand_round):
    params = harness.params(12, tolerance=0.45)  # threshold 12 - 5 = 7
    assert params.threshold == 7
    inputs = harness.inputs(params, seed=4)
    r = hand_round(params)
    r.advertise(skip={1})
    r.share(skip={6})
    r.mask(inputs, RNG_SEED, skip={9, 12})
    result = r.unmask(skip={3})  # 7 survivors left; every secret still has 7 holders
    survivors = [2, 3, 4, 5, 7, 8, 10, 11]
    assert result.survivors == tuple(survivors) and result.dropped == (9, 12)
    assert [int(v) for v in result.total] == harness.plain_total(
        params, inputs, survivors, RNG_SEED
    )


def test_too_many_missing_advertisements_abort_before_any_share(harness, hand_round):
    params = harness.params(5)  # threshold 4
    with pytest.raises(SecAggAbortedError, match="aborted at share keys"):
        hand_round(params).advertise(skip={1, 2})
    r = hand_round(params)
    r.advertise()
    with pytest.raises(SecAggAbortedError, match="aborted at masked input"):
        r.share(skip={1, 2})


# --- what a node refuses --------------------------------------------------------------


def test_a_node_refuses_to_mask_when_too_few_neighbours_shared_keys(harness, hand_round):
    params = harness.params(5)  # threshold 4 of 5
    inputs = harness.inputs(params, seed=5)
    r = hand_round(params, min_holders={1: 5})  # node 1's own, stricter policy
    r.advertise()
    requests = r.share(skip={5})  # the server carries on with 4 of 5 holders
    update, weight = inputs[1]
    rng = np.random.default_rng(0)
    with pytest.raises(SecAggError, match="only 4 of this node's 5-node neighbourhood") as info:
        r.clients[1].masked_input(requests[1], update=update, weight=weight, rng=rng)
    assert "at least 5 required: refusing" in str(info.value)
    # Nodes with the default policy (the threshold, 4) go on.
    reply = r.clients[2].masked_input(requests[2], update=update, weight=weight, rng=rng)
    assert reply.slot == 2


def test_a_node_refuses_a_server_that_withholds_shares(harness, hand_round):
    params = harness.params(5)
    inputs = harness.inputs(params, seed=5)
    r = hand_round(params)
    r.advertise()
    requests = r.share()
    isolating = MaskedInputRequest(shares=requests[3].shares[:1])  # 2 holders < 4
    update, weight = inputs[3]
    with pytest.raises(SecAggError, match="refusing, so no update is isolated"):
        r.clients[3].masked_input(isolating, update=update, weight=weight, rng=None)
    # ... and a server that hides neighbours' keys at the share stage.
    r = hand_round(params)
    share_requests = r.advertise()
    few = ShareKeysRequest(neighbours=share_requests[1].neighbours[:2])
    with pytest.raises(SecAggError, match="advertised keys"):
        r.clients[1].share_keys(few)


def test_a_node_refuses_shares_it_should_not_accept(harness, hand_round):
    params = harness.params(5)
    update, weight = harness.inputs(params, seed=0)[1]
    r = hand_round(params)
    r.advertise()
    requests = r.share()
    duplicate = MaskedInputRequest(shares=(*requests[1].shares, requests[1].shares[0]))
    with pytest.raises(SecAggError, match="unexpected share from slot"):
        r.clients[1].masked_input(duplicate, update=update, weight=weight, rng=None)
    # The failed call leaves the node unusable: no retry with another request.
    with pytest.raises(SecAggError, match="protocol stage"):
        r.clients[1].masked_input(requests[1], update=update, weight=weight, rng=None)
    with pytest.raises(SecAggError, match="unexpected share from slot"):
        r.clients[3].masked_input(requests[2], update=update, weight=weight, rng=None)
    # A share sealed to node 4 and relabelled for node 5 does not open.
    share = next(s for s in requests[4].shares if s.sender == 1)
    moved = MaskedInputRequest(
        shares=(
            *(s for s in requests[5].shares if s.sender != 1),
            dataclasses.replace(share, receiver=5),
        )
    )
    with pytest.raises(SecAggError, match="cannot open sealed payload"):
        r.clients[5].masked_input(moved, update=update, weight=weight, rng=None)


def unmask_ready(harness, hand_round, cohort=5):
    params = harness.params(cohort)
    r = hand_round(params)
    r.advertise()
    r.share()
    r.mask(harness.inputs(params, seed=9), RNG_SEED)
    return r, r.consistency()


@pytest.mark.parametrize(
    ("survivors", "match"),
    [
        ((1, 2, 3, 4), "not the one this node signed"),  # 5 dropped for this node only
        ((2, 3, 4, 5), "leaves out this node"),
        ((1, 2, 3, 4, 5, 6), r"outside 1\.\.5"),
        ((1, 2, 2, 3, 4, 5), "repeats a slot"),
    ],
)
def test_a_node_refuses_an_unmask_request_for_a_survivor_set_it_did_not_sign(
    harness, hand_round, survivors, match
):
    r, requests = unmask_ready(harness, hand_round)
    request = UnmaskRequest(survivors=survivors, signatures=requests[1].signatures)
    with pytest.raises(SecAggError, match=match):
        r.clients[1].unmask(request)
    # No second chance: the node never answers unmask after a refusal.
    with pytest.raises(SecAggError, match="protocol stage"):
        r.clients[1].unmask(requests[1])


def test_a_node_refuses_to_sign_when_too_few_survive(harness, hand_round):
    params = harness.params(5)
    r = hand_round(params, min_holders={1: 5})
    r.advertise()
    r.share()
    r.mask(harness.inputs(params, seed=9), RNG_SEED, skip={5})
    requests = r.server.consistency_requests()
    with pytest.raises(SecAggError, match="sent masked inputs"):
        r.clients[1].consistency(requests[1])


def test_a_node_answers_unmask_once_and_only_in_stage_order(harness, hand_round):
    r, requests = unmask_ready(harness, hand_round)
    reply = r.clients[1].unmask(requests[1])
    assert {s.owner for s in reply.seed_shares} == {1, 2, 3, 4, 5} and reply.key_shares == ()
    with pytest.raises(SecAggError, match="protocol stage 4 requested in stage 5"):
        r.clients[1].unmask(requests[1])
    # A second server asking (say) for key shares of the same neighbours gets nothing.
    with pytest.raises(SecAggError, match="protocol stage"):
        r.clients[1].unmask(UnmaskRequest(survivors=(1,), signatures=()))
    # Out of order: unmask before masking, masking before sharing, sharing twice.
    params = harness.params(3)
    fresh = hand_round(params)
    share_requests = fresh.advertise()
    update, weight = harness.inputs(params, seed=0)[1]
    with pytest.raises(SecAggError, match="protocol stage 4 requested in stage 1"):
        fresh.clients[1].unmask(UnmaskRequest(survivors=(1, 2, 3), signatures=()))
    fresh = hand_round(params)
    share_requests = fresh.advertise()
    with pytest.raises(SecAggError, match="protocol stage 2 requested in stage 1"):
        fresh.clients[2].masked_input(
            MaskedInputRequest(shares=()), update=update, weight=weight, rng=None
        )
    fresh.clients[3].share_keys(share_requests[3])
    with pytest.raises(SecAggError, match="protocol stage 1 requested in stage 2"):
        fresh.clients[3].share_keys(share_requests[3])
