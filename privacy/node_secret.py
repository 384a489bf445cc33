"""A node's own secret key: what makes the node's record hashes and fingerprints useless
to anyone else.

Every identifier a node derives from its records (the per-record budget index, the data
set fingerprint in its privacy receipts, a local validation share) is a keyed hash under
this secret, never a plain hash: a plain SHA-256 of a data set lets an operator who knows
all other rows confirm a guess about the last one by hashing each candidate. The secret is
32 bytes from ``os.urandom``, created once in the node's state folder (mode 0600) and never
sent anywhere. Losing it only means the node can no longer match old record hashes: the
budget index then counts every record as having taken part in everything the ledger holds
(see :mod:`fedguard.privacy.record_budget`), so deleting it never frees budget.

Labels keep the uses apart: the same record gives unrelated digests for different purposes.

This module never imports Flower.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from fedguard._io import atomic_write_bytes
from fedguard.errors import FedguardError
from fedguard.files import NODE_SECRET_FILE

__all__ = [
    "LABEL_DATASET",
    "LABEL_RECORD",
    "LABEL_VALIDATION",
    "NodeSecretError",
    "keyed_digest",
    "load_node_secret",
]

_SECRET_BYTES = 32
_FILE_MODE = 0o600

LABEL_RECORD = b"fedguard/v1/record"
"""Per-record budget index: one digest per record."""
LABEL_DATASET = b"fedguard/v1/dataset-fingerprint"
"""The data set fingerprint a node puts in its receipts and ledger."""
LABEL_VALIDATION = b"fedguard/v1/validation-share"
"""Membership of a record in a node's local validation share."""


class NodeSecretError(FedguardError):
    """The node's secret key file exists but cannot be used."""


def load_node_secret(state_dir: Path) -> bytes:
    """The node's secret (created on first use: 32 random bytes, 0600, atomic).

    Raises
    ------
    NodeSecretError
        The file exists but is not exactly 32 bytes, or cannot be read.
    """
    path = Path(state_dir) / NODE_SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = os.urandom(_SECRET_BYTES)
        atomic_write_bytes(path, secret, mode=_FILE_MODE)
        return secret
    except OSError as exc:
        raise NodeSecretError(f"{path}: cannot read the node's secret ({exc.strerror})") from None
    if len(secret) != _SECRET_BYTES:
        raise NodeSecretError(
            f"{path}: the node's secret must be {_SECRET_BYTES} bytes, found {len(secret)}; "
            "it was damaged (delete it only if you accept that every record then counts as "
            "having taken part in every round this node's ledger holds)"
        )
    return secret


def keyed_digest(secret: bytes, label: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` under a key derived from ``secret`` for ``label``."""
    key = hmac.new(secret, label, hashlib.sha256).digest()
    return hmac.new(key, data, hashlib.sha256).digest()
