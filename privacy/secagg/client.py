"""A node's side of one SecAgg+ round: a small state machine over the four stages.

The node never reveals both kinds of share of one neighbour (self-mask seed and masking
key): with both, the server could unmask that neighbour's individual input. It also
refuses to go on when fewer than ``max(threshold, min_holders)`` of its neighbourhood
(itself included) are still there, so a server that drops nodes cannot isolate one
update. Its state can be exported (:meth:`SecAggClient.state`) and restored, because a
deployed node handles each stage in a fresh process.

Against a server that lies (Bell et al. 2020, the malicious setting): every node signs its
advertised keys with its node key, and checks each neighbour's signature against a roster
of node keys the server cannot alter; before it reveals anything, it signs the one
survivor set it was told and reveals only for that set, once at least :func:`quorum`
distinct survivors have signed it too. Two different survivor sets with a quorum each
would need ``2q - n > c`` nodes to sign both: more than the ``c`` colluding nodes allowed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from . import _hazmat as hz
from . import shamir
from .messages import (
    AdvertiseKeys,
    ConsistencyReply,
    ConsistencyRequest,
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
from .signing import Roster, advertise_message, consistency_message, quorum

__all__ = ["ClientState", "SecAggClient", "pairwise_mask_key", "self_mask_key"]

_STAGE_SHARE, _STAGE_MASK, _STAGE_CONSISTENCY, _STAGE_UNMASK, _STAGE_DONE = 1, 2, 3, 4, 5

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
    # The one survivor set this node signed (consistency stage); it never signs another.
    signed: tuple[int, ...] = ()


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
    """One node in one round.

    ``signing_key``: the node key (signs its keys and the survivor set). ``roster``: every
    node's public key by name. ``min_holders``: the node's own floor on its live
    neighbourhood. ``max_colluding``: how many nodes this node assumes may collude with the
    server: it refuses a session assuming fewer (the session's value sets the
    :func:`quorum`, the same for every node) or whose threshold they could meet alone.
    """

    def __init__(
        self,
        state: ClientState,
        *,
        signing_key: ec.EllipticCurvePrivateKey,
        roster: Roster,
        min_holders: int = 0,
        max_colluding: int = 0,
    ) -> None:
        p = state.params
        self._s = state
        self._min = max(p.threshold, min_holders)
        self._neighbours = set(neighbours(p, state.slot))
        self._key = signing_key
        if not p.names:
            raise hz.SecAggError("the session names no nodes: refusing (no key to check)")
        missing = [n for n in p.names if n not in roster]
        if missing:
            raise hz.SecAggError(
                f"node {missing[0]!r} (slot {p.names.index(missing[0]) + 1}) is not in this "
                "node's roster: refusing (its signatures could not be checked)"
            )
        self._roster = {slot: roster[name] for slot, name in enumerate(p.names, start=1)}
        if not hz.same_public_key(self._roster[state.slot], signing_key.public_key()):
            raise hz.SecAggError(
                f"slot {state.slot} is {p.names[state.slot - 1]!r} in the session, whose "
                "roster key is not this node's key: refusing"
            )
        if max_colluding < 0:
            raise hz.SecAggError(f"max-colluding-nodes: expected >= 0, got {max_colluding}")
        if p.max_colluding < max_colluding:
            raise hz.SecAggError(
                f"the session assumes at most {p.max_colluding} colluding nodes, this node "
                f"{max_colluding}: refusing (its neighbours would reveal under a smaller quorum)"
            )
        if p.threshold <= p.max_colluding:
            raise hz.SecAggError(
                f"threshold {p.threshold} with {p.max_colluding} colluding nodes assumed: "
                "refusing (they alone could hold enough shares of a node)"
            )
        self._quorum = quorum(p)
        if self._quorum > p.cohort:
            raise hz.SecAggError(
                f"a quorum of {self._quorum} signatures (max-colluding-nodes "
                f"{p.max_colluding}) exceeds the cohort of {p.cohort}: refusing, no round "
                "could be unmasked"
            )

    @classmethod
    def create(
        cls,
        *,
        params: SecAggParams,
        slot: int,
        signing_key: ec.EllipticCurvePrivateKey,
        roster: Roster,
        min_holders: int = 0,
        max_colluding: int = 0,
    ) -> SecAggClient:
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
        return cls(
            state,
            signing_key=signing_key,
            roster=roster,
            min_holders=min_holders,
            max_colluding=max_colluding,
        )

    @property
    def quorum(self) -> int:
        return self._quorum

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
        """The node's two public keys, signed with its node key (ECDSA: a new signature
        each call; a deployed node stores the advert it sent)."""
        s = self._s
        enc, mask = hz.public_key(s.encryption_private), hz.public_key(s.masking_private)
        message = advertise_message(s.params, slot=s.slot, encryption=enc, masking=mask)
        return AdvertiseKeys(
            slot=s.slot,
            encryption_key=enc,
            masking_key=mask,
            signature=hz.sign(self._key, label=hz.SIGN_ADVERTISE, message=message),
        )

    def share_keys(self, request: ShareKeysRequest) -> ShareKeysReply:
        """Check each neighbour's signed keys, then split the seed and the masking key among
        the neighbourhood and seal each share."""
        self._expect(_STAGE_SHARE)
        s, p = self._s, self._s.params
        own = (hz.public_key(s.encryption_private), hz.public_key(s.masking_private))
        keys: dict[int, NeighbourKeys] = {}
        for nk in request.neighbours:
            if nk.slot not in self._neighbours or nk.slot in keys:
                raise hz.SecAggError(f"slot {nk.slot} is not a neighbour, or listed twice")
            if set(own) & {nk.encryption_key, nk.masking_key}:
                raise hz.SecAggError("a neighbour presented this node's own key")
            message = advertise_message(
                p, slot=nk.slot, encryption=nk.encryption_key, masking=nk.masking_key
            )
            if not hz.verify(
                self._roster[nk.slot], nk.signature, label=hz.SIGN_ADVERTISE, message=message
            ):
                raise hz.SecAggError(
                    f"slot {nk.slot} ({p.names[nk.slot - 1]!r}): its keys are not signed by its "
                    "roster key for this session: refusing (keys substituted on the way?)"
                )
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
        s.stage = _STAGE_CONSISTENCY
        return MaskedInputReply(slot=s.slot, masked=masked)

    def _survivor_set(self, survivors: Sequence[int]) -> tuple[int, ...]:
        s, n = self._s, self._s.params.cohort
        ordered = tuple(sorted(survivors))
        if len(set(ordered)) != len(ordered) or not all(1 <= x <= n for x in ordered):
            raise hz.SecAggError(f"survivor set repeats a slot or names one outside 1..{n}")
        if s.slot not in ordered:
            raise hz.SecAggError(f"survivor set leaves out this node (slot {s.slot})")
        return ordered

    def consistency(self, request: ConsistencyRequest) -> ConsistencyReply:
        """Sign the survivor set, once: this node never signs a second set in a session."""
        self._expect(_STAGE_CONSISTENCY)
        s = self._s
        survivors = self._survivor_set(request.survivors)
        if len(survivors) < self._quorum:
            raise hz.SecAggError(
                f"only {len(survivors)} survivors; a quorum of {self._quorum} signatures is "
                "required to unmask: refusing"
            )
        live = (set(s.held) - {s.slot}) & set(survivors)
        self._check_live(len(live) + 1, "sent masked inputs")
        message = consistency_message(s.params, survivors)
        signature = hz.sign(self._key, label=hz.SIGN_CONSISTENCY, message=message)
        s.signed = survivors
        s.stage = _STAGE_UNMASK
        return ConsistencyReply(slot=s.slot, signature=signature)

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Reveal seed shares of survivors and key shares of the dropped, never both: only
        for the survivor set this node signed, once a quorum of survivors signed it too."""
        self._expect(_STAGE_UNMASK)
        s, p = self._s, self._s.params
        signed = self._survivor_set(request.survivors)
        if signed != s.signed:
            raise hz.SecAggError(
                "unmask request's survivor set is not the one this node signed: refusing "
                "(the server told nodes different survivor sets?)"
            )
        message = consistency_message(p, signed)
        signers: set[int] = set()
        for sig in request.signatures:
            if sig.slot in signers or sig.slot not in signed:
                raise hz.SecAggError(
                    f"signature of slot {sig.slot}: repeated, or not a survivor: refusing"
                )
            if not hz.verify(
                self._roster[sig.slot], sig.signature, label=hz.SIGN_CONSISTENCY, message=message
            ):
                raise hz.SecAggError(
                    f"slot {sig.slot} ({p.names[sig.slot - 1]!r}): its signature on the survivor "
                    "set does not verify with its roster key: refusing"
                )
            signers.add(sig.slot)
        if len(signers) < self._quorum:
            raise hz.SecAggError(
                f"{len(signers)} valid signatures on the survivor set, {self._quorum} "
                "required: refusing"
            )
        # Survivors and dropped of the neighbourhood follow from the signed set alone.
        known = set(s.held) - {s.slot}
        survivors, dropped = known & set(signed), known - set(signed)
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
