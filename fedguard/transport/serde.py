"""fedguard's dataclasses <-> ``fedguard.v1`` protobuf bytes (``protos/``).

Decoding never trusts the bytes: a parse error, a missing stage, an unknown version, an
oversized field or a value out of range raises :class:`WireError` (one documented error
type, whatever the input), and nothing is ever unpickled.
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf.message import DecodeError

from fedguard.errors import FedguardError
from fedguard.privacy.receipts import PrivacyReceipt
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
    SecAggParams,
    Setup,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)
from fedguard.proto.v1 import receipt_pb2 as rpb
from fedguard.proto.v1 import secagg_pb2 as pb

__all__ = [
    "SECAGG_WIRE_VERSION",
    "WIRE_VERSION",
    "SecAggPayload",
    "WireError",
    "decode_client_state",
    "decode_receipt",
    "decode_secagg",
    "encode_client_state",
    "encode_receipt",
    "encode_secagg",
]

WIRE_VERSION = 1
SECAGG_WIRE_VERSION = 2
"""``SecAggMessage.version``: 2 since the consistency stage (a version-1 peer is refused)."""
_MAX_SLOTS = 1 << 20  # far above any cohort; bounds what a hostile peer can make us build
_KEY_BYTES = 32
_MAX_SIGNATURE = 112  # DER ECDSA P-384 is at most 104 bytes
_MAX_NAME = 255


class WireError(FedguardError, ValueError):
    """Bytes that are not a valid fedguard message of the expected kind."""


SecAggPayload = (
    Setup
    | AdvertiseKeys
    | ShareKeysRequest
    | ShareKeysReply
    | MaskedInputRequest
    | MaskedInputReply
    | ConsistencyRequest
    | ConsistencyReply
    | UnmaskRequest
    | UnmaskReply
)


def _params_pb(p: SecAggParams) -> pb.SecAggParams:
    return pb.SecAggParams(
        run=p.run,
        server_round=p.server_round,
        cohort=p.cohort,
        degree=p.degree,
        threshold=p.threshold,
        clip_range=p.clip_range,
        bits=p.bits,
        weight_cap=p.weight_cap,
        ring_bits=p.ring_bits,
        graph_seed=p.graph_seed,
        names=list(p.names),
        max_colluding=p.max_colluding,
    )


def _params(m: pb.SecAggParams) -> SecAggParams:
    try:
        return SecAggParams(
            run=m.run,
            server_round=m.server_round,
            cohort=m.cohort,
            degree=m.degree,
            threshold=m.threshold,
            clip_range=m.clip_range,
            bits=m.bits,
            weight_cap=m.weight_cap,
            ring_bits=m.ring_bits,
            graph_seed=m.graph_seed,
            names=tuple(_name(n) for n in m.names),
            max_colluding=m.max_colluding,
        )
    except ValueError as exc:  # ConfigError from the parameter checks
        raise WireError(f"secure aggregation parameters: {exc}") from None


def _slot(value: int) -> int:
    if not 0 < value < _MAX_SLOTS:
        raise WireError(f"slot: expected 1..{_MAX_SLOTS - 1}, got {value}")
    return int(value)


def _key(value: bytes) -> bytes:
    if len(value) != _KEY_BYTES:
        raise WireError(f"key: expected {_KEY_BYTES} bytes, got {len(value)}")
    return bytes(value)


def _signature(value: bytes) -> bytes:
    if not 0 < len(value) <= _MAX_SIGNATURE:
        raise WireError(f"signature: expected 1..{_MAX_SIGNATURE} bytes, got {len(value)}")
    return bytes(value)


def _name(value: str) -> str:
    if not 0 < len(value) <= _MAX_NAME:
        raise WireError(f"node name: expected 1..{_MAX_NAME} characters, got {len(value)}")
    return str(value)


def _consistency_pb(c: ConsistencyReply) -> pb.ConsistencyReply:
    return pb.ConsistencyReply(slot=c.slot, signature=c.signature)


def _consistency(m: pb.ConsistencyReply) -> ConsistencyReply:
    return ConsistencyReply(slot=_slot(m.slot), signature=_signature(m.signature))


def _sealed_pb(s: SealedShare) -> pb.SealedShare:
    return pb.SealedShare(sender=s.sender, receiver=s.receiver, ciphertext=s.ciphertext)


def _sealed(m: pb.SealedShare) -> SealedShare:
    return SealedShare(
        sender=_slot(m.sender), receiver=_slot(m.receiver), ciphertext=bytes(m.ciphertext)
    )


def _nk_pb(n: NeighbourKeys) -> pb.NeighbourKeys:
    return pb.NeighbourKeys(
        slot=n.slot,
        encryption_key=n.encryption_key,
        masking_key=n.masking_key,
        signature=n.signature,
    )


def _nk(m: pb.NeighbourKeys) -> NeighbourKeys:
    return NeighbourKeys(
        slot=_slot(m.slot),
        encryption_key=_key(m.encryption_key),
        masking_key=_key(m.masking_key),
        signature=_signature(m.signature),
    )


def _reveal_pb(r: RevealedShare) -> pb.RevealedShare:
    return pb.RevealedShare(owner=r.owner, holder=r.holder, share=r.share)


def _reveal(m: pb.RevealedShare) -> RevealedShare:
    return RevealedShare(owner=_slot(m.owner), holder=_slot(m.holder), share=bytes(m.share))


def encode_secagg(payload: SecAggPayload) -> bytes:
    """One stage's message as ``fedguard.v1.SecAggMessage`` bytes."""
    env = pb.SecAggMessage(version=SECAGG_WIRE_VERSION)
    match payload:
        case Setup():
            env.setup.CopyFrom(pb.Setup(params=_params_pb(payload.params), slot=payload.slot))
        case AdvertiseKeys():
            env.advertise_keys.CopyFrom(
                pb.AdvertiseKeys(
                    slot=payload.slot,
                    encryption_key=payload.encryption_key,
                    masking_key=payload.masking_key,
                    signature=payload.signature,
                )
            )
        case ShareKeysRequest():
            env.share_keys_request.neighbours.extend(_nk_pb(n) for n in payload.neighbours)
        case ShareKeysReply():
            env.share_keys_reply.slot = payload.slot
            env.share_keys_reply.shares.extend(_sealed_pb(s) for s in payload.shares)
        case MaskedInputRequest():
            env.masked_input_request.shares.extend(_sealed_pb(s) for s in payload.shares)
        case MaskedInputReply():
            masked = payload.masked
            bits = masked.dtype.itemsize * 8
            env.masked_input_reply.CopyFrom(
                pb.MaskedInputReply(
                    slot=payload.slot,
                    ring_bits=bits,
                    masked=masked.astype(masked.dtype.newbyteorder("<"), copy=False).tobytes(),
                )
            )
        case ConsistencyRequest():
            env.consistency_request.survivors.extend(payload.survivors)
        case ConsistencyReply():
            env.consistency_reply.CopyFrom(_consistency_pb(payload))
        case UnmaskRequest():
            env.unmask_request.survivors.extend(payload.survivors)
            env.unmask_request.signatures.extend(_consistency_pb(c) for c in payload.signatures)
        case UnmaskReply():
            env.unmask_reply.slot = payload.slot
            env.unmask_reply.seed_shares.extend(_reveal_pb(r) for r in payload.seed_shares)
            env.unmask_reply.key_shares.extend(_reveal_pb(r) for r in payload.key_shares)
        case _:
            raise TypeError(f"not a secure-aggregation message: {type(payload).__name__}")
    return env.SerializeToString()


