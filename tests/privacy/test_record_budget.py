"""fedguard.privacy.record_budget: per-record spend from the ledger, real files throughout."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from fedguard.files import INDEX_FILE, LEDGER_FILE
from fedguard.privacy import Accountant, GaussianEvent
from fedguard.privacy.ledger import Ledger
from fedguard.privacy.node_secret import LABEL_RECORD, keyed_digest
from fedguard.privacy.record_budget import (
    RecordBudgetError,
    RecordIndex,
    RecordSet,
    group_epsilon,
    index_digest,
    load_index,
    record_set,
    record_spend,
    updated_index,
    write_index,
)

SECRET = bytes(range(32))
DELTA = 1e-5
EVENT = GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=50)


def keys(*ids: int) -> np.ndarray:
    """Record keys of records ``ids`` (sha256 of each id: distinct records)."""
    return np.stack(
        [np.frombuffer(hashlib.sha256(str(i).encode()).digest(), np.uint8) for i in ids]
    )


def charge(state: Path, records: RecordSet, event: GaussianEvent = EVENT) -> float:
    """One round, as the node runs it: check from the ledger, write it first, then the index."""
    ledger = Ledger(path=state / LEDGER_FILE)
    entries = ledger.entries()
    index, warning = load_index(
        path=state / INDEX_FILE, entries=entries, key_check=records.key_check
    )
    spend = record_spend(index=index, warning=warning, records=records, entries=entries)
    after = spend.epsilon(method="rdp", delta=DELTA, extra=(event,))
    data = updated_index(spend=spend, records=records, seq=len(entries)).to_bytes()
    ledger.begin(
        run="r",
        server_round=1,
        dataset_fingerprint=records.fingerprint,
        sample_rate=event.sample_rate,
        noise_multiplier=event.noise_multiplier,
        steps=event.steps,
        max_grad_norm=1.0,
        epsilon_after=after,
        delta=DELTA,
        accountant="rdp",
        index_digest=index_digest(data),
        max_multiplicity=records.max_multiplicity,
    )
    write_index(state / INDEX_FILE, data)
    return after


def spent(state: Path, records: RecordSet) -> tuple[float, str | None]:
    entries = Ledger(path=state / LEDGER_FILE).entries()
    index, warning = load_index(
        path=state / INDEX_FILE, entries=entries, key_check=records.key_check
    )
    spend = record_spend(index=index, warning=warning, records=records, entries=entries)
    return spend.epsilon(method="rdp", delta=DELTA), warning


def rounds(n: int) -> float:
    acc = Accountant(method="rdp")
    for _ in range(n):
        acc.compose(EVENT)
    return acc.get_privacy_spent(delta=DELTA).epsilon


def test_digests_are_keyed_truncated_hmacs_and_the_fingerprint_ignores_order():
    k = keys(1, 2, 3)
    rs = record_set(secret=SECRET, keys=k)
    expected = sorted(keyed_digest(SECRET, LABEL_RECORD, row.tobytes())[:16] for row in k)
    assert [bytes(d) for d in rs.digests] == expected
    assert record_set(secret=SECRET, keys=k[::-1]).fingerprint == rs.fingerprint
    assert record_set(secret=bytes(32), keys=k).fingerprint != rs.fingerprint
    assert record_set(secret=SECRET, keys=k[:2]).fingerprint != rs.fingerprint
    assert rs.fingerprint.startswith("hmac:") and rs.max_multiplicity == 1
    dup = record_set(secret=SECRET, keys=keys(1, 2, 2, 3))
    assert dup.rows == 4 and dup.max_multiplicity == 2 and sorted(dup.counts) == [1, 1, 2]


def test_digests_ending_in_zero_bytes_stay_distinct():
    # "S16" arrays: a digest that ends in NUL bytes must not equal a shorter one.
    raw = np.array([b"a" * 15 + b"\x00", b"a" * 15 + b"\x01"], dtype="S16")
    index = RecordIndex(
        digests=np.sort(raw),
        history=np.zeros(2, np.int64),
        histories=((),),
        default=0,
        ledger_seq=-1,
    )
    back = RecordIndex.from_bytes(index.to_bytes(), source="t")
    assert len(np.unique(back.digests)) == 2


def test_a_record_keeps_its_spend_across_data_sets(tmp_path: Path):
    a = record_set(secret=SECRET, keys=keys(1, 2, 3))
    b = record_set(secret=SECRET, keys=keys(3, 4))  # record 3 again, record 4 new
    c = record_set(secret=SECRET, keys=keys(1, 5))  # record 1 comes back after b
    charge(tmp_path, a)
    charge(tmp_path, a)
    assert spent(tmp_path, b) == (pytest.approx(rounds(2)), None)  # record 3: two rounds
    charge(tmp_path, b)
    assert spent(tmp_path, b)[0] == pytest.approx(rounds(3))
    assert spent(tmp_path, c)[0] == pytest.approx(rounds(2))  # record 1 missed b's round
    assert spent(tmp_path, record_set(secret=SECRET, keys=keys(9)))[0] == 0.0  # never seen


@pytest.mark.parametrize("damage", ["deleted", "edited", "stale", "garbage"])
def test_damaging_the_index_never_lowers_a_records_spend(tmp_path: Path, damage: str):
    a = record_set(secret=SECRET, keys=keys(1, 2))
    other = record_set(secret=SECRET, keys=keys(7))
    charge(tmp_path, a)
    old = (tmp_path / INDEX_FILE).read_bytes()
    charge(tmp_path, a)
    charge(tmp_path, other)  # record 7: one round only; a's records: two
    path = tmp_path / INDEX_FILE
    if damage == "deleted":
        path.unlink()
    elif damage == "edited":  # a valid index that says a's records took part in nothing
        index = RecordIndex.from_bytes(path.read_bytes(), source="t")
        path.write_bytes(
            RecordIndex(
                digests=index.digests,
                history=np.zeros_like(index.history),
                histories=((),),
                default=0,
                ledger_seq=index.ledger_seq,
                key_check=index.key_check,
            ).to_bytes()
        )
    elif damage == "stale":  # an old copy put back
        path.write_bytes(old)
    else:
        path.write_bytes(b"PK\x03\x04 not an index")
    eps, warning = spent(tmp_path, a)
    assert eps >= rounds(2) - 1e-9
    if damage != "stale":  # worst case: every record took part in all three rounds
        assert eps == pytest.approx(rounds(3)) and warning and str(path) in warning
    else:  # the old copy is genuine: only the rounds after it count for everyone
        assert eps == pytest.approx(rounds(3)) and warning is None
    # And the next round folds the worst case in: nothing is freed later either.
    charge(tmp_path, a)
    assert spent(tmp_path, other)[0] >= rounds(2) - 1e-9


def test_a_replaced_node_secret_frees_nothing(tmp_path: Path):
    charge(tmp_path, record_set(secret=SECRET, keys=keys(1, 2)))
    charge(tmp_path, record_set(secret=SECRET, keys=keys(1, 2)))
    # node-secret.key deleted: the same records now have digests the index cannot match.
    eps, warning = spent(tmp_path, record_set(secret=bytes(32), keys=keys(1, 2)))
    assert eps == pytest.approx(rounds(2))
    assert warning and "made with another node secret" in warning


def test_an_index_covering_more_than_the_ledger_means_a_truncated_ledger(tmp_path: Path):
    a = record_set(secret=SECRET, keys=keys(1))
    charge(tmp_path, a)
    charge(tmp_path, a)
    ledger = tmp_path / LEDGER_FILE
    ledger.write_text(ledger.read_text().splitlines()[0] + "\n")
    with pytest.raises(RecordBudgetError, match=r"covers ledger entry 1 .* only 1 entries"):
        spent(tmp_path, a)


def test_a_duplicated_record_counts_as_a_group(tmp_path: Path):
    once = record_set(secret=SECRET, keys=keys(1, 2))
    twice = record_set(secret=SECRET, keys=keys(1, 1, 2))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    eps1 = charge(tmp_path / "a", once)
    eps2 = charge(tmp_path / "b", twice)
    acc = Accountant(method="rdp")
    acc.compose(EVENT)
    assert eps1 == pytest.approx(acc.get_privacy_spent(delta=DELTA).epsilon)
    assert eps2 == pytest.approx(group_epsilon(accountant=acc, group=2, delta=DELTA))
    assert eps2 > 2 * eps1  # k eps at a smaller per-record delta
    # The group size stays with the record: alone again, it still counts as a pair.
    single = record_set(secret=SECRET, keys=keys(1))
    assert spent(tmp_path / "b", single)[0] == pytest.approx(eps2)


def test_group_epsilon_meets_the_group_privacy_bound():
    acc = Accountant(method="rdp")  # about epsilon 0.5 per record: groups are meaningful
    acc.compose(GaussianEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100))
    assert group_epsilon(accountant=acc, group=1, delta=DELTA) == pytest.approx(
        acc.get_privacy_spent(delta=DELTA).epsilon
    )
    for k in (2, 3, 5):
        eps = group_epsilon(accountant=acc, group=k, delta=DELTA)
        # Some per-record d gives eps = k eps(d) and k e^((k-1) eps(d)) d <= delta: find it
        # by bisection (independently of the fixed point) and compare.
        lo, hi = 1e-30, DELTA / k
        assert k * math.exp((k - 1) * acc.get_privacy_spent(delta=lo).epsilon) * lo <= DELTA
        for _ in range(200):
            mid = math.sqrt(lo * hi)
            e = acc.get_privacy_spent(delta=mid).epsilon
            if k * math.exp((k - 1) * e) * mid <= DELTA:
                lo = mid
            else:
                hi = mid
        best = k * acc.get_privacy_spent(delta=lo).epsilon
        assert best <= eps <= best * 1.01


def test_group_privacy_that_cannot_converge_is_refused():
    acc = Accountant(method="rdp")
    acc.compose(GaussianEvent(noise_multiplier=0.5, sample_rate=1.0, steps=200))
    with pytest.raises(RecordBudgetError, match=r"appearing 50 times"):
        group_epsilon(accountant=acc, group=50, delta=DELTA)


def test_the_index_file_is_private_and_not_pickled(tmp_path: Path):
    a = record_set(secret=SECRET, keys=keys(1, 2))
    charge(tmp_path, a)
    path = tmp_path / INDEX_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)
