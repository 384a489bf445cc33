"""The server's view of a round (>= 3 nodes) does not reveal any single node's update.

The test plays an honest-but-curious server: it keeps every message the server receives
and sends, then checks that each masked input is indistinguishable from uniform ring
integers and uncorrelated with the node's true input, that no sealed share opens with
any key the server can form, that no private key or seed ever crosses the wire, and that
removing the self mask the server legitimately reconstructs still leaves a uniform value:
the pairwise masks need a key the server never learns for a survivor.

The statistical tests use significance ALPHA = 1e-6 each (false-alarm rate), on vectors
of 2**17 ring integers; a masked input that leaks its structure fails them by hundreds of
orders of magnitude (the unmasked input is checked to fail the same tests).
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
from scipy import stats

from fedguard.privacy.secagg import (
    AdvertiseKeys,
    MaskedInputReply,
    SecAggError,
    ShareKeysReply,
    UnmaskReply,
    _hazmat,
    secure_sum_in_process,
    shamir,
)
from fedguard.privacy.secagg.client import pairwise_mask_key, self_mask_key
from fedguard.transport import encode_secagg

LENGTH = 1 << 17
ALPHA = 1e-6
Z_LIMIT = stats.norm.isf(ALPHA / 2)  # two-sided, ~4.9
RNG_SEED = 5


def structured_inputs(params, cohort):
    """Very non-uniform updates: ramps and a square wave (weight 5)."""
    ramp = np.linspace(-params.clip_range, params.clip_range, LENGTH, dtype=np.float64)
    square = np.where(np.arange(LENGTH) % 2, 0.25, -0.5)
    return {
        slot: ([ramp * (-1) ** slot if slot % 3 else square], 5) for slot in range(1, cohort + 1)
    }


def byte_chi2_pvalue(values: np.ndarray) -> float:
    counts = np.bincount(np.ascontiguousarray(values).view(np.uint8), minlength=256)
    return float(stats.chisquare(counts).pvalue)


def worst_bit_z(values: np.ndarray) -> float:
    bits = values.dtype.itemsize * 8
    v = values.astype(np.uint64)
    n = v.size
    ones = np.array([np.count_nonzero((v >> np.uint64(b)) & np.uint64(1)) for b in range(bits)])
    return float(np.max(np.abs(ones - n / 2) / np.sqrt(n / 4)))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def assert_uniform_and_unrelated(observed: np.ndarray, truth: np.ndarray) -> None:
    assert byte_chi2_pvalue(observed) > ALPHA
    assert worst_bit_z(observed) < Z_LIMIT
    # |r| of independent samples is ~ N(0, 1/n).
    assert abs(correlation(observed[:-1], truth[:-1])) < Z_LIMIT / np.sqrt(observed.size)
    assert np.mean(observed == truth) < 1e-3


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("cohort", [3, 4])
def test_masked_inputs_are_indistinguishable_from_uniform(harness, cohort, ring_bits):
    params = harness.params(cohort, ring_bits=ring_bits, bits=16, weight_cap=10)
    inputs = structured_inputs(params, cohort)
    received: dict[int, np.ndarray] = {}

    def server_sees(direction, slot, message):
        if direction == "up" and isinstance(message, MaskedInputReply):
            received[slot] = message.masked.copy()

    result = secure_sum_in_process(
        params=params,
        input_for=inputs.__getitem__,
        rng=np.random.default_rng(RNG_SEED),
        on_message=server_sees,
    )
    truth = harness.quantized(params, inputs, range(1, cohort + 1), RNG_SEED)
    assert sorted(received) == list(range(1, cohort + 1))
    for slot, masked in received.items():
        assert masked.dtype == params.dtype and masked.size == LENGTH + 1
        # The test has power: the node's true encoded input fails it outright.
        assert byte_chi2_pvalue(truth[slot]) < 1e-100
        assert_uniform_and_unrelated(masked, truth[slot])
    # Pairs of masked inputs do not cancel into something structured either.
    for a, b in itertools.combinations(sorted(received), 2):
        assert byte_chi2_pvalue(received[a] - received[b]) > ALPHA
    # Only the sum comes out.
    expected = sum(v.astype(object) for v in truth.values()) % 2**ring_bits
    assert [int(v) for v in result.total] == list(expected)


def _round_with_a_dropout(harness, hand_round, cohort=4, drop=4):
    params = harness.params(cohort, bits=16, weight_cap=10)
    inputs = structured_inputs(params, cohort)
    r = hand_round(params)
    params = r.params  # with the node names the round was run under
    r.advertise()
    r.share()
    r.mask(inputs, RNG_SEED, skip={drop})
    result = r.unmask()
    survivors = [s for s in range(1, cohort + 1) if s != drop]
    truth = harness.quantized(params, inputs, survivors, RNG_SEED)
    expected = sum(v.astype(object) for v in truth.values()) % 2**params.ring_bits
    assert [int(v) for v in result.total] == list(expected)
    return params, r, truth


def _messages(r, kind):
    return [m for d, _, m in r.seen if d == "up" and isinstance(m, kind)]


def test_removing_the_reconstructible_self_mask_does_not_unmask_an_input(harness, hand_round):
    params, r, truth = _round_with_a_dropout(harness, hand_round)
    seed_shares: dict[int, dict[int, bytes]] = {}
    for reply in _messages(r, UnmaskReply):
        assert {s.owner for s in reply.key_shares} <= {4}  # key shares of the dropped only
        assert 4 not in {s.owner for s in reply.seed_shares}  # never its seed
        for s in reply.seed_shares:
            seed_shares.setdefault(s.owner, {})[s.holder] = s.share
    masked = {m.slot: m.masked for m in _messages(r, MaskedInputReply)}
    for slot, y in masked.items():
        seed = shamir.combine(seed_shares[slot], threshold=params.threshold)
        assert seed == r.clients[slot].state().seed  # the server does learn the seed...
        self_mask = _hazmat.expand_mask(
            self_mask_key(params, slot=slot, seed=seed), length=y.size, dtype=params.dtype
        )
        # ...but the input is still hidden by pairwise masks with the other survivors.
        assert_uniform_and_unrelated(y - self_mask, truth[slot])
        # Those need this node's masking private key, which never leaves it for a
        # survivor; with it (taken from the node here) the input would come out exactly.
        state = r.clients[slot].state()
        rest = y - self_mask
        for peer in sorted(set(masked) - {slot}):
            key = pairwise_mask_key(
                params,
                private=state.masking_private,
                peer_public=state.neighbour_keys[peer].masking_key,
                slots=(slot, peer),
            )
            pairwise = _hazmat.expand_mask(key, length=y.size, dtype=params.dtype)
            rest = rest - pairwise if slot < peer else rest + pairwise
        # Only the dropped node's pairwise mask is left; the server can remove that one.
        dropped_key = shamir.combine(
            {
                s.holder: s.share
                for reply in _messages(r, UnmaskReply)
                for s in reply.key_shares
                if s.owner == 4
            },
            threshold=params.threshold,
        )
        advert = next(a for a in _messages(r, AdvertiseKeys) if a.slot == slot)
        key = pairwise_mask_key(
            params, private=dropped_key, peer_public=advert.masking_key, slots=(4, slot)
        )
        pairwise = _hazmat.expand_mask(key, length=y.size, dtype=params.dtype)
        rest = rest - pairwise if slot < 4 else rest + pairwise
        assert np.array_equal(rest, truth[slot])


def test_sealed_shares_do_not_open_with_any_key_the_server_can_form(harness, hand_round):
    params, r, _ = _round_with_a_dropout(harness, hand_round)
    adverts = {a.slot: a for a in _messages(r, AdvertiseKeys)}
    # Everything 32 bytes long the server holds: public keys, the dropped node's
    # reconstructed masking key, the survivors' reconstructed seeds.
    known = [a.encryption_key for a in adverts.values()] + [a.masking_key for a in adverts.values()]
    by_owner: dict[tuple[str, int], dict[int, bytes]] = {}
    for reply in _messages(r, UnmaskReply):
        for kind, shares in (("seed", reply.seed_shares), ("key", reply.key_shares)):
            for s in shares:
                by_owner.setdefault((kind, s.owner), {})[s.holder] = s.share
    known += [shamir.combine(v, threshold=params.threshold) for v in by_owner.values()]
    assert len(known) == 8 + 3 + 1
    secrets = list(known)  # raw values as key material too
    for a, b in itertools.product(known, repeat=2):
        with contextlib.suppress(SecAggError):
            secrets.append(_hazmat.agree(a, b))
    sealed = [s for reply in _messages(r, ShareKeysReply) for s in reply.shares]
    assert len(sealed) == 4 * 3
    attempts = 0
    for share in sealed:
        context = params.context() + b"\x00%d>%d" % (share.sender, share.receiver)
        candidates = secrets + [
            _hazmat.derive_key(x, purpose="share-seal", context=context) for x in secrets
        ]
        for key in candidates:
            attempts += 1
            with pytest.raises(SecAggError, match="cannot open sealed payload"):
                _hazmat.open_sealed(key, share.ciphertext, aad=context)
        # Positive control: the receiver's private encryption key (never sent) opens it.
        receiver = r.clients[share.receiver].state()
        real = _hazmat.derive_key(
            _hazmat.agree(receiver.encryption_private, adverts[share.sender].encryption_key),
            purpose="share-seal",
            context=context,
        )
        assert len(_hazmat.open_sealed(real, share.ciphertext, aad=context)) == 141
    assert attempts > 3000


def test_no_private_key_or_seed_crosses_the_wire(harness, hand_round):
    _, r, _ = _round_with_a_dropout(harness, hand_round)
    wire = b"".join(encode_secagg(m) for _, _, m in r.seen)
    assert len(wire) > 4 * LENGTH * 3  # the masked inputs are in there
    for client in r.clients.values():
        state = client.state()
        for secret in (state.encryption_private, state.masking_private, state.seed):
            assert secret not in wire
