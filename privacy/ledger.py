"""A node's privacy ledger: every epsilon spent, in a tamper-evident, crash-safe file.

The ledger is a JSON Lines file. Each line is one object with ``seq`` (0, 1, 2, ...),
``kind`` (``"pending"`` or ``"commit"``), ``time`` (UTC, ISO 8601), ``prev`` (hex sha256
of the previous line's canonical bytes, ``"0" * 64`` for the first line) and ``hash``
(hex sha256 of the canonical JSON of the line without ``hash``). Canonical JSON is
``json.dumps(obj, sort_keys=True, separators=(",", ":"))``; lines are written in that form.

Write-ahead: a node calls :meth:`Ledger.begin` *before* training (the "pending" line is on
disk, fsynced, before any data is touched) and :meth:`Ledger.commit` after. A crash in
between leaves a pending entry, which counts as spent.

(Over the 400-line guide on purpose: the writer and the verifier share the format, and
naming each kind of damage precisely is most of the verifier; one file keeps them in step.)

Every append reads and verifies the whole chain first (a broken ledger is never extended)
and replaces the file atomically, so a crash leaves the old or the new ledger.

A node's pending entries also carry ``max_multiplicity`` (the most times one record
appeared in the round's data set) and ``index_digest`` (sha256 of the per-record index
that includes the round, :mod:`fedguard.privacy.record_budget`); both are optional so that
ledgers written before them still verify.

What :meth:`Ledger.verify` detects: edited, reordered, duplicated, torn or malformed lines,
and deleted lines other than the newest ones. What it cannot: a ledger rewritten whole
with recomputed hashes, the newest lines removed, or the file deleted; anyone who can
write the file can do that. :meth:`Ledger.verify_against` closes part of that gap with an
outside anchor: the entry hashes the server recorded from the node's receipts. It names a
ledger rewritten or truncated before the newest entry the server saw; it cannot see
entries the server never received (a refused or lost round, a trailing pending entry).

Kinds: ``"pending"``, ``"commit"`` and ``"void"``. A void line (``pending``,
``pending_seq``, like a commit) says that the committed round's update never left the node
(a secure round aborted before the node sent its masked input): its epsilon is given back.
Only a committed entry can be voided, once; the node writes it only after it has made
sure nothing derived from the update can still leave (:mod:`fedguard.client.void`).
Ledgers written before void lines existed verify unchanged.

This module never imports Flower.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedguard._checks import integer as _integer
from fedguard._checks import real
from fedguard._io import atomic_write_text
from fedguard.errors import FedguardError, invalid

__all__ = [
    "GENESIS",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "ServerReceipt",
    "VerifyReport",
]

GENESIS = "0" * 64  # ``prev`` of the first line

_FILE_MODE = 0o600  # the ledger reveals how much this node trained; owner only
_DIR_MODE = 0o700
_HEX64 = re.compile(r"[0-9a-f]{64}")

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


class LedgerError(FedguardError):
    """The ledger is missing, unreadable or fails verification, or a call misuses it."""


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


@dataclass(frozen=True, kw_only=True)
class ServerReceipt:
    """What a server recorded of one of the node's receipts (its ``metrics.jsonl``)."""

    where: str  # e.g. "metrics.jsonl line 3", for the report
    run: str
    server_round: int
    ledger_seq: int
    ledger_hash: str


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`Ledger.verify`: ``ok`` iff ``problems`` is empty."""

    ok: bool
    entries: int
    problems: list[str]


def canonical_bytes(obj: dict[str, Any]) -> bytes:
    """The canonical JSON encoding of ``obj`` (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry_hash(obj: dict[str, Any]) -> str:
    return _sha256(canonical_bytes({k: v for k, v in obj.items() if k != "hash"}))


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


class Ledger:
    """A node's append-only privacy ledger (one writer per file; the ledger does not lock).

    Parameters
    ----------
    path : pathlib.Path
        The JSON Lines file, e.g. ``state_dir / "ledger.jsonl"``. Its folder is created
        (mode 0700) on the first append; the file is written with mode 0600.
    """

    def __init__(self, *, path: Path) -> None:
        self._path = Path(path)

    def __repr__(self) -> str:
        return f"Ledger(path={str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The JSON Lines file."""
        return self._path

    # -- reading ----------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Check every line and the hash chain; name each problem found.

        Raises
        ------
        LedgerError
            The file does not exist or cannot be read.
        """
        data = self._read_bytes()
        _objs, problems = _scan(data)
        return VerifyReport(ok=not problems, entries=len(_objs), problems=problems)

    def verify_against(self, receipts: list[ServerReceipt]) -> VerifyReport:
        """:meth:`verify`, and every receipt the server stored matched by seq and hash.

        A receipt whose entry is missing (ledger truncated) or differs (ledger rewritten,
        even with recomputed hashes) is named. Entries the server never saw are not checked.
        """
        data = self._read_bytes()
        objs, problems = _scan(data)
        by_seq = {o["seq"]: o for o in objs}
        for r in receipts:
            got = by_seq.get(r.ledger_seq)
            what = f"{r.where}: run {r.run!r} round {r.server_round} (entry {r.ledger_seq})"
            if got is None:
                problems.append(f"{what}: missing from the ledger (truncated or rewritten)")
            elif got["hash"] != r.ledger_hash or got["kind"] != "pending":
                problems.append(
                    f"{what}: the ledger's entry differs from the one the server received "
                    f"(hash {str(got['hash'])[:12]}…, server {r.ledger_hash[:12]}…): rewritten"
                )
            elif (got["run"], got["server_round"]) != (r.run, r.server_round):
                problems.append(f"{what}: the ledger's entry is for another round: rewritten")
        return VerifyReport(ok=not problems, entries=len(objs), problems=problems)

    def entries(self) -> list[LedgerEntry]:
        """Every line, oldest first; ``[]`` if the file does not exist yet.

        Raises
        ------
        LedgerError
            The ledger fails verification (the message names the first problem).
        """
        if not self._path.exists():
            return []
        return [_to_entry(obj) for obj in self._verified()[0]]

    def spent(self, *, dataset_fingerprint: str) -> float:
        """Epsilon spent on ``dataset_fingerprint``: the largest ``epsilon_after`` among its
        entries, pending (possibly interrupted) ones included, void ones not; ``0.0`` if
        none. (A figure for reports: the node's budget is per record,
        :mod:`fedguard.privacy.record_budget`.)

        Raises
        ------
        LedgerError
            The ledger fails verification.
        """
        entries = self.entries()
        void = _voided(entries)
        eps = [
            e.epsilon_after
            for e in entries
            if e.kind == "pending"
            and e.hash not in void
            and e.dataset_fingerprint == dataset_fingerprint
            and e.epsilon_after is not None
        ]
        return max(eps, default=0.0)

    def committed(self) -> frozenset[str]:
        """Hashes of the pending entries that have a commit."""
        return frozenset(e.pending for e in self.entries() if e.kind == "commit" and e.pending)

    def voided(self) -> frozenset[str]:
        """Hashes of the pending entries marked void (their update was never released)."""
        return _voided(self.entries())

    def head(self) -> str:
        """sha256 of the newest line's canonical bytes (``GENESIS`` for an empty ledger);
        record it elsewhere to detect a ledger rewritten from scratch."""
        objs = self._verified()[0] if self._path.exists() else []
        return _sha256(canonical_bytes(objs[-1])) if objs else GENESIS

    # -- writing ----------------------------------------------------------------------

    def begin(
        self,
        *,
        run: str,
        server_round: int,
        dataset_fingerprint: str,
        sample_rate: float,
        noise_multiplier: float,
        steps: int,
        max_grad_norm: float,
        epsilon_after: float,
        delta: float,
        accountant: str,
        index_digest: str | None = None,
        max_multiplicity: int | None = None,
    ) -> LedgerEntry:
        """Append a pending entry (written and fsynced before this returns); call it before
        training. ``epsilon_after`` is the most-spent record's epsilon once this round
        completes; ``index_digest`` anchors the per-record index that includes the round.

        Raises
        ------
        ConfigError
            An argument is out of range (the message names it).
        LedgerError
            The existing ledger fails verification; nothing is written.
        """
        fields: dict[str, Any] = {
            "run": _text("run", run),
            "server_round": _integer("server_round", server_round, minimum=0),
            "dataset_fingerprint": _text("dataset_fingerprint", dataset_fingerprint),
            "sample_rate": _real("sample_rate", sample_rate, "a number in (0, 1]", 0, 1),
            "noise_multiplier": _real("noise_multiplier", noise_multiplier, "a number > 0", 0),
            "steps": _integer("steps", steps, minimum=1),
            "max_grad_norm": _real("max_grad_norm", max_grad_norm, "a number > 0", 0),
            "epsilon_after": _real("epsilon_after", epsilon_after, "a number >= 0", None),
            "delta": _real("delta", delta, "a number in (0, 1)", 0, 1, hi_open=True),
            "accountant": _accountant(accountant),
        }
        if index_digest is not None:
            if not isinstance(index_digest, str) or not _HEX64.fullmatch(index_digest):
                raise invalid("index_digest", allowed="64 lowercase hex digits", got=index_digest)
            fields["index_digest"] = index_digest
        if max_multiplicity is not None:
            fields["max_multiplicity"] = _integer("max_multiplicity", max_multiplicity, minimum=1)
        return self._append("pending", fields)

    def commit(self, entry: LedgerEntry) -> None:
        """Mark the pending ``entry`` (as returned by :meth:`begin`) as completed.

        Raises
        ------
        LedgerError
            ``entry`` is not a pending entry of this ledger, it is already committed, or the
            ledger fails verification; nothing is written.
        """
        if not isinstance(entry, LedgerEntry) or entry.kind != "pending":
            raise LedgerError(
                f"{self._path}: commit: expected a pending LedgerEntry, got {entry!r}"
            )
        self._append("commit", {"pending": entry.hash, "pending_seq": entry.seq})

    def void(self, entry: LedgerEntry) -> LedgerEntry:
        """Mark the committed pending ``entry`` void: its update never left the node.

        Call it only once nothing derived from the update can still be released (the
        caller's duty: the ledger cannot see the network); a crash before this line is
        written leaves the round spent.

        Raises
        ------
        LedgerError
            ``entry`` is not a committed pending entry of this ledger, it is already void,
            or the ledger fails verification; nothing is written.
        """
        if not isinstance(entry, LedgerEntry) or entry.kind != "pending":
            raise LedgerError(f"{self._path}: void: expected a pending LedgerEntry, got {entry!r}")
        return self._append("void", {"pending": entry.hash, "pending_seq": entry.seq})

    # -- internals --------------------------------------------------------------------

    def _read_bytes(self) -> bytes:
        try:
            return self._path.read_bytes()
        except FileNotFoundError:
            raise LedgerError(f"{self._path}: no privacy ledger at this path") from None
        except OSError as exc:
            raise LedgerError(f"{self._path}: cannot read the ledger ({exc.strerror})") from None

    def _verified(self) -> tuple[list[dict[str, Any]], bytes]:
        data = self._read_bytes()
        objs, problems = _scan(data)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise LedgerError(
                f"{self._path}: ledger fails verification: {problems[0]}{more};"
                " run `fedguard ledger verify --state DIR` for the full list"
            )
        return objs, data

    def _append(self, kind: str, fields: dict[str, Any]) -> LedgerEntry:
        if self._path.exists():
            objs, data = self._verified()
        else:
            objs, data = [], b""
        if kind in ("commit", "void"):
            self._check_commit(objs, fields, kind=kind)
        obj: dict[str, Any] = {
            "seq": len(objs),
            "kind": kind,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "prev": _sha256(canonical_bytes(objs[-1])) if objs else GENESIS,
            **fields,
        }
        obj["hash"] = _entry_hash(obj)
        folder = self._path.parent
        if not folder.exists():
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(_DIR_MODE)  # mkdir's mode is filtered by the umask; be explicit
        text = data.decode("utf-8") + canonical_bytes(obj).decode("utf-8") + "\n"
        atomic_write_text(self._path, text, mode=_FILE_MODE)
        return _to_entry(obj)

    def _check_commit(
        self, objs: list[dict[str, Any]], fields: dict[str, Any], *, kind: str
    ) -> None:
        seq, digest = fields["pending_seq"], fields["pending"]
        if (
            not (0 <= seq < len(objs))
            or objs[seq]["kind"] != "pending"
            or objs[seq]["hash"] != digest
        ):
            raise LedgerError(
                f"{self._path}: {kind}: entry {seq} is not a pending entry of this ledger"
            )
        done = {
            o["kind"]: o["seq"] for o in objs if o["kind"] != "pending" and o["pending"] == digest
        }
        if kind in done:
            what = "committed" if kind == "commit" else "void"
            raise LedgerError(
                f"{self._path}: {kind}: entry {seq} is already {what} (entry {done[kind]})"
            )
        if kind == "void" and "commit" not in done:
            raise LedgerError(
                f"{self._path}: void: entry {seq} is not committed (an interrupted round "
                "counts as spent)"
            )


# -- verification -----------------------------------------------------------------------


def _scan(data: bytes) -> tuple[list[dict[str, Any]], list[str]]:
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
        if _entry_hash(obj) != obj["hash"]:
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
        elif seq - 1 not in changed and obj["prev"] != _sha256(canonical_bytes(by_seq[seq - 1])):
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


def _voided(entries: list[LedgerEntry]) -> frozenset[str]:
    return frozenset(e.pending for e in entries if e.kind == "void" and e.pending)


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
    if obj["seq"] < 0 or not _HEX64.fullmatch(obj["hash"]) or not _HEX64.fullmatch(obj["prev"]):
        problems.append(f"{where}: malformed entry (seq, prev or hash out of range)")
        return None
    if obj.get("max_multiplicity", 1) < 1 or not _HEX64.fullmatch(obj.get("index_digest", GENESIS)):
        problems.append(f"{where}: malformed entry (max_multiplicity or index_digest out of range)")
        return None
    return obj


def _has_type(value: object, types: tuple[type, ...]) -> bool:
    return not isinstance(value, bool) and isinstance(value, types)


def _to_entry(obj: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(**obj)


# -- argument checks --------------------------------------------------------------------


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(key, allowed="a non-empty string", got=value)
    return value


def _real(
    key: str,
    value: object,
    allowed: str,
    lo: float | None,
    hi: float | None = None,
    *,
    hi_open: bool = False,
) -> float:
    """A finite float; ``lo`` is exclusive, ``hi`` inclusive unless ``hi_open``; a ``None``
    ``lo`` means ``>= 0``."""

    def ok(x: float) -> bool:
        inside = x >= 0 if lo is None else x > lo
        if hi is not None:
            inside = inside and (x < hi if hi_open else x <= hi)
        return inside

    return real(key, value, allowed=allowed, ok=ok)


def _accountant(value: object) -> str:
    # Imported here: reading a ledger (``fedguard budget``) must not import opacus/torch.
    from .accountants import AccountantMethod

    allowed = [m.value for m in AccountantMethod]
    if value not in allowed:
        raise invalid("accountant", allowed=allowed, got=value)
    return str(value)
