"""Kill the server (SIGKILL) mid-run and start it again with the same config: it resumes
from its checkpoint, no round is aggregated twice, and no node spends epsilon twice."""

import json
import signal
import time
from pathlib import Path

import pytest
from harness.federation_files import write_federation

from fedguard.client.node import node_runtime
from fedguard.fl.data import load_federated_data
from fedguard.privacy import AccountantStore, steps_per_epoch

pytestmark = pytest.mark.deploy

ROUNDS = 3  # killed during round 2: rounds before the kill, one cut short and one after


def test_server_killed_mid_run_resumes_without_double_counting(tmp_path: Path, processes):
    layout = write_federation(out=tmp_path / "fed", nodes=3, rounds=ROUNDS)
    names = [t.parent.name for t in layout.nodes]
    server, ready = processes.server(layout, expect=[f"enrolled {n}" for n in names])
    assert ready.wait(timeout=120)
    for toml in layout.nodes:
        processes.client(toml)
    metrics = layout.results / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 1):
        assert time.monotonic() < deadline and server.poll() is None, "round 1 never finished"
        time.sleep(0.2)
    server.send_signal(signal.SIGKILL)  # the launcher only; its SuperLink must follow it
    server.wait(timeout=10)
    # Restarting binds the same ports: the SuperLink left by the killed launcher (and
    # the Flower processes it forked, which inherit its sockets) must be gone or stopped.
    again, _ = processes.server(layout, expect=[])
    again.wait(timeout=400)
    assert again.returncode == 0

    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))  # each exactly once
    assert all(r["clients"] == 3 and r["refused"] == 0 for r in rows)
    for toml in layout.nodes:
        spent = AccountantStore(path=node_runtime(str(toml)).accountant_store().path).load(
            method="rdp"
        )
        # Exactly ROUNDS rounds' worth of DP steps: a replayed round cost nothing.
        share = len(
            load_federated_data(
                dataset="digits", target=None, seed=0, clients=3, scheme="iid", alpha=1.0
            ).partitions[0]
        )
        per_round = steps_per_epoch(num_examples=share, batch_size=64)
        assert sum(e.steps for e in spent.events) == ROUNDS * per_round
        eps = spent.get_privacy_spent(delta=1e-5).epsilon
        assert 0.97 * 3.0 <= eps <= 3.0
