"""One SecAgg+ round with every party in this process: the protocol without a transport.

The in-process simulation engine and the benchmarks call this; the deployed server and
nodes run the very same :class:`SecAggServer` and :class:`SecAggClient` stage by stage
over Flower messages. Each node's input is produced only when its masked input is due
(``input_for``), so a simulation trains and masks one client at a time and holds one
update at once, never the cohort's. Each virtual node gets an in-memory P-384 signing key
(the stand-in for a node key) and a roster of all of them, and the consistency stage runs
as in a deployment, so its cost is part of what a simulation and the benchmark measure.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import _hazmat as hz
from .client import SecAggClient
from .messages import ConsistencyReply, MaskedInputReply
from .params import SecAggParams
from .server import SecAggServer, SecureSum

__all__ = ["MessageHook", "RoundCost", "secure_sum_in_process"]


@dataclass
class RoundCost:
    """Seconds of protocol work in one round (inputs' production, e.g. training, excluded)."""

    client_seconds: float = 0.0  # all nodes together
    server_seconds: float = 0.0
    consistency_client_seconds: float = 0.0  # of which the consistency stage (signing)
    consistency_server_seconds: float = 0.0  # (collecting the signatures)


InputFor = Callable[[int], tuple[Sequence[np.ndarray], int] | None]
MessageHook = Callable[[str, int, object], None]


def secure_sum_in_process(
    *,
    params: SecAggParams,
    input_for: InputFor,
    rng: np.random.Generator,
    min_holders: int = 0,
    max_colluding: int = 0,
    on_message: MessageHook | None = None,
    cost: RoundCost | None = None,
) -> SecureSum:
    """Run the five stages for slots ``1..params.cohort``; returns the unmasked sum.

    ``input_for(slot)`` returns ``(update arrays, weight)``, or ``None`` for a node that
    drops after sharing its keys (a refusal, a crash). ``on_message(direction, slot,
    message)`` sees every message ("up" node->server, "down" server->node), e.g. to count
    bytes. Raises :class:`~fedguard.privacy.secagg.server.SecAggAbortedError` like a deployment.
    Slots without names in ``params`` are named ``node-1``... (virtual nodes).
    """
    hook = on_message or (lambda _d, _s, _m: None)
    spent = cost if cost is not None else RoundCost()
    clock = time.perf_counter

    if params.max_colluding < max_colluding:  # the session carries c: every node counts it
        params = dataclasses.replace(params, max_colluding=max_colluding)
    if not params.names:
        params = dataclasses.replace(
            params, names=tuple(f"node-{s}" for s in range(1, params.cohort + 1))
        )
    t = clock()
    keys = {name: hz.new_signing_key() for name in params.names}
    roster = {name: key.public_key() for name, key in keys.items()}
    clients = {
        s: SecAggClient.create(
            params=params,
            slot=s,
            signing_key=keys[params.names[s - 1]],
            roster=roster,
            min_holders=min_holders,
            max_colluding=max_colluding,
        )
        for s in range(1, params.cohort + 1)
    }
    adverts = [c.advertise() for c in clients.values()]
    spent.client_seconds += clock() - t
    for a in adverts:
        hook("up", a.slot, a)
    t = clock()
    server = SecAggServer(params)
    share_requests = server.receive_keys(adverts)
    spent.server_seconds += clock() - t
    share_replies = []
    for slot, request in share_requests.items():
        hook("down", slot, request)
        t = clock()
        share_replies.append(clients[slot].share_keys(request))
        spent.client_seconds += clock() - t
        hook("up", slot, share_replies[-1])
    t = clock()
    mask_requests = server.receive_shares(share_replies)
    spent.server_seconds += clock() - t
    for slot, mask_request in mask_requests.items():
        hook("down", slot, mask_request)
        given = input_for(slot)
        if given is None:
            continue
        update, weight = given
        t = clock()
        reply: MaskedInputReply = clients[slot].masked_input(
            mask_request, update=update, weight=weight, rng=rng
        )
        spent.client_seconds += clock() - t
        hook("up", slot, reply)
        t = clock()
        server.add_masked_input(reply)
        spent.server_seconds += clock() - t
    t = clock()
    consistency_requests = server.consistency_requests()
    spent.server_seconds += clock() - t
    signatures: list[ConsistencyReply] = []
    for slot, consistency_request in consistency_requests.items():
        hook("down", slot, consistency_request)
        t = clock()
        signatures.append(clients[slot].consistency(consistency_request))
        took = clock() - t
        spent.client_seconds += took
        spent.consistency_client_seconds += took
        hook("up", slot, signatures[-1])
    t = clock()
    unmask_requests = server.receive_consistency(signatures)
    took = clock() - t
    spent.server_seconds += took
    spent.consistency_server_seconds += took
    unmask_replies = []
    for slot, unmask_request in unmask_requests.items():
        hook("down", slot, unmask_request)
        t = clock()
        unmask_replies.append(clients[slot].unmask(unmask_request))
        spent.client_seconds += clock() - t
        hook("up", slot, unmask_replies[-1])
    t = clock()
    total = server.receive_unmask(unmask_replies)
    spent.server_seconds += clock() - t
    return total
