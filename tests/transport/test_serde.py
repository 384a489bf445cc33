"""fedguard.v1 wire format: every message round-trips, and hostile bytes raise WireError
(and nothing else) whatever they are: random, truncated, mutated, or well-formed
protobuf with the wrong stage, version, key length, ring or parameters."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedguard.privacy.secagg import (
    AdvertiseKeys,
    ClientState,
    ConsistencyReply,
    ConsistencyRequest,
    MaskedInputReply,
    MaskedInputRequest,
    NeighbourKeys,
    RevealedShare,
    SealedShare,
    SecAggClient,
    SecAggServer,
    Setup,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    make_params,
)
from fedguard.privacy.secagg._hazmat import new_signing_key
from fedguard.proto.v1 import secagg_pb2 as pb
from fedguard.transport import (
    WireError,
    decode_client_state,
    decode_secagg,
    encode_client_state,
    encode_secagg,
)

TYPES = [
    Setup,
    AdvertiseKeys,
    ShareKeysRequest,
    ShareKeysReply,
    MaskedInputRequest,
    MaskedInputReply,
    ConsistencyRequest,
    ConsistencyReply,
    UnmaskRequest,
    UnmaskReply,
]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

slots = st.integers(1, 2**20 - 1)
keys = st.binary(min_size=32, max_size=32)
shares = st.binary(min_size=66, max_size=66)
signatures = st.binary(min_size=1, max_size=104)
names = st.text(min_size=1, max_size=12).filter(lambda n: "\x00" not in n)


@st.composite
def params_strategy(draw):
    p = make_params(
        run=draw(st.text(max_size=20)),
        server_round=draw(st.integers(0, 2**40)),
        cohort=draw(st.integers(2, 120)),
        clip_range=draw(st.floats(1e-6, 1e6)),
        bits=draw(st.integers(1, 30)),
        weight_cap=draw(st.integers(1, 10_000)),
        dropout_tolerance=draw(st.floats(1 / 3, 0.49)),
        graph_seed=draw(st.integers(0, 2**64 - 1)),
    )
    named = draw(st.booleans())
    if not named:
        return p
    return dataclasses.replace(
        p,
        names=tuple(draw(st.lists(names, min_size=p.cohort, max_size=p.cohort, unique=True))),
    )


sealed = st.builds(SealedShare, sender=slots, receiver=slots, ciphertext=st.binary(max_size=80))
revealed = st.builds(RevealedShare, owner=slots, holder=slots, share=shares)
neighbour_keys = st.builds(
    NeighbourKeys, slot=slots, encryption_key=keys, masking_key=keys, signature=signatures
)
consistency = st.builds(ConsistencyReply, slot=slots, signature=signatures)
masked_arrays = st.sampled_from([np.uint32, np.uint64]).flatmap(
    lambda dtype: hnp.arrays(dtype, st.integers(0, 40))
)
messages = st.one_of(
    st.builds(Setup, params=params_strategy(), slot=slots),
    st.builds(
        AdvertiseKeys, slot=slots, encryption_key=keys, masking_key=keys, signature=signatures
    ),
    st.builds(ShareKeysRequest, neighbours=st.lists(neighbour_keys, max_size=5).map(tuple)),
    st.builds(ShareKeysReply, slot=slots, shares=st.lists(sealed, max_size=5).map(tuple)),
    st.builds(MaskedInputRequest, shares=st.lists(sealed, max_size=5).map(tuple)),
    st.builds(MaskedInputReply, slot=slots, masked=masked_arrays),
    st.builds(ConsistencyRequest, survivors=st.lists(slots, max_size=8).map(tuple)),
    consistency,
    st.builds(
        UnmaskRequest,
        survivors=st.lists(slots, max_size=8).map(tuple),
        signatures=st.lists(consistency, max_size=5).map(tuple),
    ),
    st.builds(
        UnmaskReply,
        slot=slots,
        seed_shares=st.lists(revealed, max_size=4).map(tuple),
        key_shares=st.lists(revealed, max_size=4).map(tuple),
    ),
)


def assert_same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, MaskedInputReply):
        assert a.slot == b.slot
        assert b.masked.dtype == a.masked.dtype and b.masked.dtype.isnative
        assert np.array_equal(a.masked, b.masked)
    else:
        assert a == b


def decode_or_wire_error(data: bytes, expect: type):
    """Decoding returns the expected type or raises WireError; anything else fails."""
    try:
        out = decode_secagg(data, expect=expect)
    except WireError:
        return None
    assert isinstance(out, expect)
    return out


# --- round trips ----------------------------------------------------------------------


@FAST
@given(message=messages)
def test_every_message_round_trips(message):
    data = encode_secagg(message)
    assert isinstance(data, bytes)
    assert_same(message, decode_secagg(data, expect=type(message)))
    for other in TYPES:
        if other is not type(message):
            with pytest.raises(WireError, match="expected stage"):
                decode_secagg(data, expect=other)


def _round_states():
    """Real client states at each stage of a 4-node round, and the round's pieces."""
    params = make_params(
        run="serde",
        server_round=2,
        cohort=4,
        clip_range=1.0,
        bits=8,
        weight_cap=10,
        dropout_tolerance=1 / 3,
        graph_seed=3,
    )
    params = dataclasses.replace(params, names=("a", "b", "c", "d"))
    server = SecAggServer(params)
    keys = {name: new_signing_key() for name in params.names}
    roster = {name: k.public_key() for name, k in keys.items()}
    clients = {
        s: SecAggClient.create(
            params=params, slot=s, signing_key=keys[params.names[s - 1]], roster=roster
        )
        for s in range(1, 5)
    }
    return params, server, clients, keys, roster


