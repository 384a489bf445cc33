"""The sum SecAgg+ returns, without keys, shares or masks: for simulations that sweep.

Masks cancel exactly in the ring (mod 2^bits of the ring dtype), so the unmasked sum of a
round is the ring sum of the survivors' encoded inputs. This computes that sum directly:
the same weight cap, the same stochastic quantisation drawing from the same ``rng`` in the
same slot order, the same ring arithmetic, and the same dropout rules (a round aborts, with
the same error, exactly when the full protocol would). What it skips is the work whose
only output is secrecy between parties who all live in one process: key agreement, Shamir
sharing, mask expansion, signatures. ``tests/privacy/secagg/test_maskfree.py`` checks that
both give bit-identical sums, survivors and errors over random dropouts.

Use :func:`~fedguard.privacy.secagg.local.secure_sum_in_process` to test the protocol
itself, its dropouts and its cost.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedguard.errors import SecAggAbortedError

from . import _hazmat as hz
from .client import SecAggClient
from .local import InputFor
from .params import SecAggParams, neighbours
from .quantize import quantize
from .server import SecureSum

__all__ = ["secure_sum_without_masks"]


def secure_sum_without_masks(
    *,
    params: SecAggParams,
    input_for: InputFor,
    rng: np.random.Generator,
    min_holders: int = 0,
    max_colluding: int = 0,
) -> SecureSum:
    """The :class:`SecureSum` that ``secure_sum_in_process`` returns for the same inputs.

    Same arguments and the same errors: :class:`~fedguard.errors.SecAggError` where a node
    would refuse, :class:`~fedguard.errors.SecAggAbortedError` where the server aborts.
    """
    if params.max_colluding < max_colluding:  # as the in-process protocol does
        params = dataclasses.replace(params, max_colluding=max_colluding)
    if not params.names:
        params = dataclasses.replace(
            params, names=tuple(f"node-{s}" for s in range(1, params.cohort + 1))
        )
    n, t = params.cohort, params.threshold
    floor = max(t, min_holders)  # a node's own floor on its live neighbourhood
    # Every node runs the same session checks; the first node's refusal is the round's.
    key = hz.new_signing_key()
    roster = {name: key.public_key() for name in params.names}
    node_quorum = SecAggClient.create(
        params=params,
        slot=1,
        signing_key=key,
        roster=roster,
        min_holders=min_holders,
        max_colluding=max_colluding,
    ).quorum
    nbrs = {s: set(neighbours(params, s)) for s in range(1, n + 1)}
    for slot in range(1, n + 1):  # server: advertised keys
        _need(len(nbrs[slot]) + 1, slot, "share keys", t)
    for slot in range(1, n + 1):  # each node: its neighbours' keys
        _check_live(len(nbrs[slot]) + 1, "advertised keys", floor, nbrs[slot])
    for slot in range(1, n + 1):  # server: shares routed
        _need(len(nbrs[slot]) + 1, slot, "masked input", t)

    total: np.ndarray | None = None
    survivors: list[int] = []
    for slot in range(1, n + 1):
        given = input_for(slot)
        if given is None:
            continue
        update, weight = given
        _check_live(len(nbrs[slot]) + 1, "shared keys", floor, nbrs[slot])
        weight = min(max(weight, 1), params.weight_cap)
        vector = quantize(
            update,
            weight=weight,
            clip_range=params.clip_range,
            bits=params.bits,
            dtype=params.dtype,
            rng=rng,
        ).vector
        if total is None:
            total = vector.astype(params.dtype, copy=True)
        else:
            total += vector  # wraps mod 2^bits of the dtype, as the masked sum does
        survivors.append(slot)

    alive = set(survivors)
    dropped = set(range(1, n + 1)) - alive
    if total is None:
        raise SecAggAbortedError("secure aggregation aborted: no masked input arrived")
    for slot in survivors:  # in slot order, as the server checks them
        _need(len(nbrs[slot] & alive) + 1, slot, "unmask", t)
    for slot in sorted(dropped):
        _need(len(nbrs[slot] & alive), slot, "unmask", t)
    for slot in survivors:  # each survivor before signing the set
        if len(survivors) < node_quorum:
            raise hz.SecAggError(
                f"only {len(survivors)} survivors; a quorum of {node_quorum} signatures is "
                "required to unmask: refusing"
            )
        _check_live(len(nbrs[slot] & alive) + 1, "sent masked inputs", floor, nbrs[slot])
    return SecureSum(total=total, survivors=tuple(survivors), dropped=tuple(sorted(dropped)))


def _need(live: int, who: int, stage: str, threshold: int) -> None:
    """The server's abort, word for word (:meth:`SecAggServer._need`)."""
    if live < threshold:
        raise SecAggAbortedError(
            f"secure aggregation aborted at {stage}: slot {who} has {live} live holders "
            f"of its shares, {threshold} needed (too many nodes dropped)"
        )


def _check_live(live: int, what: str, floor: int, nbrs: set[int]) -> None:
    """A node's refusal, word for word (:meth:`SecAggClient._check_live`)."""
    if live < floor:
        raise hz.SecAggError(
            f"only {live} of this node's {len(nbrs) + 1}-node neighbourhood "
            f"{what}; at least {floor} required: refusing, so no update is isolated"
        )
