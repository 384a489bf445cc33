"""A node's lifetime budget per record: which ledger events each record took part in.

The budget belongs to the records, not to a file's bytes. For every record it ever trained
on, the node keeps a keyed digest (HMAC-SHA256 under the node's secret, label
``LABEL_RECORD``, truncated to 16 bytes) and the ledger events it took part in. A round may
spend only what the MOST-spent of its records has left, so reordering rows, renaming or
copying the file, a new split seed, appending or removing rows cannot reset any record.

The index (``record-index.npz``, 0600, written atomically, read with
``allow_pickle=False``) holds the sorted digests, one history id per digest, and the
histories: lists of ``(ledger seq, multiplicity)``. The event parameters are NOT in the
index: they are read from the ledger's pending entries, so the ledger is the record of
reference and epsilon is recomputed from it. Few distinct histories exist (records that
trained together share one), so the worst record is a maximum over a handful.

Why 16 bytes: the digests only have to tell this node's records apart. Two distinct
records collide with probability about n**2 / 2**129 (1e-20 for a billion records), and a
collision only makes two records share the longer history (more spent, never less).

Anchoring, so that no edit of the index frees budget: each pending ledger entry carries
``index_digest``, the sha256 of the index file that includes its event, written to the
ledger BEFORE the index. An index is used only if the ledger entry it names (its newest
event) carries its digest and every event it references is a pending entry of the
ledger. Ledger events newer than the index (a crash between the two writes), and every
event when the index is missing, edited, stale or unreadable, are counted for EVERY
record (the worst case, with a one-line warning naming the file), and so are they for
records the index does not hold (its ``default`` history). An index that names more ledger
entries than the ledger holds means the ledger was truncated or replaced: refused.

Void rounds (a ledger ``"void"`` line: the round's update never left the node) stay in
the index, which the ledger anchors, but count for no record: :func:`record_spend` leaves
them out of every history.

Duplicates: a record appearing k > 1 times in one data set is a group of k. A mechanism
that is (eps, d)-DP is (k eps, k e^((k-1) eps) d)-DP for groups of k (Dwork and Roth,
Thm 2.2 generalised); the node solves ``k e^((k-1) eps(d)) d = delta`` for the per-record
``d`` by fixed-point iteration (then checks the inequality), and counts the record at
``k eps(d)``. A history counts with the largest k it ever had (valid: in a round where the
record appeared fewer times, the extra copies change nothing). No convergence: refused.

This module never imports Flower nor ``fedguard.task``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .accountants import Accountant, AccountantMethod, GaussianEvent
from .group_privacy import group_epsilon
from .ledger import LedgerEntry
from .record_index import (
    DIGEST_BYTES,
    History,
    RecordBudgetError,
    RecordIndex,
    RecordSet,
    index_digest,
    record_set,
    write_index,
)

__all__ = [
    "DIGEST_BYTES",
    "LedgerEvent",
    "ledger_events",
    "Profile",
    "RecordBudgetError",
    "RecordIndex",
    "RecordSet",
    "RecordSpend",
    "group_epsilon",
    "index_digest",
    "load_index",
    "record_set",
    "record_spend",
    "updated_index",
    "write_index",
]

# -- the ledger's events --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LedgerEvent:
    """One pending ledger entry's DP-SGD event (the ledger is the reference)."""

    seq: int
    run: str
    event: GaussianEvent
    multiplicity: int  # the most times one record appeared in that round's data set
    void: bool = False  # the ledger marks the round void: it counts for no record


def ledger_events(entries: Sequence[LedgerEntry]) -> dict[int, LedgerEvent]:
    """Every pending entry's event (pending ones count as spent: write-ahead); the ones a
    ``"void"`` line gives back are marked ``void``."""
    out: dict[int, LedgerEvent] = {}
    voided = {e.pending for e in entries if e.kind == "void"}
    for e in entries:
        if e.kind != "pending":  # "commit" and "void" carry no event
            continue
        out[e.seq] = LedgerEvent(
            seq=e.seq,
            run=e.run or "",
            event=GaussianEvent(
                noise_multiplier=float(e.noise_multiplier or 0.0),
                sample_rate=float(e.sample_rate or 0.0),
                steps=int(e.steps or 0),
            ),
            multiplicity=int(e.max_multiplicity or 1),
            void=e.hash in voided,
        )
    return out