def test_client_state_round_trips_and_a_restored_node_finishes_the_round():
    params, server, clients, keys, roster = _round_states()
    rng = np.random.default_rng(0)
    update = [np.linspace(-1, 1, 6).reshape(2, 3)]

    def restore(slot):
        data = encode_client_state(clients[slot].state())
        state = decode_client_state(data)
        assert state == clients[slot].state()
        assert encode_client_state(state) == data
        # A fresh process picks the round up (with its node key and roster, from disk).
        key = keys[params.names[slot - 1]]
        clients[slot] = SecAggClient(state, signing_key=key, roster=roster)

    for s in clients:
        restore(s)
    wire = {s: encode_secagg(c.advertise()) for s, c in clients.items()}
    requests = server.receive_keys(decode_secagg(w, expect=AdvertiseKeys) for w in wire.values())
    replies = []
    for s, r in requests.items():
        r = decode_secagg(encode_secagg(r), expect=ShareKeysRequest)
        replies.append(
            decode_secagg(encode_secagg(clients[s].share_keys(r)), expect=ShareKeysReply)
        )
        restore(s)
    assert all(len(clients[s].state().held) == 1 for s in clients)
    for s, r in server.receive_shares(replies).items():
        r = decode_secagg(encode_secagg(r), expect=MaskedInputRequest)
        reply = clients[s].masked_input(r, update=update, weight=3, rng=rng)
        server.add_masked_input(decode_secagg(encode_secagg(reply), expect=MaskedInputReply))
        restore(s)
        assert len(clients[s].state().held) == 4
    signed = []
    for s, r in server.consistency_requests().items():
        r = decode_secagg(encode_secagg(r), expect=ConsistencyRequest)
        signed.append(
            decode_secagg(encode_secagg(clients[s].consistency(r)), expect=ConsistencyReply)
        )
        restore(s)
        assert clients[s].state().signed == (1, 2, 3, 4)
    unmask = []
    for s, r in server.receive_consistency(signed).items():
        r = decode_secagg(encode_secagg(r), expect=UnmaskRequest)
        unmask.append(decode_secagg(encode_secagg(clients[s].unmask(r)), expect=UnmaskReply))
        restore(s)
    total = server.receive_unmask(unmask).total
    assert int(total[-1]) == 12
    assert np.all(total[:-1] % 3 == 0)


# --- hostile bytes --------------------------------------------------------------------


@FAST
@given(data=st.binary(max_size=400), expect=st.sampled_from(TYPES))
def test_random_bytes_raise_only_wire_error(data, expect):
    decode_or_wire_error(data, expect)
    with contextlib.suppress(WireError):
        decode_client_state(data)


