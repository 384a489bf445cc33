"""The server's side of one SecAgg+ round: route keys and shares, sum, unmask.

The server only ever holds masked inputs, their running sum (O(model) memory), public
keys, sealed shares it cannot open, the nodes' signatures (passed on; the nodes check
them against their rosters), and — after the masked inputs are in and a quorum of
survivors signed the survivor set — the shares that let it remove the self masks of
survivors and the pairwise masks of the dropped.
Any stage that leaves too few holders for some node's secrets raises
:class:`SecAggAbortedError`: nothing is aggregated and the next round starts afresh.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fedguard.errors import SecAggAbortedError

from . import _hazmat as hz
from . import shamir
from .client import pairwise_mask_key, self_mask_key
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
from .signing import quorum

__all__ = ["SecAggAbortedError", "SecAggServer", "SecureSum"]


@dataclass(frozen=True)
class SecureSum:
    """The cohort's sum of encoded updates (update levels x weight, then weight)."""

    total: np.ndarray
    survivors: tuple[int, ...]  # slots whose input is in the sum
    dropped: tuple[int, ...]  # slots that shared keys but sent no input


class SecAggServer:
    """Drive one round. Methods are called in stage order; each returns the next requests."""

    def __init__(self, params: SecAggParams, *, length: int | None = None) -> None:
        """``length``: the values each masked input must hold (the model's parameters plus
        one for the weight), when the caller knows it; otherwise the first input sets it."""
        self.params = params
        self._nbrs = {s: set(neighbours(params, s)) for s in range(1, params.cohort + 1)}
        self._keys: dict[int, AdvertiseKeys] = {}
        self._sealed: dict[int, list[SealedShare]] = {}  # by receiver
        self._shared: set[int] = set()
        self._total: np.ndarray | None = None
        self._length = length
        self._survivors: set[int] = set()
        self._signatures: dict[int, ConsistencyReply] = {}
        self._reveals: dict[int, dict[int, bytes]] = {}  # seed shares by owner
        self._key_reveals: dict[int, dict[int, bytes]] = {}  # key shares by owner
        self.rejected: list[tuple[int, str]] = []  # (slot, reason), for the server's log

    def _reject(self, slot: int, reason: str) -> None:
        self.rejected.append((slot, reason))

    def _need(self, live: int, who: int, stage: str) -> None:
        if live < self.params.threshold:
            raise SecAggAbortedError(
                f"secure aggregation aborted at {stage}: slot {who} has {live} live holders "
                f"of its shares, {self.params.threshold} needed (too many nodes dropped)"
            )

    def receive_keys(self, replies: Iterable[AdvertiseKeys]) -> dict[int, ShareKeysRequest]:
        """Stage 0 -> 1: each node gets its advertised neighbours' public keys."""
        for r in replies:
            lengths_ok = len(r.encryption_key) == len(r.masking_key) == hz.KEY_BYTES
            if r.slot not in self._nbrs or r.slot in self._keys or not lengths_ok:
                self._reject(r.slot, "bad or repeated key advertisement")
                continue
            self._keys[r.slot] = r
        requests = {}
        for slot in sorted(self._keys):
            live = sorted(self._nbrs[slot] & self._keys.keys())
            self._need(len(live) + 1, slot, "share keys")
            requests[slot] = ShareKeysRequest(
                neighbours=tuple(
                    NeighbourKeys(
                        slot=n,
                        encryption_key=self._keys[n].encryption_key,
                        masking_key=self._keys[n].masking_key,
                        signature=self._keys[n].signature,
                    )
                    for n in live
                )
            )
        return requests

    def receive_shares(self, replies: Iterable[ShareKeysReply]) -> dict[int, MaskedInputRequest]:
        """Stage 1 -> 2: route each sealed share to its receiver."""
        for r in replies:
            expected = self._nbrs.get(r.slot, set()) & self._keys.keys()
            receivers = [s.receiver for s in r.shares]
            if (
                r.slot not in self._keys
                or r.slot in self._shared
                or sorted(receivers) != sorted(expected)
                or any(s.sender != r.slot for s in r.shares)
            ):
                self._reject(r.slot, "share reply does not match its neighbourhood")
                continue
            self._shared.add(r.slot)
            for s in r.shares:
                self._sealed.setdefault(s.receiver, []).append(s)
        requests = {}
        for slot in sorted(self._shared):
            incoming = [s for s in self._sealed.get(slot, []) if s.sender in self._shared]
            self._need(len(incoming) + 1, slot, "masked input")
            requests[slot] = MaskedInputRequest(shares=tuple(incoming))
        return requests

    def add_masked_input(self, reply: MaskedInputReply) -> None:
        """Stage 2: fold one masked input into the running sum (O(model) memory)."""
        masked = reply.masked
        if reply.slot not in self._shared or reply.slot in self._survivors:
            self._reject(reply.slot, "masked input from a node not expected to send one")
            return
        if masked.dtype != self.params.dtype or masked.ndim != 1:
            self._reject(reply.slot, f"masked input has dtype {masked.dtype}, not ring integers")
            return
        if self._length is None:
            self._length = masked.size
        if masked.size != self._length:
            self._reject(reply.slot, f"masked input has {masked.size} values, not {self._length}")
            return
        if self._total is None:
            self._total = masked.astype(self.params.dtype, copy=True)
        else:
            self._total += masked
        self._survivors.add(reply.slot)

    def consistency_requests(self) -> dict[int, ConsistencyRequest]:
        """Stage 2 -> 3: every survivor is sent the same survivor set, to sign."""
        dropped = self._shared - self._survivors
        if not self._survivors:
            raise SecAggAbortedError("secure aggregation aborted: no masked input arrived")
        for slot in sorted(self._survivors):  # sorted: the same slot is named every time
            self._need(len(self._nbrs[slot] & self._survivors) + 1, slot, "unmask")
        for slot in sorted(dropped):
            self._need(len(self._nbrs[slot] & self._survivors), slot, "unmask")
        request = ConsistencyRequest(survivors=tuple(sorted(self._survivors)))
        return {slot: request for slot in sorted(self._survivors)}

    def receive_consistency(self, replies: Iterable[ConsistencyReply]) -> dict[int, UnmaskRequest]:
        """Stage 3 -> 4: pass every signature on to every signer, with the survivor set.

        Nodes check the signatures against their rosters; the server only counts them, and
        aborts when fewer than the smallest quorum a node accepts (no collusion) arrived.
        """
        for r in replies:
            if r.slot not in self._survivors or r.slot in self._signatures:
                self._reject(r.slot, "consistency reply from a non-survivor, or repeated")
                continue
            self._signatures[r.slot] = r
        needed = quorum(self.params)
        if len(self._signatures) < needed:
            raise SecAggAbortedError(
                f"secure aggregation aborted at consistency: {len(self._signatures)} "
                f"survivors signed the survivor set, {needed} needed (too many nodes dropped)"
            )
        request = UnmaskRequest(
            survivors=tuple(sorted(self._survivors)),
            signatures=tuple(self._signatures[s] for s in sorted(self._signatures)),
        )
        return {slot: request for slot in sorted(self._signatures)}

    def receive_unmask(self, replies: Iterable[UnmaskReply]) -> SecureSum:
        """Stage 3: reconstruct the secrets, strip every mask, return the exact sum."""
        dropped = self._shared - self._survivors
        for r in replies:
            if r.slot not in self._survivors:
                self._reject(r.slot, "unmask reply from a node that sent no masked input")
                continue
            ok_seed = all(
                _own(s, r.slot) and s.owner in (self._nbrs[r.slot] | {r.slot}) & self._survivors
                for s in r.seed_shares
            )
            ok_key = all(
                _own(s, r.slot) and s.owner in self._nbrs[r.slot] & dropped for s in r.key_shares
            )
            if not (ok_seed and ok_key):
                self._reject(r.slot, "unmask reply reveals shares it was not asked for")
                continue
            for s in r.seed_shares:
                self._reveals.setdefault(s.owner, {})[s.holder] = s.share
            for s in r.key_shares:
                self._key_reveals.setdefault(s.owner, {})[s.holder] = s.share
        if self._total is None:
            raise SecAggAbortedError("secure aggregation aborted: no masked input arrived")
        p, total = self.params, self._total
        expander = hz.MaskExpander(length=total.size, dtype=p.dtype)
        for slot in sorted(self._survivors):
            shares = self._reveals.get(slot, {})
            self._need(len(shares), slot, "reconstruction")
            seed = _combine(shares, p.threshold, slot)
            total -= expander.expand(self_mask_key(p, slot=slot, seed=seed))
        for slot in sorted(dropped):
            shares = self._key_reveals.get(slot, {})
            self._need(len(shares), slot, "reconstruction")
            private = _combine(shares, p.threshold, slot)
            if hz.public_key(private) != self._keys[slot].masking_key:
                raise SecAggAbortedError(
                    f"secure aggregation aborted: slot {slot}'s key shares are inconsistent"
                )
            for peer in sorted(self._nbrs[slot] & self._survivors):
                key = pairwise_mask_key(
                    p, private=private, peer_public=self._keys[peer].masking_key, slots=(slot, peer)
                )
                mask = expander.expand(key)
                # The survivor added +mask if its slot is the lower one, else -mask.
                if peer < slot:
                    total -= mask
                else:
                    total += mask
        return SecureSum(
            total=total, survivors=tuple(sorted(self._survivors)), dropped=tuple(sorted(dropped))
        )


def _own(share: RevealedShare, slot: int) -> bool:
    return share.holder == slot and len(share.share) == shamir.SHARE_BYTES


def _combine(shares: dict[int, bytes], threshold: int, slot: int) -> bytes:
    try:
        return shamir.combine(shares, threshold=threshold)
    except hz.SecAggError:
        raise SecAggAbortedError(
            f"secure aggregation aborted: slot {slot}'s shares are inconsistent"
        ) from None