def load_index(
    *, path: Path, entries: Sequence[LedgerEntry], key_check: bytes
) -> tuple[RecordIndex, str | None]:
    """The index if the ledger anchors it and the node's secret (``key_check``) keyed it,
    else an empty one and the one-line warning.

    Raises
    ------
    RecordBudgetError
        The index names ledger entries the ledger does not hold (ledger truncated).
    """
    events = ledger_events(entries)
    worst = f"every record counts as having taken part in all {len(events)} rounds of the ledger"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return RecordIndex.empty(), (f"{path}: missing; {worst}" if events else None)
    except OSError as exc:
        return RecordIndex.empty(), f"{path}: unreadable ({exc.strerror}); {worst}"
    try:
        index = RecordIndex.from_bytes(data, source=str(path))
    except RecordBudgetError as exc:
        return RecordIndex.empty(), f"{exc}; {worst}"
    if index.ledger_seq >= len(entries):
        raise RecordBudgetError(
            f"{path}: covers ledger entry {index.ledger_seq} but the ledger holds only "
            f"{len(entries)} entries: the ledger was truncated or replaced; refusing (restore "
            "it; `fedguard ledger verify --against` compares it with the server's receipts)"
        )
    anchor = entries[index.ledger_seq] if index.ledger_seq >= 0 else None
    referenced = {s for h in index.histories for s, _ in h}
    if (
        anchor is None
        or anchor.kind != "pending"
        or anchor.index_digest != index_digest(data)
        or any(s not in events or s > index.ledger_seq for s in referenced)
    ):
        return RecordIndex.empty(), f"{path}: does not match the ledger; {worst}"
    if index.key_check != key_check:  # node-secret.key replaced: old digests unmatchable
        return RecordIndex.empty(), f"{path}: made with another node secret; {worst}"
    return index, None


# -- what the current records have spent ----------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Profile:
    """Records that took part in the same events with the same group size."""

    seqs: tuple[int, ...]  # ledger events, oldest first
    group: int
    records: int


