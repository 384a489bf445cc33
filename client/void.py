"""Giving back the epsilon of an update that never left the node (#14.4).

Privacy is spent when something is released. The ledger's write-ahead stays: a round is
pending (spent) before training, so a crash counts. A round trained for a secure sum
keeps its update on the node until the node sends its masked input; if the round aborts
before that, nothing derived from the update left, and the round is marked void in the
ledger (its epsilon no longer counts for any record).

When the node learns that the round is over: at the next train request for another
request key (a later round, another run, a new session), under ``budget.lock``. The held
update is then given back only if the journal (:mod:`fedguard.client.released`) shows it
was never masked; the masked-input stage takes the same lock, and its journal line is
fsynced before the masked input is sent, so "not in the journal" means "never sent". What
counts as released, and is never voided: a masked input whose journal line was written,
a plain reply (the node never marks a plain round held; a held update asked again without
a secure sum is un-held before its stored reply is returned).

Order (every step crash-safe): first every way out is closed (the digest is added to the
journal's ``void`` list, which no stage will mask; the session is abandoned; the stored
noised update deleted), then the ledger's void line is written, then the stored reply and
the held record go. A crash before the void line leaves the round spent (and the next
request finishes the work); a crash after it leaves a reply no request will use. It
never imports Flower.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedguard.client.released import HeldUpdate, Journal, read_journal, write_journal
from fedguard.client.stored_reply import read_stored_reply
from fedguard.errors import DataError
from fedguard.files import RELEASED_FILE, SESSION_FILE, UPDATE_FILE
from fedguard.privacy.ledger import Ledger, LedgerEntry

__all__ = ["hold", "release", "settle"]

_log = logging.getLogger(__name__)


def settle(
    *, state_dir: Path, ledger: Ledger, keep_key: str, reply_file: str
) -> LedgerEntry | None:
    """Give back the held update unless it answers ``keep_key`` (the request being served)
    or it may have left the node; the void entry written, if any. Call under budget.lock."""
    path = state_dir / RELEASED_FILE
    try:
        journal = read_journal(path)
    except DataError as exc:  # cannot tell what was sent: everything stays spent
        _log.warning("%s", exc)
        return None
    held = journal.held
    if held is None:
        return None
    entries = ledger.entries()
    pending = _pending(entries, held)
    voided = pending is not None and pending.hash in ledger.voided()
    if held.key == keep_key and not voided:
        return None  # the same request again: its stored reply answers it
    if (
        pending is None
        or pending.hash not in ledger.committed()
        or journal.masked_record(held.update) is not None
        or (journal.session is not None and journal.session.update == held.update
            and journal.session.masked)
    ):  # fmt: skip
        _forget(path, journal)  # it left (or the ledger does not hold it): spent
        return None
    if held.update not in journal.void:
        journal.void.append(held.update)
    session = journal.session
    if session is not None and session.update == held.update:
        session.abandoned = True
    write_journal(path, journal)  # from here no stage masks this update
    if session is not None and session.update == held.update:
        (state_dir / SESSION_FILE).unlink(missing_ok=True)
        (state_dir / UPDATE_FILE).unlink(missing_ok=True)
    entry = None if voided else ledger.void(pending)
    reply = state_dir / reply_file
    try:
        if read_stored_reply(reply, key=held.key) is not None:
            reply.unlink()
    except DataError:
        reply.unlink(missing_ok=True)
    _forget(path, journal)
    if entry is not None:
        _log.info(
            "round %d of run %r never left this node (secure round aborted before its masked "
            "input): ledger entry %d is void, its epsilon given back",
            held.server_round,
            held.run,
            held.pending_seq,
        )
    return entry


def hold(*, state_dir: Path, held: HeldUpdate) -> None:
    """Record ``held`` as kept for a secure sum only (after its ledger commit)."""
    path = state_dir / RELEASED_FILE
    journal = read_journal(path)
    journal.held = held
    write_journal(path, journal)


def release(*, state_dir: Path, key: str) -> None:
    """The held update of request ``key`` is about to leave alone (a plain reply): it can
    never be given back. Written before the reply is returned."""
    path = state_dir / RELEASED_FILE
    journal = read_journal(path)
    if journal.held is not None and journal.held.key == key:
        _forget(path, journal)


def _pending(entries: list[LedgerEntry], held: HeldUpdate) -> LedgerEntry | None:
    if not 0 <= held.pending_seq < len(entries):
        return None
    e = entries[held.pending_seq]
    return e if e.kind == "pending" and e.hash == held.pending else None


def _forget(path: Path, journal: Journal) -> None:
    journal.held = None
    write_journal(path, journal)
