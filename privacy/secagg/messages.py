"""The messages of one SecAgg+ round, as plain dataclasses.

Stages (server -> node request, node -> server reply):

0. setup: :class:`~fedguard.privacy.secagg.params.SecAggParams` (with the node names by
   slot) and the node's slot -> :class:`AdvertiseKeys` (two X25519 public keys, signed
   with the node key).
1. :class:`ShareKeysRequest` (the neighbours' signed public keys) -> :class:`ShareKeysReply`
   (Shamir shares of the node's self-mask seed and masking key, sealed to each neighbour).
2. :class:`MaskedInputRequest` (the sealed shares addressed to the node) ->
   :class:`MaskedInputReply` (the quantised update plus self mask and pairwise masks).
3. :class:`ConsistencyRequest` (the survivor set: every slot whose masked input arrived)
   -> :class:`ConsistencyReply` (the node's signature on that set; it signs one set only).
4. :class:`UnmaskRequest` (the survivor set and the signatures collected on it) ->
   :class:`UnmaskReply` (self-mask shares of survivors, key shares of the dropped).

``fedguard.transport.serde`` maps each onto its ``fedguard.v1`` protobuf message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import SecAggParams

__all__ = [
    "AdvertiseKeys",
    "ConsistencyReply",
    "ConsistencyRequest",
    "MaskedInputReply",
    "MaskedInputRequest",
    "NeighbourKeys",
    "RevealedShare",
    "SealedShare",
    "Setup",
    "ShareKeysReply",
    "ShareKeysRequest",
    "UnmaskReply",
    "UnmaskRequest",
]


@dataclass(frozen=True)
class Setup:
    params: SecAggParams
    slot: int  # 1..cohort; also the node's Shamir x coordinate


@dataclass(frozen=True)
class AdvertiseKeys:
    slot: int
    encryption_key: bytes  # X25519 public key: seals the shares sent to this node
    masking_key: bytes  # X25519 public key: pairwise masks with this node
    signature: bytes  # ECDSA P-384 (node key) over context, slot and both keys


@dataclass(frozen=True)
class NeighbourKeys:
    slot: int
    encryption_key: bytes
    masking_key: bytes
    signature: bytes  # the neighbour's, passed on unchanged: nodes check it, not the server


@dataclass(frozen=True)
class ShareKeysRequest:
    neighbours: tuple[NeighbourKeys, ...]


@dataclass(frozen=True)
class SealedShare:
    sender: int
    receiver: int
    ciphertext: bytes


@dataclass(frozen=True)
class ShareKeysReply:
    slot: int
    shares: tuple[SealedShare, ...]


@dataclass(frozen=True)
class MaskedInputRequest:
    shares: tuple[SealedShare, ...]  # addressed to the receiving node


@dataclass(frozen=True)
class MaskedInputReply:
    slot: int
    masked: np.ndarray  # ring integers, update levels x weight, then weight


@dataclass(frozen=True)
class ConsistencyRequest:
    survivors: tuple[int, ...]  # every cohort slot whose masked input arrived (U3)


@dataclass(frozen=True)
class ConsistencyReply:
    slot: int
    signature: bytes  # ECDSA P-384 (node key) over context and the sorted survivor set


@dataclass(frozen=True)
class UnmaskRequest:
    survivors: tuple[int, ...]  # the survivor set (U3), as in ConsistencyRequest
    signatures: tuple[ConsistencyReply, ...]  # the signatures the server collected on it


@dataclass(frozen=True)
class RevealedShare:
    owner: int  # whose secret this is a share of
    holder: int  # the Shamir x coordinate (the revealing node's slot)
    share: bytes


@dataclass(frozen=True)
class UnmaskReply:
    slot: int
    seed_shares: tuple[RevealedShare, ...]  # of survivors' self-mask seeds
    key_shares: tuple[RevealedShare, ...]  # of dropped nodes' masking keys
