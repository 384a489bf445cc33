"""A round's side of the node's ledger: the spend read back, the charges written ahead.

Called under the state folder's lock (:mod:`fedguard.client.state_lock`), from reading
the ledger through committing the round. Every record's spend is recomputed from the
ledger and the per-record index (:mod:`fedguard.privacy.record_budget`); a dp-scaling
release and the round itself are written to the ledger before anything derived from the
records is released or trained: a round the ledger does not hold is neither trained nor
charged. It does not import Flower.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedguard.client.round_policy import RoundPlan
from fedguard.client.scaling import scale_records
from fedguard.errors import DataError, StateFileError
from fedguard.files import INDEX_FILE
from fedguard.fl.loop import TrainRequest
from fedguard.node_config import PolicySection
from fedguard.privacy import GaussianEvent
from fedguard.privacy.ledger import Ledger, LedgerEntry, LedgerError
from fedguard.privacy.record_budget import (
    RecordBudgetError,
    RecordSet,
    RecordSpend,
    index_digest,
    load_index,
    record_spend,
    updated_index,
    write_index,
)
from fedguard.task.schema import DPScalingPlan

__all__ = ["read_spend", "scale_before_round", "write_ahead"]

_log = logging.getLogger(__name__)


def read_spend(
    *, state_dir: Path, ledger: Ledger, records: RecordSet, server_round: int
) -> tuple[list[LedgerEntry], RecordSpend]:
    """The ledger's entries and every record's spend; a ledger or index that cannot be
    used refuses the round (``StateFileError``)."""
    try:
        entries = ledger.entries()
        index, warning = load_index(
            path=state_dir / INDEX_FILE, entries=entries, key_check=records.key_check
        )
        spend = record_spend(index=index, warning=warning, records=records, entries=entries)
    except (LedgerError, RecordBudgetError) as exc:
        raise StateFileError(f"round {server_round} refused: {exc}") from None
    if spend.warning:
        _log.warning("%s", spend.warning)
    return entries, spend


def scale_before_round(
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
    server_round: int,
) -> tuple[np.ndarray, list[LedgerEntry], RecordSpend]:
    """Release (charged first) or reload the dp columns' centre/scale: ``x`` scaled, and
    the entries and spend as the ledger holds them after the release."""
    try:
        scaled = scale_records(
            state_dir=state_dir,
            plan=plan,
            schema_digest=schema_digest,
            policy=policy,
            ledger=ledger,
            records=records,
            entries=entries,
            spend=spend,
            pre=pre,
            x=x,
        )
    except (LedgerError, OSError, DataError) as exc:
        why = " ".join(str(exc).split())
        raise StateFileError(
            f"round {server_round} refused: the dp scaling was not released ({why})"
        ) from None
    if not scaled.released_now:
        return scaled.x, entries, spend
    entries = ledger.entries()
    index, warning = load_index(
        path=state_dir / INDEX_FILE, entries=entries, key_check=records.key_check
    )
    spend = record_spend(index=index, warning=warning, records=records, entries=entries)
    return scaled.x, entries, spend


def write_ahead(
    *,
    state_dir: Path,
    ledger: Ledger,
    records: RecordSet,
    entries: list[LedgerEntry],
    spend: RecordSpend,
    request: TrainRequest,
    allowed: RoundPlan,
    policy: PolicySection,
) -> LedgerEntry:
    """The round's pending entry, written and fsynced before training, then the
    per-record index that includes it (whose digest the entry carries)."""
    r = request.server_round
    new_index = updated_index(spend=spend, records=records, seq=len(entries)).to_bytes()
    try:  # the ledger first: a round it does not hold is neither trained nor charged
        entry = ledger.begin(
            run=request.run_key,
            server_round=r,
            dataset_fingerprint=records.fingerprint,
            sample_rate=allowed.sample_rate,
            noise_multiplier=allowed.plan.noise_multiplier,
            steps=allowed.steps,
            max_grad_norm=request.max_grad_norm,
            epsilon_after=allowed.epsilon_after,
            delta=policy.delta,
            accountant=policy.accountant,
            index_digest=index_digest(new_index),
            max_multiplicity=records.max_multiplicity,
        )
    except (LedgerError, OSError) as exc:
        why = " ".join(str(exc).split())
        raise StateFileError(
            f"round {r} refused: the privacy ledger cannot be written ({why}); nothing "
            "was trained or charged"
        ) from None
    try:
        write_index(state_dir / INDEX_FILE, new_index)
    except OSError as exc:  # the ledger holds the round: it counts for every record
        _log.warning("%s: not written (%s)", state_dir / INDEX_FILE, exc.strerror)
    return entry
