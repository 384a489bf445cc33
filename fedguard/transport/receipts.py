"""The reading of the privacy receipts nodes attach to their train replies (by the server)."""

from __future__ import annotations

from flwr.app import RecordDict

from fedguard.privacy.receipts import PrivacyReceipt
from fedguard.transport import decode_receipt
from fedguard.transport.messages import receipt_payload

__all__ = ["read_receipt"]


def read_receipt(
    content: RecordDict, *, run: str, server_round: int, required: bool = False
) -> PrivacyReceipt | None:
    """The reply's receipt, checked to be for this run and round (``ValueError`` if not).

    Without a receipt: ``None``, or with ``required`` a ``ValueError``. A deployed node
    always attaches one to a train reply (its ledger entry for the round), so the deployed
    server requires it: a reply without one could be a stale or replayed one.
    """
    payload = receipt_payload(content)
    if payload is None:
        if required:
            raise ValueError(
                f"expected a privacy receipt for run {run!r} round {server_round}, got none "
                "(a reply without one cannot be told from a stale or replayed one)"
            )
        return None
    receipt = decode_receipt(payload)
    if receipt.run != run or receipt.server_round != server_round:
        raise ValueError(
            f"privacy receipt is for run {receipt.run!r} round {receipt.server_round}, "
            f"not run {run!r} round {server_round} (stale or replayed)"
        )
    return receipt
