"""The ledger's "void" line (#14.4): a committed round whose update never left the node
gives its epsilon back; nothing else can be voided, and a void line is as tamper-evident
as any other."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedguard.privacy.accountants import GaussianEvent
from fedguard.privacy.ledger import Ledger, LedgerError, ServerReceipt
from fedguard.privacy.record_budget import RecordIndex, record_set, record_spend

FP = "hmac:" + "ab" * 32
RNG = np.random.default_rng(7)


def _round(ledger: Ledger, rnd: int, eps: float):
    return ledger.begin(
        run="fed-a",
        server_round=rnd,
        dataset_fingerprint=FP,
        sample_rate=0.05,
        noise_multiplier=1.1,
        steps=40,
        max_grad_norm=1.0,
        epsilon_after=eps,
        delta=1e-5,
        accountant="rdp",
    )


def _rehash(obj: dict) -> str:
    obj = {k: v for k, v in obj.items() if k != "hash"}
    obj["hash"] = hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n"


def test_a_committed_round_is_voided_once_and_stops_counting(tmp_path: Path):
    ledger = Ledger(path=tmp_path / "ledger.jsonl")
    first = _round(ledger, 1, 0.5)
    ledger.commit(first)
    assert ledger.spent(dataset_fingerprint=FP) == 0.5
    void = ledger.void(first)
    assert (void.kind, void.pending, void.pending_seq) == ("void", first.hash, first.seq)
    assert ledger.voided() == {first.hash} and ledger.verify().ok
    assert ledger.spent(dataset_fingerprint=FP) == 0.0
    with pytest.raises(LedgerError, match="entry 0 is already void"):
        ledger.void(first)
    # The write-ahead stays: a round interrupted before its commit is spent for good.
    crashed = _round(ledger, 2, 0.5)
    with pytest.raises(LedgerError, match="entry 3 is not committed"):
        ledger.void(crashed)
    with pytest.raises(LedgerError, match="expected a pending LedgerEntry"):
        ledger.void(void)
    assert [e.kind for e in ledger.entries()] == ["pending", "commit", "void", "pending"]
    assert ledger.spent(dataset_fingerprint=FP) == 0.5


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ("before-commit", "entry 1: voids entry 0, which is not committed before it"),
        ("twice", "entry 4: voids entry 0, already voided by entry 2"),
        ("nothing", "entry 2: void references no pending entry"),
    ],
)
def test_a_forged_void_line_is_named_even_with_recomputed_hashes(tmp_path, edit, problem):
    ledger = Ledger(path=tmp_path / "ledger.jsonl")
    first = _round(ledger, 1, 0.5)
    ledger.commit(first)
    ledger.void(first)
    lines = ledger.path.read_text().splitlines(keepends=True)
    objs = [json.loads(line) for line in lines]
    if edit == "before-commit":  # swap kinds of the commit and the void, rechained
        objs[1]["kind"], objs[2]["kind"] = "void", "commit"
    elif edit == "twice":
        objs += [dict(objs[1], seq=3), dict(objs[2], seq=4)]
    else:
        objs[2]["pending_seq"] = 1
    out = []
    for i, obj in enumerate(objs):
        if i:
            obj["prev"] = hashlib.sha256(out[-1].rstrip("\n").encode()).hexdigest()
        out.append(_rehash(obj))
    ledger.path.write_text("".join(out))
    assert problem in ledger.verify().problems
    with pytest.raises(LedgerError):
        ledger.entries()


def test_a_void_event_counts_for_no_record_even_without_an_index(tmp_path: Path):
    """The worst case (no index) counts every ledger event for every record, but never a
    void one; a pending (interrupted) one still counts."""
    ledger = Ledger(path=tmp_path / "ledger.jsonl")
    rounds = [_round(ledger, r, 0.5) for r in (1,)]
    ledger.commit(rounds[0])
    second = _round(ledger, 2, 1.0)
    ledger.commit(second)
    records = record_set(secret=b"s" * 32, keys=RNG.integers(0, 256, (50, 32), dtype=np.uint8))

    def eps() -> float:
        spend = record_spend(
            index=RecordIndex.empty(), warning=None, records=records, entries=ledger.entries()
        )
        return spend.epsilon(method="rdp", delta=1e-5)

    both = eps()
    ledger.void(second)
    one = eps()
    event = GaussianEvent(noise_multiplier=1.1, sample_rate=0.05, steps=40)
    only = record_spend(index=RecordIndex.empty(), warning=None, records=records, entries=[])
    assert one == pytest.approx(only.epsilon(method="rdp", delta=1e-5, extra=(event,)))
    assert 0 < one < both


def test_cli_show_and_verify_handle_void_lines(tmp_path: Path):
    ledger = Ledger(path=tmp_path / "ledger.jsonl")
    first = _round(ledger, 1, 0.5)
    ledger.commit(first)
    ledger.void(first)
    ledger.commit(_round(ledger, 2, 0.7))
    cmd = [sys.executable, "-m", "fedguard", "ledger"]
    procs = {
        name: subprocess.Popen(
            [*cmd, name, "--state", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("verify", "show")
    }
    out = {name: p.communicate(timeout=120) for name, p in procs.items()}
    assert procs["verify"].returncode == 0, out["verify"]
    assert out["verify"][0] == "ledger OK: 5 entries, hash chain intact\n"
    show = out["show"][0]
    assert procs["show"].returncode == 0 and show.count("void (never released") == 1
    assert f"dataset {FP}: epsilon spent 0.7 (delta 1e-05)" in show


def test_verify_against_the_servers_receipts_accepts_a_void_round(tmp_path: Path):
    """The server got round 1's receipt (sent with the keys, before the abort); the node
    later voided it: the ledger still matches every receipt."""
    ledger = Ledger(path=tmp_path / "ledger.jsonl")
    first = _round(ledger, 1, 0.5)
    ledger.commit(first)
    ledger.void(first)
    receipt = ServerReceipt(
        where="metrics.jsonl line 1",
        run="fed-a",
        server_round=1,
        ledger_seq=first.seq,
        ledger_hash=first.hash,
    )
    assert ledger.verify_against([receipt]).ok
    forged = dataclasses.replace(receipt, ledger_seq=2, ledger_hash=ledger.entries()[2].hash)
    assert not ledger.verify_against([forged]).ok  # a void line is no round's entry
