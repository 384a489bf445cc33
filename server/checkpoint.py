"""Global-model checkpoints: safetensors (never pickle), written atomically each round.

A checkpoint holds the global weights, the server optimiser's momentum, the last
completed round and a digest of the federation config that produced it; a restarted
server resumes only from a checkpoint with the same digest.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedguard._io import atomic_write_bytes
from fedguard.errors import DataError

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

FORMAT = "fedguard-checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    config_digest: str
    weights: list[np.ndarray]
    velocity: list[np.ndarray]


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    tensors = {
        f"weights.{i:04d}": np.ascontiguousarray(w) for i, w in enumerate(checkpoint.weights)
    }
    tensors.update(
        {f"velocity.{i:04d}": np.ascontiguousarray(v) for i, v in enumerate(checkpoint.velocity)}
    )
    metadata = {
        "format": FORMAT,
        "round": str(checkpoint.server_round),
        "config-digest": checkpoint.config_digest,
    }
    atomic_write_bytes(path, st_save(tensors, metadata=metadata), mode=0o600)


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``; None if there is none; DataError if it is damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len])
        meta = header.get("__metadata__", {})
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        tensors = st_load(data)
        server_round = int(meta["round"])
        config_digest = str(meta["config-digest"])
    except Exception as exc:
        raise DataError(
            f"checkpoint {path}: unreadable ({type(exc).__name__}: {exc}); "
            f"move it away to start over"
        ) from None
    weights = [tensors[k] for k in sorted(tensors) if k.startswith("weights.")]
    velocity = [tensors[k] for k in sorted(tensors) if k.startswith("velocity.")]
    return Checkpoint(
        server_round=server_round,
        config_digest=config_digest,
        weights=weights,
        velocity=velocity,
    )
