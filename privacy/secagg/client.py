"""A node's side of one SecAgg+ round: a small state machine over the four stages.

The node never reveals both kinds of share of one neighbour (self-mask seed and masking
key): with both, the server could unmask that neighbour's individual input. It also
refuses to go on when fewer than ``max(threshold, min_holders)`` of its neighbourhood
(itself included) are still there, so a server that drops nodes cannot isolate one
update. Its state can be exported (:meth:`SecAggClient.state`) and restored, because a
deployed node handles each stage in a fresh process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import _hazmat as hz
from . import shamir
from .messages import (
    AdvertiseKeys,
    MaskedInputReply,
    MaskedInputRequest,
    NeighbourKeys,
    RevealedShare,
    SealedShare,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)
from .params import SecAggParams, neighbours
from .quantize import quantize

__all__ = ["ClientState", "SecAggClient", "pairwise_mask_key", "self_mask_key"]

_STAGE_SHARE, _STAGE_MASK, _STAGE_UNMASK, _STAGE_DONE = 1, 2, 3, 4
_PLAIN_VERSION = 1
_PLAIN_BYTES = 1 + 4 + 4 + 2 * shamir.SHARE_BYTES


@dataclass(kw_only=True)
class ClientState:
    """Everything a node must keep between stages (secret: store it like a private key)."""

    params: SecAggParams
    slot: int
    stage: int
    encryption_private: bytes
    masking_private: bytes
    seed: bytes
    neighbour_keys: dict[int, NeighbourKeys] = field(default_factory=dict)
    # Shares held by this node, by owner slot (its own included): (seed share, key share).
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)


def self_mask_key(params: SecAggParams, *, slot: int, seed: bytes) -> bytes:
    return hz.derive_key(seed, purpose="self-mask", context=params.context() + b"\x00%d" % slot)


def pairwise_mask_key(
    params: SecAggParams, *, private: bytes, peer_public: bytes, slots: tuple[int, int]
) -> bytes:
    low, high = sorted(slots)
    shared = hz.agree(private, peer_public)
    return hz.derive_key(
        shared, purpose="pairwise-mask", context=params.context() + b"\x00%d-%d" % (low, high)
    )


def _share_key(state: ClientState, *, peer: NeighbourKeys, sender: int, receiver: int) -> bytes:
    shared = hz.agree(state.encryption_private, peer.encryption_key)
    return hz.derive_key(
        shared,
        purpose="share-seal",
        context=state.params.context() + b"\x00%d>%d" % (sender, receiver),
    )


def _aad(params: SecAggParams, sender: int, receiver: int) -> bytes:
    return params.context() + b"\x00%d>%d" % (sender, receiver)


class SecAggClient:
    """One node in one round. ``min_holders``: the node's own floor on live neighbourhood."""

    def __init__(self, state: ClientState, *, min_holders: int = 0) -> None:
        self._s = state
        self._min = max(state.params.threshold, min_holders)
        self._neighbours = set(neighbours(state.params, state.slot))

    @classmethod
    def create(cls, *, params: SecAggParams, slot: int, min_holders: int = 0) -> SecAggClient:
        """A node with fresh keys and self-mask seed from the OS CSPRNG."""
        enc, _ = hz.new_keypair()
        mask, _ = hz.new_keypair()
        state = ClientState(
            params=params,
            slot=slot,
            stage=_STAGE_SHARE,
            encryption_private=enc,
            masking_private=mask,
            seed=os.urandom(hz.KEY_BYTES),
        )
        return cls(state, min_holders=min_holders)

    def state(self) -> ClientState:
        return self._s

    def _expect(self, stage: int) -> None:
        if self._s.stage != stage:
            raise hz.SecAggError(f"protocol stage {stage} requested in stage {self._s.stage}")
        self._s.stage = -1  # a failure below leaves the session unusable

    def _check_live(self, live: int, what: str) -> None:
        if live < self._min:
            raise hz.SecAggError(
                f"only {live} of this node's {len(self._neighbours) + 1}-node neighbourhood "
                f"{what}; at least {self._min} required: refusing, so no update is isolated"
            )

    def advertise(self) -> AdvertiseKeys:
        s = self._s
        return AdvertiseKeys(
            slot=s.slot,
            encryption_key=hz.public_key(s.encryption_private),
            masking_key=hz.public_key(s.masking_private),
        )

    def share_keys(self, request: ShareKeysRequest) -> ShareKeysReply:
        """Split the seed and the masking key among the neighbourhood; seal each share."""
        self._expect(_STAGE_SHARE)
        s, p = self._s, self._s.params
        own = self.advertise()
        keys: dict[int, NeighbourKeys] = {}
        for nk in request.neighbours:
            if nk.slot not in self._neighbours or nk.slot in keys:
                raise hz.SecAggError(f"slot {nk.slot} is not a neighbour, or listed twice")
            if own.encryption_key in (nk.encryption_key, nk.masking_key) or (
                own.masking_key in (nk.encryption_key, nk.masking_key)
            ):
                raise hz.SecAggError("a neighbour presented this node's own key")
            keys[nk.slot] = nk
        self._check_live(len(keys) + 1, "advertised keys")
        holders = [s.slot, *sorted(keys)]
        seed_shares = shamir.split(s.seed, threshold=p.threshold, holders=holders)
        key_shares = shamir.split(s.masking_private, threshold=p.threshold, holders=holders)
        s.held = {s.slot: (seed_shares[s.slot], key_shares[s.slot])}
        sealed = []
        for slot in sorted(keys):
            plain = (
                bytes([_PLAIN_VERSION])
                + s.slot.to_bytes(4, "big")
                + slot.to_bytes(4, "big")
                + seed_shares[slot]
                + key_shares[slot]
            )
            key = _share_key(s, peer=keys[slot], sender=s.slot, receiver=slot)
            sealed.append(
                SealedShare(
                    sender=s.slot,
                    receiver=slot,
                    ciphertext=hz.seal(key, plain, aad=_aad(p, s.slot, slot)),
                )
            )
        s.neighbour_keys = keys
        s.stage = _STAGE_MASK
        return ShareKeysReply(slot=s.slot, shares=tuple(sealed))

    def masked_input(
        self,
        request: MaskedInputRequest,
        *,
        update: Sequence[np.ndarray],
        weight: int,
        rng: np.random.Generator,
    ) -> MaskedInputReply:
        """Open the neighbours' shares, then mask the quantised, weighted update."""
        self._expect(_STAGE_MASK)
        s, p = self._s, self._s.params
        if not 1 <= weight <= p.weight_cap:
            weight = min(max(weight, 1), p.weight_cap)  # capped: no node outweighs the cap
        for sealed in request.shares:
            peer = s.neighbour_keys.get(sealed.sender)
            if peer is None or sealed.receiver != s.slot or sealed.sender in s.held:
                raise hz.SecAggError(f"unexpected share from slot {sealed.sender}")
            key = _share_key(s, peer=peer, sender=sealed.sender, receiver=s.slot)
            plain = hz.open_sealed(key, sealed.ciphertext, aad=_aad(p, sealed.sender, s.slot))
            header = bytes([_PLAIN_VERSION]) + sealed.sender.to_bytes(4, "big")
            if len(plain) != _PLAIN_BYTES or plain[:5] != header:
                raise hz.SecAggError("malformed share")
            if int.from_bytes(plain[5:9], "big") != s.slot:
                raise hz.SecAggError("malformed share")
            mid = 9 + shamir.SHARE_BYTES
            s.held[sealed.sender] = (plain[9:mid], plain[mid:])
        self._check_live(len(s.held), "shared keys")
        encoded = quantize(
            update, weight=weight, clip_range=p.clip_range, bits=p.bits, dtype=p.dtype, rng=rng
        )
        masked = encoded.vector
        expander = hz.MaskExpander(length=masked.size, dtype=p.dtype)
        masked += expander.expand(self_mask_key(p, slot=s.slot, seed=s.seed))
        for peer_slot in sorted(set(s.held) - {s.slot}):
            key = pairwise_mask_key(
                p,
                private=s.masking_private,
                peer_public=s.neighbour_keys[peer_slot].masking_key,
                slots=(s.slot, peer_slot),
            )
            mask = expander.expand(key)
            if s.slot < peer_slot:
                masked += mask
            else:
                masked -= mask
        s.stage = _STAGE_UNMASK
        return MaskedInputReply(slot=s.slot, masked=masked)

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Reveal seed shares of survivors and key shares of the dropped, never both."""
        self._expect(_STAGE_UNMASK)
        s = self._s
        survivors, dropped = set(request.survivors), set(request.dropped)
        known = set(s.held) - {s.slot}
        if survivors & dropped or not (survivors | dropped) <= known or s.slot in dropped:
            raise hz.SecAggError("unmask request names a node as both survivor and dropped")
        self._check_live(len(survivors) + 1, "sent masked inputs")
        seed_shares = tuple(
            RevealedShare(owner=o, holder=s.slot, share=s.held[o][0])
            for o in sorted(survivors | {s.slot})
        )
        key_shares = tuple(
            RevealedShare(owner=o, holder=s.slot, share=s.held[o][1]) for o in sorted(dropped)
        )
        s.stage = _STAGE_DONE
        return UnmaskReply(slot=s.slot, seed_shares=seed_shares, key_shares=key_shares)
