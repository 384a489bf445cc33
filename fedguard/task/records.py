"""Record identity and per-record holdout membership.

A record's canonical bytes depend on the record alone: its raw values (a table row: every
column, sorted by column name, each value as :func:`~fedguard.task.schema.canonical_text`;
an array row: its dtype, shape and bytes, plus the label). So reordering rows or columns,
copying the file, changing a seed or a schema's scaling leaves every record's key as it
was, and deciding a holdout from a keyed hash of those bytes means adding or removing one
record moves no other record across the split (a seeded shuffle moves many: removing one
of 1,000 rows changed the training membership of 271 others).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence

import numpy as np

from fedguard.task.schema import canonical_text

__all__ = [
    "array_record_bytes",
    "holdout_mask",
    "record_keys",
    "simulation_holdout_key",
    "table_record_bytes",
]

_HOLDOUT_LABEL = b"fedguard/v1/simulation-holdout"


def table_record_bytes(table: dict[str, list[object]]) -> list[bytes]:
    """Canonical bytes of each row of ``table`` (column name -> values)."""
    names = sorted(table)
    columns = [[canonical_text(v) for v in table[name]] for name in names]
    n = len(columns[0]) if columns else 0
    return [
        json.dumps(
            [[name, col[row]] for name, col in zip(names, columns, strict=True)],
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
        for row in range(n)
    ]


def array_record_bytes(x: np.ndarray, y: np.ndarray) -> list[bytes]:
    """Canonical bytes of each example of raw arrays (before any scaling)."""
    xs = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    head = f"{xs.dtype.str}{xs.shape[1:]}".encode()
    labels = [canonical_text(v) or "" for v in y.tolist()]
    return [
        head + b"|" + xs[i].tobytes() + b"|" + labels[i].encode("utf-8") for i in range(len(xs))
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
