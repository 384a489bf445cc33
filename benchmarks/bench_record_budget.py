"""Time and disk of the per-record budget index for N records (default 1,000,000).

    .venv/bin/python benchmarks/bench_record_budget.py [--records 1000000]

Runs the node's own steps on a real ledger and index in a temporary state folder: keying
the records (HMAC per record), the first round (no index yet), a second round on the
same records, and a round on a data set with 10% new records appended. Prints one line
per step: wall seconds, index size.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from fedguard.files import INDEX_FILE, LEDGER_FILE
from fedguard.privacy import GaussianEvent
from fedguard.privacy.ledger import Ledger
from fedguard.privacy.record_budget import (
    RecordSet,
    index_digest,
    load_index,
    record_set,
    record_spend,
    updated_index,
    write_index,
)

EVENT = GaussianEvent(noise_multiplier=1.0, sample_rate=0.01, steps=100)


def one_round(state: Path, records: RecordSet) -> dict[str, float]:
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    ledger = Ledger(path=state / LEDGER_FILE)
    entries = ledger.entries()
    index, warning = load_index(
        path=state / INDEX_FILE, entries=entries, key_check=records.key_check
    )
    t["read index"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    spend = record_spend(index=index, warning=warning, records=records, entries=entries)
    after = spend.epsilon(method="rdp", delta=1e-5, extra=(EVENT,))
    t["lookup + epsilon"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = updated_index(spend=spend, records=records, seq=len(entries)).to_bytes()
    t["update"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ledger.begin(
        run="bench",
        server_round=len(entries) + 1,
        dataset_fingerprint=records.fingerprint,
        sample_rate=EVENT.sample_rate,
        noise_multiplier=EVENT.noise_multiplier,
        steps=EVENT.steps,
        max_grad_norm=1.0,
        epsilon_after=after,
        delta=1e-5,
        accountant="rdp",
        index_digest=index_digest(data),
        max_multiplicity=records.max_multiplicity,
    )
    write_index(state / INDEX_FILE, data)
    t["ledger + index write"] = time.perf_counter() - t0
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    n = parser.parse_args().records
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    extra = rng.integers(0, 256, size=(n // 10, 32), dtype=np.uint8)
    secret = os.urandom(32)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        t0 = time.perf_counter()
        records = record_set(secret=secret, keys=keys)
        print(f"key {n:,} records (HMAC-SHA256 each): {time.perf_counter() - t0:.2f} s")
        rows = rng.standard_normal((n, 30), dtype=np.float32)
        t0 = time.perf_counter()
        for i in range(n):  # the node's fallback keys: sha256 of each row (30 floats)
            hashlib.sha256(rows[i].tobytes()).digest()
        print(
            f"sha256 of {n:,} rows of 30 float32 (fallback keys): {time.perf_counter() - t0:.2f} s"
        )
        grown = record_set(secret=secret, keys=np.concatenate([keys, extra]))
        for label, rs in (
            ("first round (no index)", records),
            ("second round, same records", records),
            ("third round, 10% new records appended", grown),
        ):
            t = one_round(state, rs)
            size = (state / INDEX_FILE).stat().st_size
            steps = ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
            print(f"{label}: {sum(t.values()):.2f} s ({steps}); index {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
