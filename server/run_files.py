"""Where one run's files live, and the outcome the ServerApp leaves for `fedguard server`.

A run is one federation config: ``<federation name>/<config digest>``, the id the nodes
book their privacy spend under. Its results go to ``out/<name>-<digest>/`` and its
checkpoint to ``state-dir/runs/<name>-<digest>/``: a changed config starts a new run in
new folders (nothing of an earlier run is overwritten, no file has to be moved by hand),
and the same config resumes its own run.

``flwr run`` exits 0 even when the ServerApp raised, so the ServerApp writes
``state-dir/run-outcome.json`` (atomically) before it returns, whatever happened, and the
launcher decides its exit status from that file alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedguard._io import atomic_write_json
from fedguard.deploy_config import FederationConfig
from fedguard.errors import DataError, FedguardError
from fedguard.files import CHECKPOINT_FILE, OUTCOME_FILE

__all__ = [
    "RunFiles",
    "RunOutcome",
    "RunStoppedError",
    "read_outcome",
    "run_files",
    "write_outcome",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class RunStoppedError(FedguardError):
    """The run cannot go on; the message says why, in one line."""


@dataclass(frozen=True, kw_only=True)
class RunFiles:
    """One run's id and folders."""

    run_id: str  # "<federation name>/<config digest>", as the nodes see it
    name: str  # the folder name: the id with anything but [A-Za-z0-9_.-] replaced
    results: Path  # out/<name>: metrics.jsonl, summary.json
    checkpoint: Path  # state-dir/runs/<name>/checkpoint.safetensors
    legacy_checkpoint: Path  # state-dir/checkpoint.safetensors (before runs had folders)
    outcome: Path  # state-dir/run-outcome.json: the last ServerApp's outcome


def run_files(cfg: FederationConfig) -> RunFiles:
    """The files of ``cfg``'s run."""
    digest = cfg.digest()
    name = f"{_UNSAFE.sub('_', cfg.federation.name)}-{digest}"
    return RunFiles(
        run_id=f"{cfg.federation.name}/{digest}",
        name=name,
        results=cfg.out / name,
        checkpoint=cfg.state_dir / "runs" / name / CHECKPOINT_FILE,
        legacy_checkpoint=cfg.state_dir / CHECKPOINT_FILE,
        outcome=cfg.state_dir / OUTCOME_FILE,
    )


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """How a ServerApp ended: ``completed`` only if every round aggregated enough."""

    run_id: str
    completed: bool
    rounds_done: int  # checkpointed rounds (each with >= min-nodes updates)
    rounds_planned: int
    reason: str  # one line: why it stopped, or where the results are


def write_outcome(path: Path, outcome: RunOutcome) -> None:
    atomic_write_json(path, asdict(outcome), mode=0o600)


def read_outcome(path: Path) -> RunOutcome | None:
    """The outcome at ``path``; None if there is none; DataError if it is malformed."""
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: unreadable run outcome ({exc})") from None
    types = {
        "run_id": str,
        "completed": bool,
        "rounds_done": int,
        "rounds_planned": int,
        "reason": str,
    }
    if not isinstance(raw, dict) or set(raw) != set(types):
        raise DataError(f"{path}: expected keys {sorted(types)}, got {str(raw)[:80]}")
    for key, kind in types.items():
        if not isinstance(raw[key], kind) or (kind is int and isinstance(raw[key], bool)):
            raise DataError(f"{path}: {key}: expected {kind.__name__}, got {raw[key]!r}")
    return RunOutcome(**raw)
