"""A node killed (SIGKILL) mid-training counts the interrupted round as spent.

A real process runs ``NodeRuntime.train`` for a demo node with a request slow enough to
be killed inside it (CNN, 5 local epochs of batch 8: ~450 DP-SGD steps). Once the round's
pending ledger entry is on disk it gets SIGKILL. Then, in other processes: the ledger
verifies, holds the round as pending and uncommitted, and counts it as spent (the
ledger, not an accountant file, is the record of reference); and the restarted node
asked the same round again trains it again (nothing was sent, so there is no reply to
resend) and reports the epsilon of both attempts, never less.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness.federation_files import write_federation

from fedguard.client.node import node_runtime
from fedguard.files import LAST_REPLY_FILE, LEDGER_FILE
from fedguard.fl.loop import TrainRequest
from fedguard.privacy import Accountant, GaussianEvent
from fedguard.privacy.ledger import Ledger

DELTA = 1e-5  # the test federation's node policy (tests/harness)

# One round of a demo node, as a fresh node process runs it; prints the result as JSON.
NODE_ROUND = """
import dataclasses, json, sys
import torch
from fedguard.client.node import node_runtime
from fedguard.fl.loop import TrainRequest
from fedguard.task import build_model, get_weights

torch.set_num_threads(1)
runtime = node_runtime(sys.argv[1])
model = build_model(
    name="cnn", input_shape=runtime.input_shape, num_classes=runtime.num_classes,
    generator=torch.Generator().manual_seed(0),
)
request = TrainRequest(
    server_round=2, local_epochs=5, batch_size=8, lr=0.1, max_grad_norm=1.0,
    total_rounds=4, federation="demo", model="cnn", run_id="demo/killed",
)
result = runtime.train(model_name="cnn", weights=get_weights(model), request=request)
fields = {k: v for k, v in dataclasses.asdict(result).items() if k != "weights"}
print(json.dumps(fields), flush=True)
"""


def _node_round(toml: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", NODE_ROUND, str(toml)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _pending(ledger: Ledger) -> list:
    if not ledger.path.exists():
        return []
    return [e for e in ledger.entries() if e.kind == "pending"]


def test_a_node_killed_mid_training_counts_the_round_as_spent(tmp_path: Path):
    layout = write_federation(out=tmp_path / "demo", nodes=2, rounds=4)
    toml = layout.nodes[0]
    state = toml.parent / "state"
    ledger = Ledger(path=state / LEDGER_FILE)

    node = _node_round(toml)
    try:
        deadline = time.monotonic() + 120
        while not _pending(ledger):  # the write-ahead entry: training starts right after
            assert node.poll() is None, f"the node process ended early: {node.stderr.read()}"
            assert time.monotonic() < deadline, "no pending ledger entry within 120 s"
            time.sleep(0.01)
        node.send_signal(signal.SIGKILL)
        node.wait(timeout=30)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(timeout=30)
    assert node.returncode == -signal.SIGKILL
    if ledger.committed() or (state / LAST_REPLY_FILE).exists():
        pytest.fail("the round finished before the kill: make NODE_ROUND's training slower")

    # What the node's state says after the crash (this process never trained).
    node_runtime.cache_clear()
    runtime = node_runtime(str(toml))
    report = ledger.verify()
    assert report.ok, report.problems
    (first,) = _pending(ledger)
    assert (first.run, first.server_round) == ("demo/killed", 2)
    assert ledger.committed() == frozenset()  # interrupted: never committed ...
    fingerprint = runtime.fingerprint
    assert first.dataset_fingerprint == fingerprint and first.epsilon_after is not None
    assert ledger.spent(dataset_fingerprint=fingerprint) == first.epsilon_after > 0  # ... spent
    assert first.noise_multiplier and first.sample_rate and first.steps
    event = GaussianEvent(first.noise_multiplier, first.sample_rate, first.steps)
    alone = Accountant(method="rdp")
    alone.compose(event)  # what the pending entry counts: the round, before any training
    assert alone.get_privacy_spent(delta=DELTA).epsilon == pytest.approx(first.epsilon_after)
    asked = TrainRequest(server_round=2, local_epochs=5, batch_size=8, lr=0.1, run_id=first.run)
    receipt = runtime.receipt(asked)  # what a server asking again would be told
    assert receipt is not None and receipt.committed is False

    # The restarted node is asked the same round again: it trains again, and counts both.
    retry = _node_round(toml)
    out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["epsilon"] > first.epsilon_after  # never less than before the retry
    assert ledger.verify().ok
    pending = _pending(ledger)
    assert [(e.server_round, e.seq) for e in pending] == [(2, 0), (2, 1)]
    assert ledger.committed() == frozenset({pending[1].hash})  # the retry only
    assert ledger.spent(dataset_fingerprint=fingerprint) == pytest.approx(result["epsilon"])
    # Same plan, same noise: the round's steps twice (the report merges them).
    twice = GaussianEvent(event.noise_multiplier, event.sample_rate, 2 * event.steps)
    assert runtime.accountant_store().load(method="rdp").events == (twice,)
    both = Accountant(method="rdp")
    both.compose(event)
    both.compose(event)
    assert result["epsilon"] == pytest.approx(both.get_privacy_spent(delta=DELTA).epsilon)
