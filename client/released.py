"""What a node has released under secure aggregation: one trained update, one secure sum.

A secure sum hides each update only if that update goes into ONE sum. A server that
collects two sums over cohorts differing by one node (a re-asked round after a restart,
one node slow to reconnect) recovers that node's update as S1 - S2. So before a node sends
a masked input it records, durably (atomic write, fsync, 0600), that the update was masked
and into which session; it never masks that update into another one.

The journal (``secagg-released.json`` in the state folder) holds:

- ``masked``: every update this node masked (its digest, run, round, session id);
- ``session``: the newest session's id, update digest and the exact bytes of each reply
  the node sent in it, keyed by the digest of the request it answered;
- ``held`` (optional): the newest trained update kept for a secure sum only (its request
  key, run, round, update digest and ledger entry), until it is masked or given back;
- ``void`` (optional): digests of updates given back (their ledger round marked void):
  none of them is ever masked (#14.4).

A re-asked round is then answered from the same session (the same request gets the same
reply bytes: the same keys, shares and masked input, so nothing new leaves the node) or
refused with a reason. The journal holds only what the node already sent (public keys,
sealed shares, the masked input, revealed shares), never a secret. An unreadable journal
stops secure aggregation on the node (``DataError`` naming the file): without it the node
could not tell what it already released.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedguard._io import atomic_write_bytes
from fedguard.errors import DataError
from fedguard.privacy.secagg import SecAggParams, Setup
from fedguard.transport.serde import encode_secagg

__all__ = [
    "HeldUpdate",
    "Journal",
    "MaskedRecord",
    "Session",
    "params_session_id",
    "read_journal",
    "request_digest",
    "session_id",
    "update_digest",
    "write_journal",
]

_FORMAT = "fedguard-secagg-released/1"
# The newest masked records kept: a node is only ever re-asked its newest rounds (its
# stored reply holds one round), so these are many times what a replay could reach.
MAX_RECORDS = 256
STAGES = ("advertise", "share-keys", "masked-input", "consistency", "unmask")


@dataclass(frozen=True, kw_only=True)
class MaskedRecord:
    run: str
    server_round: int
    session: str  # session_id of the one sum this update went into
    update: str  # update_digest


@dataclass(kw_only=True)
class Session:
    run: str
    server_round: int
    id: str
    update: str
    # stage -> (sha256 of the request answered, the reply bytes sent)
    replies: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    abandoned: bool = False  # a stage was refused: no further stage is answered

    @property
    def masked(self) -> bool:
        return "masked-input" in self.replies


@dataclass(frozen=True, kw_only=True)
class HeldUpdate:
    """A trained update that may leave the node only as a masked input (never alone)."""

    key: str  # the request's round key (the stored reply answers it)
    run: str
    server_round: int
    update: str  # update_digest
    pending: str  # hash of its ledger pending entry
    pending_seq: int


@dataclass(kw_only=True)
class Journal:
    masked: list[MaskedRecord] = field(default_factory=list)
    session: Session | None = None
    held: HeldUpdate | None = None
    void: list[str] = field(default_factory=list)  # update digests given back

    def masked_record(self, digest: str) -> MaskedRecord | None:
        return next((m for m in self.masked if m.update == digest), None)


def session_id(setup: Setup) -> str:
    """Identifies a session: the round's public parameters and this node's slot."""
    return hashlib.sha256(b"fedguard/v1/secagg-session\x00" + encode_secagg(setup)).hexdigest()


def params_session_id(params: SecAggParams, slot: int) -> str:
    return session_id(Setup(params=params, slot=slot))


def update_digest(update: Sequence[np.ndarray]) -> str:
    """Identifies a trained update (before any noise share): shapes, dtypes and bytes."""
    h = hashlib.sha256(b"fedguard/v1/trained-update\x00")
    for u in update:
        a = np.ascontiguousarray(u)
        h.update(repr((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def request_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def read_journal(path: Path) -> Journal:
    """The journal in ``path`` (an empty one if there is none); ``DataError`` if unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Journal()

    def bad(why: str) -> DataError:
        return DataError(
            f"{path}: unreadable secure-aggregation journal ({why}); this node takes part "
            "in no secure round until it is restored (it records which updates were masked)"
        )

    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise bad(f"not JSON: {' '.join(str(exc).split())[:120]}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise bad(f"expected format {_FORMAT!r}")
    try:
        masked = [_record(m) for m in _list(doc, "masked")]
        s = doc.get("session")
        session = None if s is None else _session(s)
        h = doc.get("held")
        held = None if h is None else _held(h)
        void = [_hex(v, "void") for v in (_list(doc, "void") if "void" in doc else [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(" ".join(str(exc).split())[:200]) from None
    return Journal(masked=masked, session=session, held=held, void=void)


def write_journal(path: Path, journal: Journal) -> None:
    """Replace the journal (temp file, fsync, rename; 0600) before anything is sent."""
    s = journal.session
    doc: dict[str, Any] = {
        "format": _FORMAT,
        "masked": [
            {"run": m.run, "round": m.server_round, "session": m.session, "update": m.update}
            for m in journal.masked[-MAX_RECORDS:]
        ],
        "session": None
        if s is None
        else {
            "run": s.run,
            "round": s.server_round,
            "id": s.id,
            "update": s.update,
            "abandoned": s.abandoned,
            "replies": {
                stage: {"request": req, "reply": base64.b64encode(reply).decode()}
                for stage, (req, reply) in s.replies.items()
            },
        },
    }
    h = journal.held
    if h is not None:
        doc["held"] = {
            "key": h.key,
            "run": h.run,
            "round": h.server_round,
            "update": h.update,
            "pending": h.pending,
            "pending_seq": h.pending_seq,
        }
    if journal.void:
        doc["void"] = journal.void[-MAX_RECORDS:]
    atomic_write_bytes(path, json.dumps(doc, sort_keys=True).encode(), mode=0o600)


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc[key]
    if not isinstance(value, list):
        raise TypeError(f"{key}: expected a list, got {type(value).__name__}")
    return value


def _hex(value: object, key: str) -> str:
    if not (isinstance(value, str) and len(value) == 64 and set(value) <= set("0123456789abcdef")):
        raise ValueError(f"{key}: expected 64 hex digits, got {str(value)[:80]!r}")
    return value


def _text(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _round(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"round: expected an integer >= 0, got {str(value)[:80]!r}")
    return value


def _record(m: object) -> MaskedRecord:
    if not isinstance(m, dict):
        raise TypeError(f"masked: expected objects, got {type(m).__name__}")
    return MaskedRecord(
        run=_text(m["run"], "run"),
        server_round=_round(m["round"]),
        session=_hex(m["session"], "session"),
        update=_hex(m["update"], "update"),
    )


def _held(h: object) -> HeldUpdate:
    if not isinstance(h, dict):
        raise TypeError(f"held: expected an object, got {type(h).__name__}")
    return HeldUpdate(
        key=_hex(h["key"], "held key"),
        run=_text(h["run"], "run"),
        server_round=_round(h["round"]),
        update=_hex(h["update"], "held update"),
        pending=_hex(h["pending"], "held pending"),
        pending_seq=_round(h["pending_seq"]),
    )


def _session(s: object) -> Session:
    if not isinstance(s, dict):
        raise TypeError(f"session: expected an object, got {type(s).__name__}")
    replies = s["replies"]
    if not isinstance(replies, dict) or not set(replies) <= set(STAGES):
        raise ValueError(f"session replies: expected stages among {STAGES}")
    out: dict[str, tuple[str, bytes]] = {}
    for stage, r in replies.items():
        if not isinstance(r, dict):
            raise TypeError(f"{stage}: expected an object, got {type(r).__name__}")
        out[stage] = (
            _hex(r["request"], f"{stage} request"),
            base64.b64decode(_text(r["reply"], f"{stage} reply"), validate=True),
        )
    if not isinstance(s["abandoned"], bool):
        raise TypeError("abandoned: expected true or false")
    return Session(
        run=_text(s["run"], "run"),
        server_round=_round(s["round"]),
        id=_hex(s["id"], "session id"),
        update=_hex(s["update"], "update"),
        replies=out,
        abandoned=s["abandoned"],
    )
