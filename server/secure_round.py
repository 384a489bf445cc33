"""One deployed round under SecAgg+: train + advertise keys, share keys, masked input,
consistency, unmask.

The ServerApp drives the five stages over Flower's Message API (``train`` for the first,
``query.secagg`` for the others); :class:`~fedguard.privacy.secagg.SecAggServer` decides
what each node is sent and checks what comes back. A node that errs, times out or sends
something malformed at any stage counts as dropped, with the reason logged under its
name; the protocol removes its masks if enough of its neighbourhood is left, otherwise
the round aborts with nothing aggregated and the next round starts afresh.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedguard.console import printable
from fedguard.fl.loop import ClientUpdate, Refusal, SecureMean
from fedguard.fl.participants import Cohort
from fedguard.privacy.secagg import (
    AdvertiseKeys,
    ConsistencyReply,
    MaskedInputReply,
    SecAggAbortedError,
    SecAggParams,
    SecAggServer,
    Setup,
    ShareKeysReply,
    UnmaskReply,
    dequantize_mean,
)
from fedguard.transport import WireError, decode_secagg
from fedguard.transport.grid import Failed, exchange, names_in
from fedguard.transport.messages import decode_secure_reply, secagg_payload, secagg_record
from fedguard.transport.receipts import read_receipt
from fedguard.transport.serde import encode_secagg

__all__ = ["SECAGG_MESSAGE_TYPE", "secure_round"]

SECAGG_MESSAGE_TYPE = f"{MessageType.QUERY}.secagg"

_log = logging.getLogger(__name__)


def secure_round(
    *,
    grid: Grid,
    params: SecAggParams,
    cohort: Cohort,
    train_content: Callable[[bytes], RecordDict],
    shapes: list[tuple[int, ...]],
    timeout: float,
    say: Callable[[str], None],
    receipt_run: str,
) -> Iterator[ClientUpdate | Refusal | SecureMean]:
    """Run the round; yields each node's receipt or refusal, then the secure mean.

    Slot i is ``cohort.at_slot(i)``, named in the session by its enrolled name; each node
    checks that name against its own and its roster.
    """
    params = dataclasses.replace(params, names=tuple(p.name for p in cohort))
    r = params.server_round

    def name(slot: int) -> str:
        member = cohort.at_slot(slot)
        return f"slot {slot}" if member is None else member.name

    # Stage 0: the training request carries each node's setup; replies advertise keys.
    msgs = [
        Message(
            train_content(encode_secagg(Setup(params=params, slot=cohort.slot(p.client_id)))),
            dst_node_id=p.node_id,
            message_type=MessageType.TRAIN,
            group_id=str(r),
        )
        for p in cohort
    ]
    adverts: list[AdvertiseKeys] = []
    done = exchange(grid, msgs, timeout=timeout, what=f"round {r}", name_of=names_in(cohort))
    for reply in done.replies:
        member = cohort.by_node(reply.node_id)
        if member is None:  # exchange keeps only nodes asked
            continue
        cid, slot = member.client_id, cohort.slot(member.client_id)
        if isinstance(reply, Failed):
            yield Refusal(client_id=cid, reason=f"{member.name}: {reply.reason}")
            continue
        try:
            metrics, payload = decode_secure_reply(reply.content)
            advert = decode_secagg(payload, expect=AdvertiseKeys)
            if not isinstance(advert, AdvertiseKeys) or advert.slot != slot:
                raise WireError(f"advertised slot is not {slot}")
            receipt = read_receipt(reply.content, run=receipt_run, server_round=r, required=True)
        except (ValueError, KeyError, TypeError) as exc:
            why = f"{member.name}: malformed reply: {printable(exc)}"
            yield Refusal(client_id=cid, reason=why)
            continue
        adverts.append(advert)
        yield ClientUpdate(
            client_id=cid,
            weights=None,
            # No record count in the clear under secure aggregation: 0, unknown (a weight,
            # when the node consents, travels inside its masked input).
            num_examples=0,
            train_loss=metrics.get("train-loss", float("nan")),
            epsilon=metrics.get("epsilon") if receipt is None else receipt.epsilon,
            receipt=receipt,
        )
    for node in sorted(done.missing, key=cohort.client_id_of):
        p = cohort.by_node(node)
        if p is not None:
            reason = f"{p.name}: no reply within {done.waited:.0f}s"
            yield Refusal(client_id=p.client_id, reason=reason)

    # Each masked input: every parameter of the model, then the node's weight.
    server = SecAggServer(params, length=sum(math.prod(s) for s in shapes) + 1)
    try:
        requests: Mapping[int, Any] = server.receive_keys(adverts)
        replies = _exchange(grid, requests, ShareKeysReply, r, cohort, timeout)
        requests = server.receive_shares(replies)
        for masked in _exchange(grid, requests, MaskedInputReply, r, cohort, timeout):
            server.add_masked_input(masked)
        requests = server.consistency_requests()
        signed = _exchange(grid, requests, ConsistencyReply, r, cohort, timeout)
        requests = server.receive_consistency(signed)
        replies = _exchange(grid, requests, UnmaskReply, r, cohort, timeout)
        total = server.receive_unmask(replies)
    except SecAggAbortedError as exc:
        _log_rejected(server, r, name)
        say(f"round {r}: {exc}; nothing aggregated this round")
        return
    _log_rejected(server, r, name)
    if total.dropped:
        dropped = ", ".join(name(s) for s in total.dropped)
        say(f"round {r}: secure aggregation recovered from dropped nodes: {dropped}")
    problem = _implausible(total.total, params=params, count=len(total.survivors))
    if problem:
        say(f"round {r}: {problem}; a node sent values outside the protocol; nothing aggregated")
        return
    mean, _ = dequantize_mean(
        total.total, clip_range=params.clip_range, bits=params.bits, shapes=shapes
    )
    yield SecureMean(mean_update=mean, count=len(total.survivors), dropped=len(total.dropped))


def _exchange(
    grid: Grid,
    requests: Mapping[int, Any],
    expect: type,
    server_round: int,
    cohort: Cohort,
    timeout: float,
) -> list[Any]:
    """Send one stage's requests (by slot); the valid replies, each node's at most once."""
    to = {slot: cohort.members[slot - 1] for slot in requests}
    slot_of_node = {p.node_id: slot for slot, p in to.items()}
    msgs = [
        Message(
            secagg_record(encode_secagg(request)),
            dst_node_id=to[slot].node_id,
            message_type=SECAGG_MESSAGE_TYPE,
            group_id=str(server_round),
        )
        for slot, request in requests.items()
    ]
    out: dict[int, Any] = {}
    what = f"round {server_round}"
    for reply in exchange(grid, msgs, timeout=timeout, what=what, name_of=names_in(cohort)).replies:
        slot = slot_of_node[reply.node_id]  # exchange keeps only nodes asked
        if isinstance(reply, Failed):
            _log.warning("round %d: %s dropped: %s", server_round, to[slot].name, reply.reason)
            continue
        try:
            payload = secagg_payload(reply.content)
            if payload is None:
                raise WireError("no secagg payload")
            decoded = decode_secagg(payload, expect=expect)
            if getattr(decoded, "slot", None) != slot:
                raise WireError(f"reply names slot {getattr(decoded, 'slot', None)}, not {slot}")
        except (ValueError, KeyError, TypeError) as exc:
            reason = printable(exc)
            _log.warning(
                "round %d: %s dropped: malformed reply: %s", server_round, to[slot].name, reason
            )
            continue
        out[slot] = decoded
    for slot in sorted(set(requests) - set(out)):
        _log.warning("round %d: %s dropped during secure aggregation", server_round, to[slot].name)
    return [out[s] for s in sorted(out)]


def _implausible(total: np.ndarray, *, params: SecAggParams, count: int) -> str:
    """Why the unmasked sum cannot be ``count`` honest inputs ("" when it can be).

    The server cannot see a single input, but it can check the sum: honest weights are
    1..weight-cap each, and each level sum is at most the total weight times the levels.
    A node that added an arbitrary ring value to its input is caught when it lands outside;
    inside these bounds the mean stays within [-clip-range, clip-range] per coordinate.
    """
    weight = int(total[-1])
    if not count <= weight <= count * params.weight_cap:
        return (
            f"secure sum: expected a total weight in [{count}, {count * params.weight_cap}] "
            f"for {count} inputs, got {weight}"
        )
    levels = (1 << params.bits) - 1
    highest = int(total[:-1].max(initial=0))
    if highest > weight * levels:
        return f"secure sum: expected levels <= {weight * levels}, got {highest}"
    return ""


def _log_rejected(server: SecAggServer, server_round: int, name: Callable[[int], str]) -> None:
    for slot, reason in server.rejected:
        _log.warning("round %d: %s rejected: %s", server_round, name(slot), printable(reason))
