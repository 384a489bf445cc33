"""Record identity and per-record holdout membership.

A record's canonical bytes depend on the record's VALUES alone, not on how a file happens
to write them: a table row is every column the record is made of (sorted by name; a
schema's ``identifier`` and ``ignore`` columns left out, so a row number renumbered after
reordering names the same record), each cell a number when it reads as one (``1.5``,
``1.50``, ``15e-1``, `` +1.5`` are one value) and stripped text otherwise; an array row is
its values as float64, flattened (a uint8 or float32, big- or little-endian, ``(H, W)`` or
``(1, H, W)`` copy of an image is one record), plus its label. So reordering rows or
columns, copying or re-exporting the file, changing a seed or a schema's scaling leaves
every record's key as it was, and deciding a holdout from a keyed hash of those bytes
means adding or removing one record moves no other record across the split (a seeded
shuffle moves many: removing one of 1,000 rows changed the training membership of 271
others). What exact matching cannot do: a record whose value was changed, however
slightly, is another record (DP's neighbouring relation says the same).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Iterable, Sequence

import numpy as np

from fedguard.task.schema import canonical_text

__all__ = [
    "array_record_bytes",
    "holdout_mask",
    "record_partition",
    "record_keys",
    "simulation_holdout_key",
    "table_record_bytes",
]

_HOLDOUT_LABEL = b"fedguard/v1/simulation-holdout"


def table_record_bytes(
    table: dict[str, list[object]], *, skip: frozenset[str] = frozenset()
) -> list[bytes]:
    """Canonical bytes of each row of ``table`` (column name -> values), without the
    columns in ``skip`` (a schema's identifier and ignore columns)."""
    names = sorted(name for name in table if name not in skip)
    columns = [[_canonical_value(v) for v in table[name]] for name in names]
    n = len(columns[0]) if columns else 0
    return [
        json.dumps(
            [[name, col[row]] for name, col in zip(names, columns, strict=True)],
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
        for row in range(n)
    ]


def _canonical_value(value: object) -> str | None:
    """A cell as a value: a number when it reads as one (``repr`` of the float, integral
    values as integers), else its stripped text; ``None`` when missing."""
    text = canonical_text(value)
    if text is None:
        return None
    stripped = text.strip()
    try:
        number = float(stripped)
    except ValueError:
        return stripped
    if not math.isfinite(number):
        return stripped.lower()
    if number.is_integer() and abs(number) < 2**63:
        return str(int(number))
    return repr(number)


def array_record_bytes(x: np.ndarray, y: np.ndarray) -> list[bytes]:
    """Canonical bytes of each example of raw arrays (before any scaling): its values as
    little-endian float64, flattened, and its label."""
    flat = np.asarray(x, dtype="<f8").reshape(len(x), -1)
    flat = flat + 0.0  # -0.0 and 0.0 are one value
    labels = [canonical_text(v) or "" for v in y.tolist()]
    return [
        f"{flat.shape[1]}|".encode() + flat[i].tobytes() + b"|" + labels[i].encode("utf-8")
        for i in range(len(flat))
    ]


def record_keys(records: Iterable[bytes]) -> np.ndarray:
    """``(n, 32)`` uint8: SHA-256 of each record's canonical bytes (kept in memory only)."""
    digests = [hashlib.sha256(r).digest() for r in records]
    if not digests:
        return np.zeros((0, 32), dtype=np.uint8)
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32).copy()


def simulation_holdout_key(seed: int) -> bytes:
    """The key a simulation's test holdout is drawn with (public: derived from the seed)."""
    return hmac.new(_HOLDOUT_LABEL, int(seed).to_bytes(8, "big"), hashlib.sha256).digest()


def holdout_mask(records: Sequence[bytes], *, key: bytes, fraction: float) -> np.ndarray:
    """True for records held out: HMAC(key, record) read as a number in [0, 1) < fraction.

    Each record's side depends on its own bytes and the key only.
    """
    out = np.empty(len(records), dtype=bool)
    for i, r in enumerate(records):
        digest = hmac.new(key, r, hashlib.sha256).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64 < fraction
    return out


_PARTITION_LABEL = b"fedguard/v1/demo-partition"


def record_partition(keys: np.ndarray, *, parts: int, seed: int) -> np.ndarray:
    """Which of ``parts`` shares each record (its :func:`record_keys` row) falls in.

    Decided by a keyed hash of the record alone (the key public, from ``seed``): adding or
    removing one record moves no other between shares, which a seeded shuffle of the whole
    file did (43 of 407 records of one share moved when one record was appended).
    """
    key = hmac.new(_PARTITION_LABEL, int(seed).to_bytes(8, "big"), hashlib.sha256).digest()
    out = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys):
        digest = hmac.new(key, bytes(k), hashlib.sha256).digest()
        out[i] = int.from_bytes(digest[:8], "big") % parts
    return out
