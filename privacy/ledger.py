"""A node's privacy ledger: every epsilon spent, in a tamper-evident, crash-safe file.

The lines' format (JSON Lines, each line hash-chained to the one before) and the
verifier that names each kind of damage: :mod:`fedguard.privacy.ledger_format`.

Write-ahead: a node calls :meth:`Ledger.begin` *before* training (the "pending" line is on
disk, fsynced, before any data is touched) and :meth:`Ledger.commit` after. A crash in
between leaves a pending entry, which counts as spent.

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

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedguard._checks import integer as _integer
from fedguard._checks import real
from fedguard._io import atomic_write_text
from fedguard.errors import FedguardError, invalid

from .ledger_format import (
    GENESIS,
    HEX64,
    LedgerEntry,
    canonical_bytes,
    entry_hash,
    scan,
    sha256_hex,
    to_entry,
)

__all__ = [
    "GENESIS",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "ServerReceipt",
    "VerifyReport",
]

_FILE_MODE = 0o600  # the ledger reveals how much this node trained; owner only
_DIR_MODE = 0o700


class LedgerError(FedguardError):
    """The ledger is missing, unreadable or fails verification, or a call misuses it."""


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
        _objs, problems = scan(data)
        return VerifyReport(ok=not problems, entries=len(_objs), problems=problems)

    def verify_against(self, receipts: list[ServerReceipt]) -> VerifyReport:
        """:meth:`verify`, and every receipt the server stored matched by seq and hash.

        A receipt whose entry is missing (ledger truncated) or differs (ledger rewritten,
        even with recomputed hashes) is named. Entries the server never saw are not checked.
        """
        data = self._read_bytes()
        objs, problems = scan(data)
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
        return [to_entry(obj) for obj in self._verified()[0]]

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
        return sha256_hex(canonical_bytes(objs[-1])) if objs else GENESIS

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
            if not isinstance(index_digest, str) or not HEX64.fullmatch(index_digest):
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
        objs, problems = scan(data)
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
            "prev": sha256_hex(canonical_bytes(objs[-1])) if objs else GENESIS,
            **fields,
        }
        obj["hash"] = entry_hash(obj)
        folder = self._path.parent
        if not folder.exists():
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(_DIR_MODE)  # mkdir's mode is filtered by the umask; be explicit
        text = data.decode("utf-8") + canonical_bytes(obj).decode("utf-8") + "\n"
        atomic_write_text(self._path, text, mode=_FILE_MODE)
        return to_entry(obj)

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


def _voided(entries: list[LedgerEntry]) -> frozenset[str]:
    return frozenset(e.pending for e in entries if e.kind == "void" and e.pending)


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
