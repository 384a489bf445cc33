"""A node's stored reply: what it answers to the very same request asked again.

Sending the same released output twice costs no privacy; training again would. The
reply is kept as safetensors (weights) with its fields as JSON metadata, and read back
checked: nothing malformed is ever resent. It does not import Flower.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedguard._io import atomic_write_bytes
from fedguard.errors import DataError
from fedguard.fl.local import LocalResult
from fedguard.fl.loop import TrainRequest
from fedguard.safetensors_header import safetensors_metadata

__all__ = ["read_stored_reply", "round_key", "write_stored_reply"]


_REPLY_FIELDS = {
    "num_examples": "int",
    "train_loss": "float",
    "steps": "int",
    "epsilon": "float?",
    "delta": "float?",
    "noise_multiplier": "float?",
    "sample_rate": "float?",
}


def read_stored_reply(path: Path, *, key: str) -> LocalResult | None:
    """The reply stored in ``path`` (safetensors) if it answers request ``key``.

    None when there is no file or it answers another request; ``DataError`` naming the
    file when it is not a reply this node wrote.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None

    def bad(why: str) -> DataError:
        return DataError(f"{path}: unreadable stored reply ({why})")

    try:
        meta = safetensors_metadata(data)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if not isinstance(meta.get("key"), str):
        raise bad("no request key in its metadata")
    if meta["key"] != key:
        return None
    try:
        tensors = st_load(data)
        fields = json.loads(str(meta.get("result")))
    except (SafetensorError, ValueError, RecursionError) as exc:
        raise bad(" ".join(str(exc).split())[:200]) from None
    if not isinstance(fields, dict) or set(fields) != set(_REPLY_FIELDS):
        raise bad(f"expected the fields {sorted(_REPLY_FIELDS)}")
    for name, kind in _REPLY_FIELDS.items():
        v = fields[name]
        if kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
        else:
            number = isinstance(v, int | float) and not isinstance(v, bool)
            ok = (number and math.isfinite(v)) or (kind == "float?" and v is None)
        if not ok:
            raise bad(f"{name}: expected a finite {kind.rstrip('?')}, got {v!r}")
    if not tensors or any(t.dtype != np.float32 for t in tensors.values()):
        raise bad("expected float32 weight arrays")
    return LocalResult(weights=[tensors[k] for k in sorted(tensors)], **fields)


def write_stored_reply(path: Path, *, key: str, result: LocalResult) -> None:
    """Store ``result`` as the reply to request ``key``, in the form
    :func:`read_stored_reply` reads (owner only: it is what the node released)."""
    fields = {k: v for k, v in dataclasses.asdict(result).items() if k != "weights"}
    tensors = {f"{i:05d}": np.ascontiguousarray(w) for i, w in enumerate(result.weights)}
    atomic_write_bytes(
        path,
        st_save(tensors, metadata={"key": key, "result": json.dumps(fields)}),
        mode=0o600,
    )


def round_key(request: TrainRequest, weights: list[np.ndarray]) -> str:
    """Identifies a request: federation, round, training settings and global weights."""
    h = hashlib.sha256(repr(dataclasses.astuple(request)).encode())
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()