def decode_secagg(
    data: bytes, *, expect: type[SecAggPayload] | tuple[type[SecAggPayload], ...]
) -> SecAggPayload:
    """Parse ``SecAggMessage`` bytes holding a stage among ``expect`` (dataclass types)."""
    env = pb.SecAggMessage()
    try:
        env.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WireError(f"not a fedguard.v1.SecAggMessage: {exc}") from None
    if env.version != SECAGG_WIRE_VERSION:
        raise WireError(f"SecAggMessage version: expected {SECAGG_WIRE_VERSION}, got {env.version}")
    stage = env.WhichOneof("stage")
    allowed = expect if isinstance(expect, tuple) else (expect,)
    wanted = [_STAGE_OF[t] for t in allowed]
    if stage not in wanted:
        raise WireError(f"SecAggMessage: expected stage {' or '.join(wanted)}, got {stage}")
    expect = next(t for t in allowed if _STAGE_OF[t] == stage)
    m = getattr(env, stage)
    if expect is Setup:
        return Setup(params=_params(m.params), slot=_slot(m.slot))
    if expect is AdvertiseKeys:
        return AdvertiseKeys(
            slot=_slot(m.slot),
            encryption_key=_key(m.encryption_key),
            masking_key=_key(m.masking_key),
            signature=_signature(m.signature),
        )
    if expect is ShareKeysRequest:
        return ShareKeysRequest(neighbours=tuple(_nk(n) for n in m.neighbours))
    if expect is ShareKeysReply:
        return ShareKeysReply(slot=_slot(m.slot), shares=tuple(_sealed(s) for s in m.shares))
    if expect is MaskedInputRequest:
        return MaskedInputRequest(shares=tuple(_sealed(s) for s in m.shares))
    if expect is MaskedInputReply:
        dtypes: dict[int, np.dtype[np.unsignedinteger]] = {
            32: np.dtype("<u4"),
            64: np.dtype("<u8"),
        }
        dtype = dtypes.get(m.ring_bits)
        if dtype is None or len(m.masked) % dtype.itemsize:
            raise WireError(
                f"masked input: expected ring_bits 32 or 64 and whole integers, "
                f"got ring_bits {m.ring_bits} with {len(m.masked)} bytes"
            )
        masked = np.frombuffer(m.masked, dtype=dtype).astype(dtype.newbyteorder("="))
        return MaskedInputReply(slot=_slot(m.slot), masked=masked)
    if expect is ConsistencyRequest:
        return ConsistencyRequest(survivors=tuple(_slot(s) for s in m.survivors))
    if expect is ConsistencyReply:
        return _consistency(m)
    if expect is UnmaskRequest:
        return UnmaskRequest(
            survivors=tuple(_slot(s) for s in m.survivors),
            signatures=tuple(_consistency(c) for c in m.signatures),
        )
    return UnmaskReply(
        slot=_slot(m.slot),
        seed_shares=tuple(_reveal(r) for r in m.seed_shares),
        key_shares=tuple(_reveal(r) for r in m.key_shares),
    )


