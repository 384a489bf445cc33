"""Global-model checkpoints: safetensors (never pickle), written atomically each round.

A checkpoint holds the global weights, the server optimiser's state (momentum, or
FedAdam's moments), the last completed round and a digest of the federation config that
produced it; a restarted server resumes only from a checkpoint with the same digest. Its
metadata carries the SHA-256 of every tensor (name, dtype, shape, bytes): safetensors checks
only the header, so a flipped bit in a weight would otherwise load silently.

:func:`save_round` and :func:`resume` are the whole of what a round loop needs to survive
a crash: the deployed ServerApp calls them, and so does the test that checks a crashed
and resumed federation ends with the very model of an uninterrupted one. Everything else a
round depends on derives from (seed, round, client), never from process state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedguard._io import atomic_write_bytes
from fedguard.errors import DataError
from fedguard.fl.strategies import ServerOptimizer
from fedguard.safetensors_header import safetensors_metadata

__all__ = [
    "Checkpoint",
    "ResumePoint",
    "load_checkpoint",
    "resume",
    "save_checkpoint",
    "save_round",
]

FORMAT = "fedguard-checkpoint/2"  # /2: adds "sha256" over the tensors


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
        "sha256": _tensors_digest(tensors),
    }
    atomic_write_bytes(path, st_save(tensors, metadata=metadata), mode=0o600)


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``; None if there is none; DataError if it is damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        meta = safetensors_metadata(data)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        tensors = st_load(data)
        server_round = int(meta["round"])
        config_digest = str(meta["config-digest"])
        stored = str(meta["sha256"])
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise DataError(
            f"checkpoint {path}: unreadable ({reason}); move it away to start over"
        ) from None
    computed = _tensors_digest(tensors)
    if stored != computed:
        raise DataError(
            f"checkpoint {path}: checksum mismatch (stored sha256 {stored[:16]}…, contents "
            f"{computed[:16]}…): the file was damaged on disk; move it away to start over"
        )
    weights = [tensors[k] for k in sorted(tensors) if k.startswith("weights.")]
    velocity = [tensors[k] for k in sorted(tensors) if k.startswith("velocity.")]
    return Checkpoint(
        server_round=server_round,
        config_digest=config_digest,
        weights=weights,
        velocity=velocity,
    )


def _tensors_digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{t.dtype.str}|{t.shape}|".encode())
        h.update(t.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ResumePoint:
    """Where a (re)started round loop goes on: the round to run next and its weights."""

    first_round: int
    weights: list[np.ndarray]
    checkpoint: Checkpoint | None  # None: a fresh start


def save_round(
    path: Path,
    *,
    server_round: int,
    config_digest: str,
    weights: list[np.ndarray],
    server: ServerOptimizer,
) -> None:
    """Checkpoint the end of ``server_round``: its global weights and the optimiser state."""
    save_checkpoint(
        path,
        Checkpoint(
            server_round=server_round,
            config_digest=config_digest,
            weights=weights,
            velocity=server.state(),
        ),
    )


def resume(
    path: Path, *, config_digest: str, weights: list[np.ndarray], server: ServerOptimizer
) -> ResumePoint:
    """The round loop's starting point: after the checkpoint at ``path``, if there is one.

    ``weights`` are the initial global weights (used on a fresh start). With a checkpoint,
    its optimiser state is loaded into ``server`` and its weights are returned.

    Raises
    ------
    DataError
        The checkpoint is damaged, or was made with another federation config.
    """
    checkpoint = load_checkpoint(path)
    if checkpoint is None:
        return ResumePoint(first_round=1, weights=weights, checkpoint=None)
    if checkpoint.config_digest != config_digest:
        raise DataError(
            f"checkpoint {path}: made with another federation config (digest "
            f"{checkpoint.config_digest}, expected {config_digest}); move it away to start over"
        )
    server.load_state(checkpoint.velocity)
    return ResumePoint(
        first_round=checkpoint.server_round + 1,
        weights=checkpoint.weights,
        checkpoint=checkpoint,
    )
