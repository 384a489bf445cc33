"""Protocol correctness: the unmasked sum is the plain sum of the quantised updates,
exactly, in both rings and on complete and sparse neighbour graphs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedguard.privacy.secagg import (
    AdvertiseKeys,
    ConsistencyReply,
    ConsistencyRequest,
    MaskedInputReply,
    MaskedInputRequest,
    SecAggParams,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    dequantize_mean,
    neighbours,
    quantization_step,
    secure_sum_in_process,
)

RNG_SEED = 1234


def run(params, inputs, *, seed=RNG_SEED, drop=(), on_message=None):
    return secure_sum_in_process(
        params=params,
        input_for=lambda slot: None if slot in drop else inputs[slot],
        rng=np.random.default_rng(seed),
        on_message=on_message,
    )


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("cohort", [3, 5, 10, 30])
def test_sum_is_exactly_the_plain_sum_and_the_mean_is_fedavg(harness, cohort, ring_bits):
    params = harness.params(cohort, ring_bits=ring_bits)
    assert params.ring_bits == ring_bits
    inputs = harness.inputs(params, seed=cohort)
    result = run(params, inputs)
    slots = range(1, cohort + 1)
    assert result.survivors == tuple(slots) and result.dropped == ()
    assert result.total.dtype == params.dtype
    assert [int(v) for v in result.total] == harness.plain_total(params, inputs, slots, RNG_SEED)
    # Weighted by capped example counts.
    assert int(result.total[-1]) == sum(harness.capped(params, inputs[s][1]) for s in slots)
    assert inputs[1][1] > params.weight_cap  # capped, not trusted
    mean, _ = dequantize_mean(
        result.total, clip_range=params.clip_range, bits=params.bits, shapes=harness.shapes
    )
    flat = np.concatenate([m.ravel() for m in mean]).astype(np.float64)
    step = quantization_step(clip_range=params.clip_range, bits=params.bits)
    assert np.max(np.abs(flat - harness.fedavg(params, inputs, slots))) < step


def test_the_hook_sees_every_message_in_stage_order(harness):
    params = harness.params(4)
    inputs = harness.inputs(params, seed=0)
    seen: list[tuple[str, int, type]] = []
    run(params, inputs, on_message=lambda d, s, m: seen.append((d, s, type(m))))
    expected = (
        [("up", AdvertiseKeys)] * 4
        + [("down", ShareKeysRequest), ("up", ShareKeysReply)] * 4
        + [("down", MaskedInputRequest), ("up", MaskedInputReply)] * 4
        + [("down", ConsistencyRequest), ("up", ConsistencyReply)] * 4
        + [("down", UnmaskRequest), ("up", UnmaskReply)] * 4
    )
    assert [(d, t) for d, _, t in seen] == expected
    assert sorted({s for _, s, _ in seen}) == [1, 2, 3, 4]


def sparse(cohort: int, degree: int, threshold: int, **kw) -> SecAggParams:
    base = {
        "run": "sparse",
        "server_round": 2,
        "cohort": cohort,
        "degree": degree,
        "threshold": threshold,
        "clip_range": 0.5,
        "bits": 10,
        "weight_cap": 20,
        "ring_bits": 32,
        "graph_seed": 7,
    }
    return SecAggParams(**(base | kw))


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_sparse_graph_sum_is_exact_and_each_node_talks_to_k_neighbours(harness, ring_bits):
    params = sparse(16, 4, 3, ring_bits=ring_bits)
    inputs = harness.inputs(params, seed=16)
    messages: dict[tuple[int, type], object] = {}
    result = run(params, inputs, on_message=lambda _d, s, m: messages.__setitem__((s, type(m)), m))
    slots = range(1, 17)
    assert [int(v) for v in result.total] == harness.plain_total(params, inputs, slots, RNG_SEED)
    for slot in slots:
        graph = neighbours(params, slot)
        assert len(graph) == 4
        request = messages[(slot, ShareKeysRequest)]
        assert [n.slot for n in request.neighbours] == graph
        assert sorted(s.receiver for s in messages[(slot, ShareKeysReply)].shares) == graph
        assert sorted(s.sender for s in messages[(slot, MaskedInputRequest)].shares) == graph
        # Every survivor is told the same, global survivor set (and signs it).
        assert list(messages[(slot, ConsistencyRequest)].survivors) == list(slots)
        assert list(messages[(slot, UnmaskRequest)].survivors) == list(slots)


def test_sparse_graph_with_dropouts(harness):
    params = sparse(16, 6, 4)
    inputs = harness.inputs(params, seed=3)
    drop = {2, 9}  # at most 3 of any 7-node neighbourhood
    result = run(params, inputs, drop=drop)
    survivors = [s for s in range(1, 17) if s not in drop]
    assert result.survivors == tuple(survivors) and result.dropped == tuple(sorted(drop))
    assert [int(v) for v in result.total] == harness.plain_total(
        params, inputs, survivors, RNG_SEED
    )


def test_masked_inputs_change_every_round_for_the_same_update(harness):
    params = harness.params(3)
    inputs = harness.inputs(params, seed=5)
    masked = []
    for server_round in (1, 2):
        p = dataclasses.replace(params, server_round=server_round)
        got: dict[int, np.ndarray] = {}

        def keep(_d, slot, m, got=got):
            if isinstance(m, MaskedInputReply):
                got[slot] = m.masked.copy()

        total = run(p, inputs, on_message=keep).total
        assert [int(v) for v in total] == harness.plain_total(p, inputs, [1, 2, 3], RNG_SEED)
        masked.append(got)
    for slot in (1, 2, 3):
        assert np.mean(masked[0][slot] == masked[1][slot]) < 0.01


def test_server_ignores_replayed_and_malformed_masked_inputs(harness, hand_round):
    params = harness.params(5)
    inputs = harness.inputs(params, seed=8)
    r = hand_round(params)
    r.advertise()
    r.share()
    rng = np.random.default_rng(RNG_SEED)
    replies = {}
    for slot, request in sorted(r.mask_requests.items()):
        update, weight = inputs[slot]
        replies[slot] = r.clients[slot].masked_input(request, update=update, weight=weight, rng=rng)
        r.server.add_masked_input(replies[slot])
    r.server.add_masked_input(replies[1])  # a replay
    r.server.add_masked_input(MaskedInputReply(slot=2, masked=replies[2].masked.astype(np.int64)))
    r.server.add_masked_input(MaskedInputReply(slot=9, masked=replies[2].masked))
    assert [slot for slot, _ in r.server.rejected] == [1, 2, 9]
    total = r.unmask().total
    assert [int(v) for v in total] == harness.plain_total(params, inputs, range(1, 6), RNG_SEED)