_STAGE_OF: dict[type, str] = {
    Setup: "setup",
    AdvertiseKeys: "advertise_keys",
    ShareKeysRequest: "share_keys_request",
    ShareKeysReply: "share_keys_reply",
    MaskedInputRequest: "masked_input_request",
    MaskedInputReply: "masked_input_reply",
    ConsistencyRequest: "consistency_request",
    ConsistencyReply: "consistency_reply",
    UnmaskRequest: "unmask_request",
    UnmaskReply: "unmask_reply",
}


def encode_client_state(state: ClientState) -> bytes:
    """A node's between-stages secret state as ``fedguard.v1.ClientState`` bytes."""
    m = pb.ClientState(
        params=_params_pb(state.params),
        slot=state.slot,
        stage=state.stage,
        encryption_private=state.encryption_private,
        masking_private=state.masking_private,
        seed=state.seed,
        signed=list(state.signed),
    )
    m.neighbours.extend(_nk_pb(n) for _, n in sorted(state.neighbour_keys.items()))
    m.held.extend(
        pb.HeldShares(owner=o, seed_share=s, key_share=k)
        for o, (s, k) in sorted(state.held.items())
    )
    return m.SerializeToString()


def decode_client_state(data: bytes) -> ClientState:
    m = pb.ClientState()
    try:
        m.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WireError(f"not a fedguard.v1.ClientState: {exc}") from None
    if not m.HasField("params"):
        raise WireError("ClientState: no parameters")
    return ClientState(
        params=_params(m.params),
        slot=_slot(m.slot),
        stage=int(m.stage),
        encryption_private=_key(m.encryption_private),
        masking_private=_key(m.masking_private),
        seed=_key(m.seed),
        neighbour_keys={n.slot: _nk(n) for n in m.neighbours},
        held={_slot(h.owner): (bytes(h.seed_share), bytes(h.key_share)) for h in m.held},
        signed=tuple(_slot(s) for s in m.signed),
    )


