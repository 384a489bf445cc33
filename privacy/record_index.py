"""The per-record budget's index file and the keyed record digests it holds.

See :mod:`fedguard.privacy.record_budget` for what the index means and how the ledger
anchors it. This module only keys records (HMAC-SHA256 under the node's secret, label
``LABEL_RECORD``, truncated to 16 bytes) and reads and writes the index: a ``.npz`` of plain
arrays, read with ``allow_pickle=False`` and checked array by array, written atomically
(0600). It never imports Flower nor ``fedguard.task``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedguard._io import atomic_write_bytes
from fedguard.errors import FedguardError

from .node_secret import LABEL_DATASET, LABEL_RECORD, keyed_digest

__all__ = [
    "DIGEST_BYTES",
    "History",
    "RecordBudgetError",
    "RecordIndex",
    "RecordSet",
    "index_digest",
    "record_set",
    "write_index",
]

DIGEST_BYTES = 16
_FORMAT = 1
_FILE_MODE = 0o600  # which records trained when: owner only
_ARRAYS = (
    "format",
    "key_check",
    "digests",
    "history",
    "default",
    "ledger_seq",
    "offsets",
    "seqs",
    "mults",
)


class RecordBudgetError(FedguardError):
    """The per-record budget cannot be computed (the node refuses to train)."""


# -- the current data set -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RecordSet:
    """A data set as the budget sees it: distinct keyed record digests and their counts."""

    digests: np.ndarray  # (m,) "S16", sorted, unique
    counts: np.ndarray  # (m,) int64 >= 1: how many times each record appears
    rows: int
    fingerprint: str  # "hmac:" + hex: keyed, so it confirms no guess about a record
    key_check: bytes  # which secret keyed the digests (an index made with another is void)

    @property
    def max_multiplicity(self) -> int:
        return int(self.counts.max(initial=1))


def record_set(*, secret: bytes, keys: np.ndarray) -> RecordSet:
    """The records of ``keys`` ((n, 32) uint8, sha256 of each record's raw bytes)."""
    keys = np.ascontiguousarray(keys)
    if keys.ndim != 2 or keys.dtype != np.uint8 or keys.shape[1] != 32:
        raise RecordBudgetError(
            f"record keys: expected an (n, 32) uint8 array, got {keys.dtype} {keys.shape}"
        )
    # keyed_digest(secret, LABEL_RECORD, key)[:16], with the label's key derived once.
    base = hmac.new(hmac.new(secret, LABEL_RECORD, hashlib.sha256).digest(), b"", hashlib.sha256)
    out = bytearray(DIGEST_BYTES * len(keys))
    for i, row in enumerate(keys):
        h = base.copy()
        h.update(row.tobytes())
        out[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES] = h.digest()[:DIGEST_BYTES]
    flat = np.frombuffer(bytes(out), dtype=f"S{DIGEST_BYTES}")
    digests, counts = np.unique(flat, return_counts=True)
    fp_key = hmac.new(secret, LABEL_DATASET, hashlib.sha256).digest()
    # Sorted digests with their repeats: any order of the same rows, one fingerprint.
    fingerprint = hmac.new(fp_key, np.sort(flat).tobytes(), hashlib.sha256).hexdigest()
    return RecordSet(
        digests=digests,
        counts=counts.astype(np.int64),
        rows=len(keys),
        fingerprint="hmac:" + fingerprint,
        # The record label's digest of no bytes: a record key is never empty.
        key_check=keyed_digest(secret, LABEL_RECORD, b"")[:DIGEST_BYTES],
    )


# -- the index ------------------------------------------------------------------------


History = tuple[tuple[int, int], ...]  # ((ledger seq, multiplicity), ...), oldest first


@dataclass(frozen=True, kw_only=True)
class RecordIndex:
    """Every record the node trained on, and the ledger events each took part in."""

    digests: np.ndarray  # (M,) "S16", sorted, unique
    history: np.ndarray  # (M,) int64: an index into ``histories``
    histories: tuple[History, ...]
    default: int  # the history of a record the index does not hold
    ledger_seq: int  # the newest ledger entry whose event it includes; -1: none
    key_check: bytes = b""  # RecordSet.key_check of the secret that keyed ``digests``

    @classmethod
    def empty(cls) -> RecordIndex:
        return cls(
            digests=np.zeros(0, dtype=f"S{DIGEST_BYTES}"),
            history=np.zeros(0, dtype=np.int64),
            histories=((),),
            default=0,
            ledger_seq=-1,
        )

    def to_bytes(self) -> bytes:
        lengths = [len(h) for h in self.histories]
        pairs = [p for h in self.histories for p in h]
        buf = io.BytesIO()
        np.savez(
            buf,
            format=np.int64(_FORMAT),
            key_check=np.frombuffer(self.key_check, dtype=np.uint8),
            digests=self.digests.view(np.uint8).reshape(-1, DIGEST_BYTES),
            history=self.history.astype(np.int64),
            default=np.int64(self.default),
            ledger_seq=np.int64(self.ledger_seq),
            offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
            seqs=np.array([s for s, _ in pairs], dtype=np.int64),
            mults=np.array([m for _, m in pairs], dtype=np.int64),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str) -> RecordIndex:
        """Parse and check an index file (``RecordBudgetError`` naming ``source``)."""

        def bad(why: str) -> RecordBudgetError:
            return RecordBudgetError(f"{source}: not a valid record index ({why})")

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if sorted(z.files) != sorted(_ARRAYS):
                    raise bad(f"expected the arrays {sorted(_ARRAYS)}, got {sorted(z.files)}")
                a = {k: z[k] for k in _ARRAYS}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise bad(" ".join(str(exc).split())[:120]) from None
        ints = {k: v for k, v in a.items() if k not in ("digests", "key_check")}
        if any(v.dtype != np.int64 for v in ints.values()) or any(
            a[k].dtype != np.uint8 for k in ("digests", "key_check")
        ):
            raise bad("unexpected array types")
        if int(a["format"]) != _FORMAT or a["digests"].ndim != 2:
            raise bad("unknown format")
        digests = np.ascontiguousarray(a["digests"]).view(f"S{DIGEST_BYTES}").reshape(-1)
        offsets, seqs, mults, history = a["offsets"], a["seqs"], a["mults"], a["history"]
        n_hist = len(offsets) - 1
        ok = (
            a["digests"].shape[1] == DIGEST_BYTES
            and history.shape == digests.shape
            and n_hist >= 1
            and offsets[0] == 0
            and offsets[-1] == len(seqs) == len(mults)
            and bool(np.all(np.diff(offsets) >= 0))
            and bool(np.all(mults >= 1))
            and bool(np.all(seqs >= 0))
            and bool(np.all((history >= 0) & (history < n_hist)))
            and 0 <= int(a["default"]) < n_hist
            and bool(np.all(digests[1:] > digests[:-1]))
        )
        if not ok:
            raise bad("inconsistent arrays")
        histories = tuple(
            tuple(zip(seqs[o:e].tolist(), mults[o:e].tolist(), strict=True))
            for o, e in itertools.pairwise(offsets.tolist())
        )
        return cls(
            digests=digests,
            history=history,
            histories=histories,
            default=int(a["default"]),
            ledger_seq=int(a["ledger_seq"]),
            key_check=a["key_check"].tobytes(),
        )


def index_digest(data: bytes) -> str:
    """What a pending ledger entry records of the index that includes its event."""
    return hashlib.sha256(data).hexdigest()


def write_index(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, mode=_FILE_MODE)
