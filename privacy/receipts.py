"""Privacy receipts: what a node tells the server it spent in a round, from its ledger.

A receipt is the public part of the round's ledger entry (no data, no weights), plus the
entry's sequence number and hash, so the server's record and the node's ledger can be
matched line by line. ``fedguard.transport`` encodes it as ``fedguard.v1.PrivacyReceipt``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .ledger import Ledger

__all__ = [
    "EPSILON_REPORT_STEP",
    "coarse_epsilon",
    "PrivacyReceipt",
    "receipt_for",
    "without_count",
]


@dataclass(frozen=True, kw_only=True)
class PrivacyReceipt:
    run: str
    server_round: int
    dataset_fingerprint: str  # "hmac:" + hex, keyed with the node's secret: confirms no guess
    # None: withheld, they give away the record count (see :func:`without_count`).
    sample_rate: float | None
    noise_multiplier: float | None
    steps: int | None
    max_grad_norm: float
    epsilon: float  # the most-spent record of the data set, after the round
    delta: float
    accountant: str
    ledger_seq: int
    ledger_hash: str
    committed: bool


EPSILON_REPORT_STEP = 0.1
"""When a node keeps its record count, the epsilon it reports is rounded UP to this step."""


def coarse_epsilon(epsilon: float) -> float:
    """``epsilon`` rounded up to :data:`EPSILON_REPORT_STEP` (still an upper bound).

    The exact epsilon after a round is a function of the sample rate batch / n: reported to
    six digits it gave n to within one batch, or exactly with a batch of 1 (an auditor
    measured it). Rounded up to 0.1 it tells the server little more than n's order of
    magnitude; the node's own ledger keeps the exact figure.
    """
    steps = math.ceil(epsilon / EPSILON_REPORT_STEP - 1e-9)
    return round(max(steps, 0) * EPSILON_REPORT_STEP, 10)


def without_count(receipt: PrivacyReceipt) -> PrivacyReceipt:
    """The receipt without the fields that give away the node's record count.

    ``sample_rate`` is batch / n, ``steps`` is epochs x ceil(n / batch), and the noise
    multiplier is calibrated from both: each reveals n, and so does the exact epsilon
    (reported rounded up, :func:`coarse_epsilon`). What stays: run, round, the data set's
    keyed fingerprint, the requested clipping norm, the coarse epsilon, delta, accountant
    and the ledger entry's seq and hash (and whether it is committed).
    """
    return dataclasses.replace(
        receipt,
        sample_rate=None,
        noise_multiplier=None,
        steps=None,
        epsilon=coarse_epsilon(receipt.epsilon),
    )


def receipt_for(ledger: Ledger, *, run: str, server_round: int) -> PrivacyReceipt | None:
    """The receipt of the newest ledger entry for ``(run, server_round)``, if any."""
    entries = ledger.entries()
    committed = ledger.committed()
    for e in reversed(entries):
        if e.kind == "pending" and e.run == run and e.server_round == server_round:
            return PrivacyReceipt(
                run=run,
                server_round=server_round,
                dataset_fingerprint=e.dataset_fingerprint or "",
                sample_rate=float(e.sample_rate or 0.0),
                noise_multiplier=float(e.noise_multiplier or 0.0),
                steps=int(e.steps or 0),
                max_grad_norm=float(e.max_grad_norm or 0.0),
                epsilon=float(e.epsilon_after or 0.0),
                delta=float(e.delta or 0.0),
                accountant=e.accountant or "",
                ledger_seq=e.seq,
                ledger_hash=e.hash,
                committed=e.hash in committed,
            )
    return None
