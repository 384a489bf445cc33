"""Privacy receipts: ledger entry -> receipt -> protobuf bytes -> the server's check."""

import contextlib
import dataclasses
import math
from pathlib import Path

import pytest
from flwr.app import RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedguard.privacy.ledger import Ledger
from fedguard.privacy.receipts import PrivacyReceipt, receipt_for, without_count
from fedguard.proto.v1 import receipt_pb2 as rpb
from fedguard.transport import WireError, decode_receipt, encode_receipt
from fedguard.transport.messages import attach_receipt
from fedguard.transport.receipts import read_receipt


def ledger_with_round(path: Path, *, commit: bool = True) -> Ledger:
    ledger = Ledger(path=path)
    entry = ledger.begin(
        run="cardio/abc",
        server_round=4,
        dataset_fingerprint="sha256:" + "ab" * 32,
        sample_rate=0.05,
        noise_multiplier=1.1,
        steps=20,
        max_grad_norm=0.5,
        epsilon_after=1.25,
        delta=1e-5,
        accountant="rdp",
    )
    if commit:
        ledger.commit(entry)
    return ledger


def test_receipt_names_the_ledger_entry_and_round_trips(tmp_path: Path):
    ledger = ledger_with_round(tmp_path / "ledger.jsonl")
    receipt = receipt_for(ledger, run="cardio/abc", server_round=4)
    assert receipt is not None and receipt.committed
    pending = next(e for e in ledger.entries() if e.kind == "pending")
    assert (receipt.ledger_seq, receipt.ledger_hash) == (pending.seq, pending.hash)
    assert receipt.epsilon == 1.25 and receipt.noise_multiplier == 1.1
    assert decode_receipt(encode_receipt(receipt)) == receipt
    assert receipt_for(ledger, run="cardio/abc", server_round=5) is None
    assert receipt_for(ledger, run="other", server_round=4) is None


def test_an_uncommitted_round_says_so(tmp_path: Path):
    ledger = ledger_with_round(tmp_path / "ledger.jsonl", commit=False)
    receipt = receipt_for(ledger, run="cardio/abc", server_round=4)
    assert receipt is not None and not receipt.committed


def test_the_server_refuses_a_receipt_for_another_run_or_round(tmp_path: Path):
    receipt = receipt_for(ledger_with_round(tmp_path / "l.jsonl"), run="cardio/abc", server_round=4)
    assert receipt is not None
    content = attach_receipt(RecordDict(), encode_receipt(receipt))
    assert read_receipt(content, run="cardio/abc", server_round=4) == receipt
    with pytest.raises(ValueError, match="stale or replayed"):
        read_receipt(content, run="cardio/abc", server_round=5)
    with pytest.raises(ValueError, match="not run 'cardio/xyz'"):
        read_receipt(content, run="cardio/xyz", server_round=4)
    assert read_receipt(RecordDict(), run="cardio/abc", server_round=4) is None


BASE = PrivacyReceipt(
    run="r",
    server_round=1,
    dataset_fingerprint="sha256:00",
    sample_rate=0.1,
    noise_multiplier=1.0,
    steps=3,
    max_grad_norm=1.0,
    epsilon=0.5,
    delta=1e-5,
    accountant="rdp",
    ledger_seq=0,
    ledger_hash="0" * 64,
    committed=True,
)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"epsilon": math.nan}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"max_grad_norm": math.inf}, "max_grad_norm"),
        ({"accountant": "gdp"}, "accountant"),
        ({"ledger_hash": "abc"}, "ledger hash"),
    ],
)
def test_bad_figures_are_refused_naming_the_field(change, fragment):
    data = encode_receipt(dataclasses.replace(BASE, **change))
    with pytest.raises(WireError, match=fragment):
        decode_receipt(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_wire_error(data: bytes):
    with contextlib.suppress(WireError):
        decode_receipt(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255))
def test_mutated_receipts_raise_only_wire_error_or_decode(position: int, value: int):
    raw = bytearray(encode_receipt(BASE))
    raw[position % len(raw)] = value
    with contextlib.suppress(WireError):
        decode_receipt(bytes(raw))


def test_a_receipt_without_count_carries_nothing_that_gives_the_record_count_away():
    withheld = without_count(BASE)
    data = encode_receipt(withheld)
    assert decode_receipt(data) == withheld
    assert (withheld.sample_rate, withheld.noise_multiplier, withheld.steps) == (None,) * 3
    # Not on the wire at all (not even as a default): the fields are absent.
    m = rpb.PrivacyReceipt.FromString(data)
    for name in ("sample_rate", "noise_multiplier", "steps"):
        assert not m.HasField(name)
    # What stays: run, round, epsilon, delta, accountant, ledger seq and hash, committed.
    full = decode_receipt(encode_receipt(BASE))
    assert (full.sample_rate, full.noise_multiplier, full.steps) == (0.1, 1.0, 3)
    kept = ("run", "server_round", "epsilon", "delta", "accountant", "ledger_seq", "committed")
    assert all(getattr(withheld, k) == getattr(BASE, k) for k in kept)


def test_a_node_that_keeps_its_count_reports_epsilon_rounded_up():
    """Audit: the exact epsilon gave n to within one batch (batch 64: n = 400 -> 2.024009,
    600 -> 2.078146), or exactly with a batch of 1. Rounded up to 0.1 it stays an upper
    bound and tells little more than n's order of magnitude."""
    from fedguard.privacy.receipts import coarse_epsilon

    assert coarse_epsilon(2.024009) == coarse_epsilon(2.078146) == 2.1
    assert coarse_epsilon(2.0) == 2.0 and coarse_epsilon(0.0) == 0.0
    assert coarse_epsilon(2.000001) == 2.1
    for eps in (0.01, 0.5, 1.2345, 2.999, 7.95):
        assert eps <= coarse_epsilon(eps) <= eps + 0.1
