"""The ledger's lines: what each kind carries, their canonical bytes and hash chain, and
the verifier that names every kind of damage.

The ledger is a JSON Lines file. Each line is one object with ``seq`` (0, 1, 2, ...),
``kind`` (``"pending"``, ``"commit"`` or ``"void"``), ``time`` (UTC, ISO 8601), ``prev``
(hex sha256 of the previous line's canonical bytes, ``"0" * 64`` for the first line) and
``hash`` (hex sha256 of the canonical JSON of the line without ``hash``). Canonical JSON
is ``json.dumps(obj, sort_keys=True, separators=(",", ":"))``; lines are written in that
form.

The writer (:class:`fedguard.privacy.ledger.Ledger`) and the verifier (:func:`scan`) both
take the format from here, so they cannot drift apart.

This module never imports Flower.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GENESIS",
    "HEX64",
    "LedgerEntry",
    "canonical_bytes",
    "entry_hash",
    "scan",
    "sha256_hex",
    "to_entry",
]

GENESIS = "0" * 64  # ``prev`` of the first line

HEX64 = re.compile(r"[0-9a-f]{64}")


_PENDING_FIELDS: dict[str, tuple[type, ...]] = {
    "run": (str,),
    "server_round": (int,),
    "dataset_fingerprint": (str,),
    "sample_rate": (int, float),
    "noise_multiplier": (int, float),
    "steps": (int,),
    "max_grad_norm": (int, float),
    "epsilon_after": (int, float),
    "delta": (int, float),
    "accountant": (str,),
}
_PENDING_OPTIONAL: dict[str, tuple[type, ...]] = {
    "index_digest": (str,),
    "max_multiplicity": (int,),
}
_COMMIT_FIELDS: dict[str, tuple[type, ...]] = {"pending": (str,), "pending_seq": (int,)}
# kind -> (required fields, optional fields)
_KINDS: dict[str, tuple[dict[str, tuple[type, ...]], dict[str, tuple[type, ...]]]] = {
    "pending": (_PENDING_FIELDS, _PENDING_OPTIONAL),
    "commit": (_COMMIT_FIELDS, {}),
    "void": (_COMMIT_FIELDS, {}),  # the same reference to a pending entry
}
_COMMON_FIELDS: dict[str, tuple[type, ...]] = {
    "seq": (int,),
    "kind": (str,),
    "time": (str,),
    "prev": (str,),
    "hash": (str,),
}


@dataclass(frozen=True)
class LedgerEntry:
    """One line of the ledger.

    ``kind == "pending"``: the privacy parameters of one round, written before training;
    the commit fields are ``None``. ``kind == "commit"``: marks the pending entry with hash
    ``pending`` (at ``pending_seq``) as completed; the round fields are ``None``.
    ``kind == "void"``: the same reference; that round's update was never released.
    """

    seq: int
    kind: str
    time: str
    prev: str
    hash: str
    run: str | None = None
    server_round: int | None = None
    dataset_fingerprint: str | None = None
    sample_rate: float | None = None
    noise_multiplier: float | None = None
    steps: int | None = None
    max_grad_norm: float | None = None
    epsilon_after: float | None = None
    delta: float | None = None
    accountant: str | None = None
    pending: str | None = None
    pending_seq: int | None = None
    index_digest: str | None = None
    max_multiplicity: int | None = None


def canonical_bytes(obj: dict[str, Any]) -> bytes:
    """The canonical JSON encoding of ``obj`` (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``: ``prev`` is this of the previous line's canonical bytes."""
    return hashlib.sha256(data).hexdigest()


def entry_hash(obj: dict[str, Any]) -> str:
    """A line's ``hash``: sha256 of its canonical bytes without ``hash`` itself."""
    return sha256_hex(canonical_bytes({k: v for k, v in obj.items() if k != "hash"}))


class _NonFiniteError(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFiniteError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    # "1e999" parses to inf without passing through parse_constant.
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteError(f"{text} is not a finite number")
    return value


# -- verification -----------------------------------------------------------------------


def scan(data: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse and check ``data``; return the well-formed line objects and the problems."""
    problems: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [f"byte {exc.start}: not UTF-8 text"]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    elif lines:
        problems.append(f"line {len(lines)}: no end of line (truncated?)")

    objs: list[dict[str, Any]] = []  # well-formed lines, in file order
    for number, line in enumerate(lines, start=1):
        obj = _parse_line(number, line, problems)
        if obj is not None:
            objs.append(obj)

    by_seq: dict[int, dict[str, Any]] = {}
    changed: set[int] = set()
    for obj in objs:
        seq = obj["seq"]
        if seq in by_seq:
            problems.append(f"entry {seq}: appears more than once")
            continue
        by_seq[seq] = obj
        if entry_hash(obj) != obj["hash"]:
            changed.add(seq)
            problems.append(f"entry {seq}: contents changed (hash mismatch)")

    highest = -1
    for obj in objs:  # file order
        seq = obj["seq"]
        if seq < highest:
            problems.append(
                f"entry {seq}: out of order (found after entry {highest}; lines reordered)"
            )
        highest = max(highest, seq)

    for seq, obj in sorted(by_seq.items()):
        if seq == 0:
            if obj["prev"] != GENESIS:
                problems.append("entry 0: previous entry missing or changed (not the first entry)")
        elif seq - 1 not in by_seq:
            problems.append(
                f"entry {seq}: previous entry missing or changed (entry {seq - 1} not found)"
            )
        elif seq - 1 not in changed and obj["prev"] != sha256_hex(canonical_bytes(by_seq[seq - 1])):
            problems.append(
                f"entry {seq}: previous entry missing or changed (entry {seq - 1} does not match)"
            )

    marked: dict[str, dict[str, int]] = {"commit": {}, "void": {}}
    for seq, obj in sorted(by_seq.items()):
        kind = obj["kind"]
        if kind == "pending":
            continue
        target = by_seq.get(obj["pending_seq"])
        done = marked[kind]
        if (
            target is None
            or target["kind"] != "pending"
            or target["hash"] != obj["pending"]
            or obj["pending_seq"] >= seq
        ):
            problems.append(f"entry {seq}: {kind} references no pending entry")
        elif obj["pending"] in done:
            verb, past = ("commits", "committed") if kind == "commit" else ("voids", "voided")
            problems.append(
                f"entry {seq}: {verb} entry {obj['pending_seq']}, already {past} by entry"
                f" {done[obj['pending']]}"
            )
        elif kind == "void" and obj["pending"] not in marked["commit"]:
            problems.append(
                f"entry {seq}: voids entry {obj['pending_seq']}, which is not committed before it"
            )
        else:
            done[obj["pending"]] = seq
    return objs, problems


def _parse_line(number: int, line: str, problems: list[str]) -> dict[str, Any] | None:
    if not line.strip():
        problems.append(f"line {number}: empty line")
        return None
    try:
        obj = json.loads(line, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):  # incl. huge integers and deep nesting
        problems.append(f"line {number}: not valid JSON")
        return None
    if not isinstance(obj, dict):
        problems.append(f"line {number}: not a JSON object")
        return None
    seq = obj.get("seq")
    ok_seq = isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
    where = f"entry {seq}" if ok_seq else f"line {number}"
    kind = obj.get("kind")
    if kind not in _KINDS:
        allowed = " or ".join(repr(k) for k in _KINDS)
        problems.append(f"{where}: kind: expected {allowed}, got {kind!r}")
        return None
    required, optional = _KINDS[kind]
    spec = {**_COMMON_FIELDS, **required}
    bad = [k for k, types in spec.items() if not _has_type(obj.get(k), types)]
    bad += [k for k, types in optional.items() if k in obj and not _has_type(obj[k], types)]
    extra = sorted(set(obj) - set(spec) - set(optional))
    if bad or extra:
        what = ", ".join(
            [f"{k} missing or wrong type" for k in bad] + [f"unexpected {k}" for k in extra]
        )
        problems.append(f"{where}: malformed entry ({what})")
        return None
    if obj["seq"] < 0 or not HEX64.fullmatch(obj["hash"]) or not HEX64.fullmatch(obj["prev"]):
        problems.append(f"{where}: malformed entry (seq, prev or hash out of range)")
        return None
    if obj.get("max_multiplicity", 1) < 1 or not HEX64.fullmatch(obj.get("index_digest", GENESIS)):
        problems.append(f"{where}: malformed entry (max_multiplicity or index_digest out of range)")
        return None
    return obj


def _has_type(value: object, types: tuple[type, ...]) -> bool:
    return not isinstance(value, bool) and isinstance(value, types)


def to_entry(obj: dict[str, Any]) -> LedgerEntry:
    """The entry of a line object that :func:`scan` found well-formed."""
    return LedgerEntry(**obj)
