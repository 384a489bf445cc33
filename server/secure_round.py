"""One deployed round under SecAgg+: train + advertise keys, share keys, masked input, unmask.

The ServerApp drives the four stages over Flower's Message API (``train`` for the first,
``query.secagg`` for the others); :class:`~fedguard.privacy.secagg.SecAggServer` decides
what each node is sent and checks what comes back. A node that errs, times out or sends
something malformed at any stage counts as dropped, with the reason logged under its
name; the protocol removes its masks if enough of its neighbourhood is left, otherwise
the round aborts with nothing aggregated and the next round starts afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedguard.federation import ClientUpdate, Refusal, SecureMean
from fedguard.flower_compat import send_and_receive
from fedguard.messages import decode_secure_reply, encode_secagg, secagg_payload
from fedguard.privacy.secagg import (
    AdvertiseKeys,
    MaskedInputReply,
    SecAggAbortedError,
    SecAggParams,
    SecAggServer,
    Setup,
    ShareKeysReply,
    UnmaskReply,
    dequantize_mean,
)
from fedguard.server.receipts import read_receipt
from fedguard.transport import WireError, decode_secagg
from fedguard.transport.serde import encode_secagg as encode_payload

__all__ = ["SECAGG_MESSAGE_TYPE", "secure_round"]

SECAGG_MESSAGE_TYPE = f"{MessageType.QUERY}.secagg"

_log = logging.getLogger(__name__)


def secure_round(
    *,
    grid: Grid,
    params: SecAggParams,
    cohort: list[int],
    node_of: Mapping[int, int],
    train_content: Callable[[bytes], RecordDict],
    shapes: list[tuple[int, ...]],
    timeout: float,
    label: Callable[[int], str],
    say: Callable[[str], None],
    receipt_run: str,
) -> Iterator[ClientUpdate | Refusal | SecureMean]:
    """Run the round; yields each node's receipt or refusal, then the secure mean."""
    r = params.server_round
    slot_of = {cid: i + 1 for i, cid in enumerate(cohort)}
    cid_of = {slot: cid for cid, slot in slot_of.items()}
    node_cid = {node_of[cid]: cid for cid in cohort}

    def name(slot: int) -> str:
        return label(cid_of[slot]) if slot in cid_of else f"slot {slot}"

    # Stage 0: the training request carries each node's setup; replies advertise keys.
    msgs = [
        Message(
            train_content(encode_payload(Setup(params=params, slot=slot_of[cid]))),
            dst_node_id=node_of[cid],
            message_type=MessageType.TRAIN,
            group_id=str(r),
        )
        for cid in cohort
    ]
    adverts: list[AdvertiseKeys] = []
    answered: set[int] = set()
    for reply in send_and_receive(grid, msgs, timeout=timeout):
        cid = node_cid.get(reply.metadata.src_node_id)
        if cid is None or cid in answered:
            continue
        answered.add(cid)
        if reply.has_error():
            yield Refusal(client_id=cid, reason=f"{label(cid)}: {reply.error.reason}")
            continue
        try:
            metrics, payload = decode_secure_reply(reply.content)
            advert = decode_secagg(payload, expect=AdvertiseKeys)
            if not isinstance(advert, AdvertiseKeys) or advert.slot != slot_of[cid]:
                raise WireError(f"advertised slot is not {slot_of[cid]}")
            receipt = read_receipt(reply.content, run=receipt_run, server_round=r)
        except (ValueError, KeyError, TypeError) as exc:
            yield Refusal(client_id=cid, reason=f"{label(cid)}: malformed reply: {exc}")
            continue
        adverts.append(advert)
        yield ClientUpdate(
            client_id=cid,
            weights=None,
            num_examples=int(metrics["num-examples"]),
            train_loss=metrics.get("train-loss", float("nan")),
            epsilon=metrics.get("epsilon") if receipt is None else receipt.epsilon,
            receipt=receipt,
        )
    for cid in sorted(set(cohort) - answered):
        yield Refusal(client_id=cid, reason=f"{label(cid)}: no reply within {timeout:.0f}s")

    server = SecAggServer(params)
    try:
        requests: Mapping[int, Any] = server.receive_keys(adverts)
        replies = _exchange(grid, requests, ShareKeysReply, r, cid_of, node_of, timeout, name)
        requests = server.receive_shares(replies)
        for masked in _exchange(
            grid, requests, MaskedInputReply, r, cid_of, node_of, timeout, name
        ):
            server.add_masked_input(masked)
        requests = server.unmask_requests()
        replies = _exchange(grid, requests, UnmaskReply, r, cid_of, node_of, timeout, name)
        total = server.receive_unmask(replies)
    except SecAggAbortedError as exc:
        _log_rejected(server, r, name)
        say(f"round {r}: {exc}; nothing aggregated this round")
        return
    _log_rejected(server, r, name)
    if total.dropped:
        dropped = ", ".join(name(s) for s in total.dropped)
        say(f"round {r}: secure aggregation recovered from dropped nodes: {dropped}")
    mean, _ = dequantize_mean(
        total.total, clip_range=params.clip_range, bits=params.bits, shapes=shapes
    )
    yield SecureMean(mean_update=mean, count=len(total.survivors), dropped=len(total.dropped))


def _exchange(
    grid: Grid,
    requests: Mapping[int, Any],
    expect: type,
    server_round: int,
    cid_of: Mapping[int, int],
    node_of: Mapping[int, int],
    timeout: float,
    name: Callable[[int], str],
) -> list[Any]:
    """Send one stage's requests (by slot); the valid replies, each node's at most once."""
    slot_of_node = {node_of[cid_of[s]]: s for s in requests}
    msgs = [
        Message(
            encode_secagg(encode_payload(request)),
            dst_node_id=node_of[cid_of[slot]],
            message_type=SECAGG_MESSAGE_TYPE,
            group_id=str(server_round),
        )
        for slot, request in requests.items()
    ]
    out: dict[int, Any] = {}
    for reply in send_and_receive(grid, msgs, timeout=timeout):
        slot = slot_of_node.get(reply.metadata.src_node_id)
        if slot is None or slot in out:
            continue
        if reply.has_error():
            _log.warning("round %d: %s dropped: %s", server_round, name(slot), reply.error.reason)
            continue
        try:
            payload = secagg_payload(reply.content)
            if payload is None:
                raise WireError("no secagg payload")
            decoded = decode_secagg(payload, expect=expect)
            if getattr(decoded, "slot", None) != slot:
                raise WireError(f"reply names slot {getattr(decoded, 'slot', None)}, not {slot}")
        except (ValueError, KeyError, TypeError) as exc:
            _log.warning("round %d: %s dropped: malformed reply: %s", server_round, name(slot), exc)
            continue
        out[slot] = decoded
    for slot in sorted(set(requests) - set(out)):
        _log.warning("round %d: %s dropped during secure aggregation", server_round, name(slot))
    return [out[s] for s in sorted(out)]


def _log_rejected(server: SecAggServer, server_round: int, name: Callable[[int], str]) -> None:
    for slot, reason in server.rejected:
        _log.warning("round %d: %s rejected: %s", server_round, name(slot), reason)