@dataclass(frozen=True, kw_only=True)
class RecordSpend:
    """What a data set's records have spent, from the ledger; the worst record rules."""

    index: RecordIndex
    unindexed: tuple[int, ...]  # ledger events counted for every record
    profiles: tuple[Profile, ...]
    events: Mapping[int, LedgerEvent]
    record_ids: np.ndarray  # per distinct current record: its history id in ``index``
    warning: str | None
    _cache: dict[tuple[int, ...], tuple[GaussianEvent, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def epsilon(
        self,
        *,
        method: AccountantMethod | str,
        delta: float,
        extra: Sequence[GaussianEvent] = (),
        run: str | None = None,
    ) -> float:
        """The most-spent record's epsilon after ``extra`` (0.0 for a fresh data set);
        with ``run``, counting only that run's events (the run's own epsilon)."""
        return self.worst(method=method, delta=delta, extra=extra, run=run)[0]

    def rounds(self, *, run: str) -> int:
        """The most rounds of ``run`` any of the records took part in."""
        return max(
            (sum(self.events[s].run == run for s in p.seqs) for p in self.profiles), default=0
        )

    def worst(
        self,
        *,
        method: AccountantMethod | str,
        delta: float,
        extra: Sequence[GaussianEvent] = (),
        run: str | None = None,
    ) -> tuple[float, Accountant]:
        """The most-spent record's epsilon after ``extra``, and its events (no group factor)."""
        worst: tuple[float, Accountant] = (0.0, Accountant(method=method))
        for p in self.profiles:
            seqs = p.seqs if run is None else tuple(s for s in p.seqs if self.events[s].run == run)
            base = self._cache.get(seqs)
            if base is None:
                base = self._cache[seqs] = tuple(self.events[s].event for s in seqs)
            acc = Accountant(method=method)
            for e in (*base, *extra):
                acc.compose(e)
            eps = group_epsilon(accountant=acc, group=p.group, delta=delta)
            if eps >= worst[0]:
                worst = (eps, acc)
        return worst


def record_spend(
    *, index: RecordIndex, warning: str | None, records: RecordSet, entries: Sequence[LedgerEntry]
) -> RecordSpend:
    """The distinct spend profiles of ``records`` under ``index`` and the ledger."""
    events = ledger_events(entries)
    live = {s for s, e in events.items() if not e.void}
    unindexed = tuple(s for s in sorted(events) if s > index.ledger_seq and s in live)
    u_mult = max((events[s].multiplicity for s in unindexed), default=1)
    ids = _history_ids(index, records.digests)
    scale = int(records.counts.max(initial=1)) + 1
    keys, sizes = np.unique(ids * scale + records.counts, return_counts=True)
    profiles = []
    for key, size in zip(keys.tolist(), sizes.tolist(), strict=True):
        hid, k = divmod(key, scale)
        h = tuple((s, m) for s, m in index.histories[hid] if s in live)
        group = max(k, u_mult if unindexed else 1, *(m for _, m in h))
        profiles.append(Profile(seqs=tuple(s for s, _ in h) + unindexed, group=group, records=size))
    merged: dict[tuple[tuple[int, ...], int], int] = {}
    for p in profiles:
        merged[(p.seqs, p.group)] = merged.get((p.seqs, p.group), 0) + p.records
    return RecordSpend(
        index=index,
        unindexed=unindexed,
        profiles=tuple(Profile(seqs=s, group=g, records=n) for (s, g), n in merged.items()),
        events=events,
        record_ids=ids,
        warning=warning,
    )


def _history_ids(index: RecordIndex, digests: np.ndarray) -> np.ndarray:
    """Each digest's history id in ``index`` (its ``default`` for one it does not hold)."""
    if not len(index.digests):
        return np.full(len(digests), index.default, dtype=np.int64)
    pos = np.minimum(np.searchsorted(index.digests, digests), len(index.digests) - 1)
    found = index.digests[pos] == digests
    return np.where(found, index.history[pos], index.default).astype(np.int64)


def updated_index(*, spend: RecordSpend, records: RecordSet, seq: int) -> RecordIndex:
    """The index once ledger event ``seq`` is charged to every record of ``records``.

    Unindexed events are folded into every history (the worst case becomes the record).
    """
    index = spend.index
    fold: History = tuple((s, spend.events[s].multiplicity) for s in spend.unindexed)
    histories = [h + fold for h in index.histories]
    # Each (previous history, multiplicity now) pair gets its own new history.
    scale = int(records.counts.max(initial=1)) + 1
    pair_keys, inverse = np.unique(spend.record_ids * scale + records.counts, return_inverse=True)
    new_ids = np.empty(len(pair_keys), dtype=np.int64)
    for i, key in enumerate(pair_keys.tolist()):
        hid, k = divmod(key, scale)
        new_ids[i] = len(histories)
        histories.append(histories[hid] + ((seq, k),))
    current = new_ids[inverse.reshape(-1)]
    keep = ~np.isin(index.digests, records.digests, assume_unique=True)
    digests = np.concatenate([index.digests[keep], records.digests])
    history = np.concatenate([index.history[keep], current])
    order = np.argsort(digests, kind="stable")
    digests, history = digests[order], history[order]
    # Drop histories no record refers to any more, and renumber.
    used = np.unique(np.concatenate([history, [index.default]]))
    return RecordIndex(
        digests=digests,
        history=np.searchsorted(used, history).astype(np.int64),
        histories=tuple(histories[i] for i in used.tolist()),
        default=int(np.searchsorted(used, index.default)),
        ledger_seq=seq,
        key_check=records.key_check,
    )