def encode_receipt(receipt: PrivacyReceipt) -> bytes:
    """A privacy receipt as ``fedguard.v1.PrivacyReceipt`` bytes."""
    return rpb.PrivacyReceipt(
        version=WIRE_VERSION,
        run=receipt.run,
        server_round=receipt.server_round,
        dataset_fingerprint=receipt.dataset_fingerprint,
        sample_rate=receipt.sample_rate,
        noise_multiplier=receipt.noise_multiplier,
        steps=receipt.steps,
        max_grad_norm=receipt.max_grad_norm,
        epsilon=receipt.epsilon,
        delta=receipt.delta,
        accountant=receipt.accountant,
        ledger_seq=receipt.ledger_seq,
        ledger_hash=receipt.ledger_hash,
        committed=receipt.committed,
    ).SerializeToString()


def decode_receipt(data: bytes) -> PrivacyReceipt:
    """Parse and check a receipt: finite, in-range figures; raises :class:`WireError`."""
    m = rpb.PrivacyReceipt()
    try:
        m.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WireError(f"not a fedguard.v1.PrivacyReceipt: {exc}") from None
    if m.version != WIRE_VERSION:
        raise WireError(f"PrivacyReceipt version: expected {WIRE_VERSION}, got {m.version}")
    # Absent: withheld by the node, as they give away its record count.
    sample_rate = m.sample_rate if m.HasField("sample_rate") else None
    noise_multiplier = m.noise_multiplier if m.HasField("noise_multiplier") else None
    checks = (
        ("sample_rate", sample_rate, sample_rate is None or 0 < sample_rate <= 1, "in (0, 1]"),
        (
            "noise_multiplier",
            noise_multiplier,
            noise_multiplier is None or noise_multiplier >= 0,
            ">= 0",
        ),
        ("max_grad_norm", m.max_grad_norm, m.max_grad_norm > 0, "> 0"),
        ("epsilon", m.epsilon, m.epsilon >= 0, ">= 0"),
        ("delta", m.delta, 0 < m.delta < 1, "in (0, 1)"),
    )
    for key, value, ok, allowed in checks:
        if not ((value is None or math.isfinite(value)) and ok):
            raise WireError(
                f"PrivacyReceipt {key}: expected a finite number {allowed}, got {value}"
            )
    if m.accountant not in ("rdp", "prv") or len(m.ledger_hash) != 64:
        raise WireError(
            f"PrivacyReceipt: expected accountant rdp or prv and a 64-hex ledger hash, "
            f"got {m.accountant!r} and {len(m.ledger_hash)} characters"
        )
    return PrivacyReceipt(
        run=m.run,
        server_round=m.server_round,
        dataset_fingerprint=m.dataset_fingerprint,
        sample_rate=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=m.steps if m.HasField("steps") else None,
        max_grad_norm=m.max_grad_norm,
        epsilon=m.epsilon,
        delta=m.delta,
        accountant=m.accountant,
        ledger_seq=m.ledger_seq,
        ledger_hash=m.ledger_hash,
        committed=m.committed,
    )
