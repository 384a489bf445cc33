"""A deployed node's ``scaling = "dp"`` columns (#13.1): released once, charged first.

The first time a node trains on a data set whose schema marks columns ``scaling = "dp"``,
it releases each column's centre and scale with the Gaussian mechanism
(:mod:`fedguard.privacy.dp_scaling`) and charges that release as its own ledger event,
``GaussianEvent(z, 1, 1)``, to every training record (the record index, like a round),
BEFORE anything is trained on the scaled data. The released statistics are then public
constants: they are stored (``dp-scaling.json``, 0600, atomic, keyed by the schema's
digest) and reused by every later run at no new charge (post-processing). Records added
later are scaled by the same constants: they took no part in the release, so it costs
them nothing.

The noise multiplier, ``SCALING_NOISE``, and why it is a constant: :mod:`fedguard.fl.scaling`,
which also holds the release's event and the scaling itself (shared with the simulations).

It never imports Flower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedguard._io import atomic_write_json
from fedguard.errors import DataError
from fedguard.files import INDEX_FILE, SCALING_FILE
from fedguard.fl.scaling import ReleasedScaling, apply_released, scaling_event
from fedguard.node_config import PolicySection
from fedguard.privacy import GaussianEvent
from fedguard.privacy.dp_scaling import dp_centre_scale, scaling_sensitivity
from fedguard.privacy.ledger import Ledger, LedgerEntry
from fedguard.privacy.record_budget import (
    RecordSet,
    RecordSpend,
    index_digest,
    updated_index,
    write_index,
)
from fedguard.task.schema import DPScalingPlan

__all__ = [
    "Scaled",
    "read_released",
    "release_to_come",
    "scale_records",
    "scaling_key",
    "store_released",
]

_log = logging.getLogger(__name__)

_FORMAT = "fedguard-dp-scaling/1"


def scaling_key(*, schema_digest: str, plan: DPScalingPlan) -> str:
    """What the stored statistics answer: the schema and its dp columns."""
    text = json.dumps([schema_digest, list(plan.columns), list(plan.ranges)])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Scaled:
    x: np.ndarray  # the training rows, dp columns scaled
    released_now: bool  # this call released (and charged) the statistics


def release_to_come(
    *, state_dir: Path, plan: DPScalingPlan, schema_digest: str, policy: PolicySection
) -> tuple[GaussianEvent, ...]:
    """The release the node must make before training (``()``: its result is stored)."""
    key = scaling_key(schema_digest=schema_digest, plan=plan)
    if read_released(state_dir / SCALING_FILE, key=key, columns=len(plan.columns)):
        return ()
    return (scaling_event(min_noise_multiplier=policy.min_noise_multiplier),)


def scale_records(
    *,
    state_dir: Path,
    plan: DPScalingPlan,
    schema_digest: str,
    policy: PolicySection,
    ledger: Ledger,
    records: RecordSet,
    entries: list[LedgerEntry],
    spend: RecordSpend,
    pre: tuple[GaussianEvent, ...],
    x: np.ndarray,
) -> Scaled:
    """``x`` scaled with the stored statistics, or with new ones released now: the event
    ``pre[0]`` (already checked against the budget by the caller, under budget.lock) is
    written to the ledger and charged to every record of ``records`` first.

    Raises
    ------
    LedgerError, OSError
        The ledger cannot be written: nothing is released.
    DataError
        The stored statistics are not what the node wrote.
    """
    path = state_dir / SCALING_FILE
    key = scaling_key(schema_digest=schema_digest, plan=plan)
    released = read_released(path, key=key, columns=len(plan.columns))
    if released is not None:
        return Scaled(x=apply_released(x, plan=plan, released=released), released_now=False)
    if len(pre) != 1:  # the caller saw it stored, under this same lock
        raise DataError(f"{path}: changed while the node held its budget lock")
    event = pre[0]
    new_index = updated_index(spend=spend, records=records, seq=len(entries)).to_bytes()
    entry = ledger.begin(  # the ledger first: a crash from here on counts it as spent
        run=f"dp-scaling/{key[:16]}",
        server_round=0,
        dataset_fingerprint=records.fingerprint,
        sample_rate=1.0,
        noise_multiplier=event.noise_multiplier,
        steps=1,
        max_grad_norm=scaling_sensitivity(len(plan.columns)),
        epsilon_after=spend.epsilon(method=policy.accountant, delta=policy.delta, extra=pre),
        delta=policy.delta,
        accountant=policy.accountant,
        index_digest=index_digest(new_index),
        max_multiplicity=records.max_multiplicity,
    )
    try:
        write_index(state_dir / INDEX_FILE, new_index)
    except OSError as exc:  # the ledger holds the release: it counts for every record
        _log.warning("%s: not written (%s)", state_dir / INDEX_FILE, exc.strerror)
    est = dp_centre_scale(
        values=np.asarray(x)[:, list(plan.columns)].astype(np.float64),
        ranges=plan.ranges,
        noise_multiplier=event.noise_multiplier,
        # OS entropy, as for the training noise: no seed anyone could search for.
        rng=np.random.default_rng(int.from_bytes(os.urandom(32), "little")),
    )
    released = ReleasedScaling(
        key=key,
        centre=tuple(float(v) for v in est.centre),
        scale=tuple(float(v) for v in est.scale),
        noise_multiplier=event.noise_multiplier,
        ledger_seq=entry.seq,
    )
    store_released(path, released)
    ledger.commit(entry)
    _log.info(
        "released the DP centre/scale of %s (noise multiplier %.3g): ledger entry %d",
        ", ".join(plan.names),
        event.noise_multiplier,
        entry.seq,
    )
    return Scaled(x=apply_released(x, plan=plan, released=released), released_now=True)


def read_released(path: Path, *, key: str, columns: int) -> ReleasedScaling | None:
    """The statistics stored for ``key`` (None: none yet); ``DataError`` naming the file
    when it is not what the node wrote."""
    doc = _load(path)
    entry = doc.get("released", {}).get(key)
    if entry is None:
        return None
    try:
        centre = tuple(float(v) for v in entry["centre"])
        scale = tuple(float(v) for v in entry["scale"])
        z, seq = float(entry["noise_multiplier"]), entry["ledger_seq"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: released scaling {key[:12]}: malformed ({exc})") from None
    finite = all(math.isfinite(v) for v in (*centre, *scale, z))
    if (
        not finite
        or len(centre) != columns
        or len(scale) != columns
        or min(scale, default=0.0) <= 0
        or not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0)
    ):
        raise DataError(
            f"{path}: released scaling {key[:12]}: expected {columns} finite centres and "
            "scales > 0 and a ledger seq"
        )
    return ReleasedScaling(key=key, centre=centre, scale=scale, noise_multiplier=z, ledger_seq=seq)


def store_released(path: Path, released: ReleasedScaling) -> None:
    """Add ``released`` to the file (atomic, 0600), keeping the other schemas' entries."""
    doc = _load(path)
    doc.setdefault("released", {})[released.key] = {
        "centre": list(released.centre),
        "scale": list(released.scale),
        "noise_multiplier": released.noise_multiplier,
        "ledger_seq": released.ledger_seq,
    }
    atomic_write_json(path, doc, mode=0o600)


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"format": _FORMAT, "released": {}}
    except (ValueError, RecursionError, OSError) as exc:
        raise DataError(f"{path}: unreadable released scaling ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise DataError(f"{path}: expected format {_FORMAT!r}")
    if not isinstance(doc.get("released"), dict):
        raise DataError(f"{path}: expected a 'released' object")
    return doc
