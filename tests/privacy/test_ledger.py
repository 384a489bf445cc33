"""Ledger: write-ahead, tamper-evident, crash-safe; and ``fedguard ledger`` show/verify."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys

import pytest

from fedguard.errors import ConfigError, FedguardError
from fedguard.privacy.ledger import GENESIS, Ledger, LedgerEntry, LedgerError

FP = "hmac:" + "ab" * 32
OTHER = "hmac:" + "cd" * 32


def _round(ledger: Ledger, rnd: int, eps: float, *, fp: str = FP) -> LedgerEntry:
    return ledger.begin(
        run="fed-a",
        server_round=rnd,
        dataset_fingerprint=fp,
        sample_rate=0.05,
        noise_multiplier=1.1,
        steps=40,
        max_grad_norm=1.0,
        epsilon_after=eps,
        delta=1e-5,
        accountant="rdp",
    )


def _filled(tmp_path) -> Ledger:
    """seq 0 pending r1, 1 commit, 2 pending r2, 3 commit, 4 pending r3 (crashed)."""
    ledger = Ledger(path=tmp_path / "state" / "ledger.jsonl")
    ledger.commit(_round(ledger, 1, 0.5))
    ledger.commit(_round(ledger, 2, 0.8))
    _round(ledger, 3, 1.1)
    return ledger


def _lines(ledger: Ledger) -> list[str]:
    return ledger.path.read_text().splitlines(keepends=True)


def _write(ledger: Ledger, lines: list[str]) -> None:
    ledger.path.write_text("".join(lines))


def test_round_trip_and_chain(tmp_path):
    ledger = _filled(tmp_path)
    entries = ledger.entries()
    assert [e.seq for e in entries] == [0, 1, 2, 3, 4]
    assert [e.kind for e in entries] == ["pending", "commit", "pending", "commit", "pending"]
    assert entries[0].prev == GENESIS
    assert entries[1].pending == entries[0].hash and entries[1].pending_seq == 0
    assert entries[2].epsilon_after == 0.8 and entries[2].server_round == 2
    assert entries[0].time.endswith("+00:00")
    for line in _lines(ledger):  # canonical JSON, one object a line
        obj = json.loads(line)
        assert line == json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n"
    assert ledger.committed() == {entries[0].hash, entries[2].hash}
    assert ledger.verify().ok and ledger.verify().entries == 5


def test_pending_counts_as_spent(tmp_path):
    ledger = _filled(tmp_path)
    assert ledger.spent(dataset_fingerprint=FP) == 1.1  # round 3 never committed
    assert ledger.spent(dataset_fingerprint=OTHER) == 0.0
    _round(ledger, 1, 0.3, fp=OTHER)
    assert ledger.spent(dataset_fingerprint=OTHER) == 0.3
    assert ledger.spent(dataset_fingerprint=FP) == 1.1


def test_missing_file_and_mode(tmp_path):
    ledger = Ledger(path=tmp_path / "nope" / "ledger.jsonl")
    assert ledger.entries() == [] and ledger.spent(dataset_fingerprint=FP) == 0.0
    with pytest.raises(LedgerError, match="nope"):
        ledger.verify()
    _round(ledger, 1, 0.5)
    assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ledger.path.parent.stat().st_mode) == 0o700


def test_bad_arguments_and_commits_are_refused(tmp_path):
    ledger = _filled(tmp_path)
    before = ledger.path.read_bytes()
    with pytest.raises(ConfigError, match="delta"):
        ledger.begin(
            run="r", server_round=1, dataset_fingerprint=FP, sample_rate=0.1,
            noise_multiplier=1.0, steps=1, max_grad_norm=1.0, epsilon_after=1.0,
            delta=1.0, accountant="rdp",
        )  # fmt: skip
    first = ledger.entries()[0]
    with pytest.raises(LedgerError, match="already committed"):
        ledger.commit(first)
    forged = LedgerEntry(**{**first.__dict__, "hash": "f" * 64})
    with pytest.raises(LedgerError, match="not a pending entry"):
        ledger.commit(forged)
    assert ledger.path.read_bytes() == before


def _problems(ledger: Ledger) -> list[str]:
    report = ledger.verify()
    assert not report.ok
    return report.problems


def test_edited_epsilon_is_named(tmp_path):
    ledger = _filled(tmp_path)
    lines = _lines(ledger)
    lines[2] = lines[2].replace('"epsilon_after":0.8', '"epsilon_after":0.1')
    _write(ledger, lines)
    assert _problems(ledger) == ["entry 2: contents changed (hash mismatch)"]


def test_deleted_line_is_named(tmp_path):
    ledger = _filled(tmp_path)
    lines = _lines(ledger)
    del lines[1]
    _write(ledger, lines)
    problems = _problems(ledger)
    assert "entry 2: previous entry missing or changed (entry 1 not found)" in problems


def test_deleted_first_line_is_named(tmp_path):
    ledger = _filled(tmp_path)
    _write(ledger, _lines(ledger)[1:])
    problems = _problems(ledger)
    assert "entry 1: previous entry missing or changed (entry 0 not found)" in problems
    assert "entry 1: commit references no pending entry" in problems


def test_swapped_lines_are_named(tmp_path):
    ledger = _filled(tmp_path)
    lines = _lines(ledger)
    lines[1], lines[2] = lines[2], lines[1]
    _write(ledger, lines)
    assert _problems(ledger) == ["entry 1: out of order (found after entry 2; lines reordered)"]


def test_truncated_last_line_is_named(tmp_path):
    ledger = _filled(tmp_path)
    data = ledger.path.read_bytes()
    ledger.path.write_bytes(data[: len(data) - 40])
    problems = _problems(ledger)
    assert "line 5: not valid JSON" in problems


def test_recomputed_hash_still_breaks_the_chain(tmp_path):
    ledger = _filled(tmp_path)
    lines = _lines(ledger)
    obj = json.loads(lines[2])
    obj["epsilon_after"] = 0.1
    del obj["hash"]
    body = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    obj["hash"] = hashlib.sha256(body.encode()).hexdigest()
    lines[2] = json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n"
    _write(ledger, lines)
    assert _problems(ledger) == [
        "entry 3: previous entry missing or changed (entry 2 does not match)",
        "entry 3: commit references no pending entry",
    ]


def test_tampered_ledger_refuses_appends_byte_for_byte(tmp_path):
    ledger = _filled(tmp_path)
    crashed = ledger.entries()[4]
    lines = _lines(ledger)
    lines[0] = lines[0].replace('"epsilon_after":0.5', '"epsilon_after":0.01')
    _write(ledger, lines)
    before = ledger.path.read_bytes()
    with pytest.raises(LedgerError, match="entry 0: contents changed") as info:
        _round(ledger, 4, 1.4)
    assert isinstance(info.value, FedguardError)
    with pytest.raises(LedgerError):
        ledger.commit(crashed)
    with pytest.raises(LedgerError):
        ledger.spent(dataset_fingerprint=FP)
    assert ledger.path.read_bytes() == before
    assert sorted(p.name for p in ledger.path.parent.iterdir()) == ["ledger.jsonl"]


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedguard", "ledger", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_show_and_verify(tmp_path):
    clean = _filled(tmp_path / "clean")
    bad = _filled(tmp_path / "bad")
    lines = _lines(bad)
    lines[2] = lines[2].replace('"epsilon_after":0.8', '"epsilon_after":0.1')
    _write(bad, lines)
    missing = tmp_path / "missing"
    # One torch import per process; run them side by side to keep the test fast.
    procs = {
        "ok": _cli("verify", "--state", str(clean.path.parent)),
        "bad": _cli("verify", "--state", str(bad.path.parent)),
        "missing": _cli("verify", "--state", str(missing)),
        "show": _cli("show", "--state", str(clean.path.parent)),
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        out[name] = (proc.returncode, stdout, stderr)
    assert out["ok"][:2] == (0, "ledger OK: 5 entries, hash chain intact\n")
    assert out["bad"][:2] == (1, "entry 2: contents changed (hash mismatch)\n")
    rc, stdout, stderr = out["missing"]
    assert rc == 2 and stdout == ""
    assert stderr.count("\n") == 1 and str(missing / "ledger.jsonl") in stderr
    rc, stdout, _ = out["show"]
    assert rc == 0
    assert stdout.count("pending (counted as spent)") == 1 and stdout.count("committed") == 2
    assert f"dataset {FP}: epsilon spent 1.1 (delta 1e-05)" in stdout
    assert clean.head() in stdout


def test_index_anchor_fields_are_checked_and_old_entries_still_verify(tmp_path):
    ledger = Ledger(path=tmp_path / "ledger.jsonl")
    old = _round(ledger, 1, 0.5)  # written without the anchor fields (older nodes)
    assert old.index_digest is None and old.max_multiplicity is None
    with pytest.raises(ConfigError, match="index_digest"):
        ledger.begin(**_args(2), index_digest="not hex", max_multiplicity=1)
    with pytest.raises(ConfigError, match="max_multiplicity"):
        ledger.begin(**_args(2), index_digest="0" * 64, max_multiplicity=0)
    entry = ledger.begin(**_args(2), index_digest="e" * 64, max_multiplicity=3)
    assert (entry.index_digest, entry.max_multiplicity) == ("e" * 64, 3)
    assert ledger.verify().ok
    # A value out of range (hash recomputed) is named as such.
    lines = _lines(ledger)
    obj = json.loads(lines[1])
    obj["max_multiplicity"] = 0
    obj.pop("hash")
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    obj["hash"] = hashlib.sha256(canonical.encode()).hexdigest()
    lines[1] = json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n"
    _write(ledger, lines)
    assert ledger.verify().problems == [
        "entry 1: malformed entry (max_multiplicity or index_digest out of range)"
    ]


def test_an_unknown_kind_is_named_with_the_kinds_allowed(tmp_path):
    ledger = _filled(tmp_path)
    lines = _lines(ledger)
    lines[1] = lines[1].replace('"kind":"commit"', '"kind":"refund"')
    _write(ledger, lines)
    assert (
        "entry 1: kind: expected 'pending' or 'commit' or 'void', got 'refund'"
        in ledger.verify().problems
    )


def _args(rnd: int) -> dict:
    return {
        "run": "fed-a",
        "server_round": rnd,
        "dataset_fingerprint": FP,
        "sample_rate": 0.05,
        "noise_multiplier": 1.1,
        "steps": 40,
        "max_grad_norm": 1.0,
        "epsilon_after": 0.5,
        "delta": 1e-5,
        "accountant": "rdp",
    }