@st.composite
def mutated(draw):
    message = draw(messages)
    data = bytearray(encode_secagg(message))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x12, 0x1A]))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        elif kind == "splice":
            data += data[at : at + draw(st.integers(1, 16))]
    return type(message), bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated(), other=st.sampled_from(TYPES))
def test_mutated_messages_raise_only_wire_error(case, other):
    expect, data = case
    decode_or_wire_error(data, expect)
    decode_or_wire_error(data, other)


@pytest.mark.parametrize("cut", range(1, 4))
def test_every_truncation_raises_only_wire_error(cut):
    params, _, clients, _, _ = _round_states()
    samples = [
        Setup(params=params, slot=cut),
        clients[cut].advertise(),
        UnmaskReply(
            slot=cut,
            seed_shares=(RevealedShare(owner=1, holder=cut, share=bytes(66)),),
            key_shares=(RevealedShare(owner=2, holder=cut, share=b"\x01" * 66),),
        ),
        MaskedInputReply(slot=cut, masked=np.arange(5, dtype=np.uint64)),
        UnmaskRequest(
            survivors=(1, 2, 3), signatures=(ConsistencyReply(slot=cut, signature=b"s" * 103),)
        ),
    ]
    for message in samples:
        data = encode_secagg(message)
        for end in range(len(data)):
            decode_or_wire_error(data[:end], type(message))
    state = encode_client_state(clients[cut].state())
    for end in range(len(state)):
        with contextlib.suppress(WireError):
            decode_client_state(state[:end])


def _envelope(**stage) -> pb.SecAggMessage:
    return pb.SecAggMessage(version=2, **stage)


def _good_params() -> pb.SecAggParams:
    return pb.SecAggParams(
        run="r",
        server_round=1,
        cohort=3,
        degree=2,
        threshold=2,
        clip_range=1.0,
        bits=8,
        weight_cap=10,
        ring_bits=32,
        graph_seed=1,
    )


def _params_with(**fields) -> pb.SecAggParams:
    p = _good_params()
    for name, value in fields.items():
        setattr(p, name, value)
    return p


def _named(names: list[str]) -> pb.SecAggParams:
    p = _good_params()
    p.names.extend(names)
    return p


KEY = bytes(range(32))


@pytest.mark.parametrize(
    ("expect", "envelope", "message"),
    [
        (AdvertiseKeys, pb.SecAggMessage(version=1), "version: expected 2, got 1"),
        (AdvertiseKeys, pb.SecAggMessage(), "version: expected 2, got 0"),
        (
            AdvertiseKeys,
            _envelope(advertise_keys=pb.AdvertiseKeys(slot=1, encryption_key=KEY, masking_key=KEY)),
            "signature: expected 1..112 bytes, got 0",
        ),
        (
            UnmaskRequest,
            _envelope(
                unmask_request=pb.UnmaskRequest(
                    survivors=[1], signatures=[pb.ConsistencyReply(slot=1, signature=bytes(113))]
                )
            ),
            "signature: expected 1..112 bytes, got 113",
        ),
        (
            Setup,
            _envelope(setup=pb.Setup(params=_named(["a", "a", "b"]), slot=1)),
            "secagg names",
        ),
        (
            Setup,
            _envelope(setup=pb.Setup(params=_named(["a", "", "b"]), slot=1)),
            "node name: expected 1..255 characters, got 0",
        ),
        (AdvertiseKeys, _envelope(), "expected stage advertise_keys, got None"),
        (
            AdvertiseKeys,
            _envelope(unmask_request=pb.UnmaskRequest(survivors=[1])),
            "expected stage advertise_keys, got unmask_request",
        ),
        (
            AdvertiseKeys,
            _envelope(
                advertise_keys=pb.AdvertiseKeys(
                    slot=1, encryption_key=KEY[:31], masking_key=KEY, signature=b"s"
                )
            ),
            "key: expected 32 bytes, got 31",
        ),
        (
            AdvertiseKeys,
            _envelope(
                advertise_keys=pb.AdvertiseKeys(slot=1, encryption_key=KEY, masking_key=KEY + b"!")
            ),
            "key: expected 32 bytes, got 33",
        ),
        (
            AdvertiseKeys,
            _envelope(advertise_keys=pb.AdvertiseKeys(slot=0, encryption_key=KEY, masking_key=KEY)),
            "slot: expected 1..",
        ),
        (
            ShareKeysRequest,
            _envelope(
                share_keys_request=pb.ShareKeysRequest(
                    neighbours=[pb.NeighbourKeys(slot=2, encryption_key=b"", masking_key=KEY)]
                )
            ),
            "key: expected 32 bytes, got 0",
        ),
        (
            MaskedInputReply,
            _envelope(
                masked_input_reply=pb.MaskedInputReply(slot=1, ring_bits=16, masked=bytes(8))
            ),
            "ring_bits 16",
        ),
        (
            MaskedInputReply,
            _envelope(
                masked_input_reply=pb.MaskedInputReply(slot=1, ring_bits=64, masked=bytes(12))
            ),
            "whole integers",
        ),
        (
            UnmaskRequest,
            _envelope(unmask_request=pb.UnmaskRequest(survivors=[1, 2**20])),
            "slot: expected",
        ),
        (
            UnmaskReply,
            _envelope(
                unmask_reply=pb.UnmaskReply(
                    slot=1, seed_shares=[pb.RevealedShare(owner=0, holder=1, share=bytes(66))]
                )
            ),
            "slot: expected",
        ),
        (Setup, _envelope(setup=pb.Setup(slot=1)), "secure aggregation parameters"),
        (
            Setup,
            _envelope(setup=pb.Setup(params=_params_with(threshold=1), slot=1)),
            "secagg threshold",
        ),
        (
            Setup,
            _envelope(setup=pb.Setup(params=_params_with(clip_range=float("nan")), slot=1)),
            "secagg clip-range",
        ),
        (
            Setup,
            _envelope(setup=pb.Setup(params=_params_with(ring_bits=16), slot=1)),
            "secagg ring-bits",
        ),
        (
            Setup,
            _envelope(setup=pb.Setup(params=_params_with(bits=30, weight_cap=2**40), slot=1)),
            "overflow",
        ),
        (
            Setup,
            _envelope(
                setup=pb.Setup(params=_params_with(cohort=10, degree=3, threshold=3), slot=1)
            ),
            "secagg degree",
        ),
    ],
)
def test_well_formed_but_invalid_messages_raise_wire_error(expect, envelope, message):
    with pytest.raises(WireError, match=message):
        decode_secagg(envelope.SerializeToString(), expect=expect)


def test_invalid_utf8_in_a_string_field_raises_wire_error():
    # version 2; setup { params { run: b"\xff" } }
    data = bytes.fromhex("0802 1205 0a03 0a01ff")
    with pytest.raises(WireError, match=r"not a fedguard\.v1\.SecAggMessage"):
        decode_secagg(data, expect=Setup)


def test_valid_hand_built_envelope_decodes():
    data = _envelope(setup=pb.Setup(params=_good_params(), slot=3)).SerializeToString()
    setup = decode_secagg(data, expect=Setup)
    assert setup.slot == 3 and setup.params.threshold == 2 and setup.params.names == ()


def test_invalid_client_states_raise_wire_error():
    _, _, clients, _, _ = _round_states()
    state = clients[1].state()
    with pytest.raises(WireError, match="no parameters"):
        decode_client_state(pb.ClientState(slot=1).SerializeToString())
    for field in ("encryption_private", "masking_private", "seed"):
        broken = dataclasses.replace(state, **{field: b"short"})
        with pytest.raises(WireError, match="key: expected 32 bytes"):
            decode_client_state(encode_client_state(broken))
    with pytest.raises(WireError, match="slot"):
        decode_client_state(encode_client_state(dataclasses.replace(state, slot=0)))
    with pytest.raises(WireError, match=r"not a fedguard\.v1\.ClientState"):
        decode_client_state(b"\xff\xff\xff")


def test_encoding_refuses_what_is_not_a_secagg_message():
    with pytest.raises(TypeError, match="not a secure-aggregation message"):
        encode_secagg(ClientState)  # type: ignore[arg-type]
