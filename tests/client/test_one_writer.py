"""One state folder, one writer (issue #13 point 4), with real processes.

Two node processes train on one state folder, the first delayed inside its critical
section (between reading the ledger and writing its entry): the second waits for it, sees
its spend, and the ledger records exactly what both released. And a second
``fedguard client`` on a state folder in use exits at once, naming the PID that holds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.federation_files import write_federation

from fedguard.client.node import node_runtime
from fedguard.files import LEDGER_FILE
from fedguard.privacy import Accountant, GaussianEvent
from fedguard.privacy.ledger import Ledger

DELTA = 1e-5  # the test federation's node policy (tests/harness)

NODE_ROUND = """
import json, sys, time
import torch
from fedguard.client import node as node_module
from fedguard.client import round_policy
from fedguard.fl.loop import TrainRequest
from fedguard.task import build_model, get_weights

torch.set_num_threads(1)
toml, server_round, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
runtime = node_module.node_runtime(toml)
if delay:
    real_plan_run = round_policy.plan_run

    def slow_plan_run(**kw):  # called after the ledger is read, before it is written
        print("inside", flush=True)
        time.sleep(delay)
        return real_plan_run(**kw)

    round_policy.plan_run = slow_plan_run
model = build_model(name="logreg", input_shape=runtime.input_shape, num_classes=10)
request = TrainRequest(
    server_round=server_round, local_epochs=1, batch_size=64, lr=0.5, max_grad_norm=0.5,
    total_rounds=3, federation="demo", model="logreg", run_id="demo/two",
)
result = runtime.train(model_name="logreg", weights=get_weights(model), request=request)
print(json.dumps({"epsilon": result.epsilon}), flush=True)
"""


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", NODE_ROUND, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.deploy  # two fresh interpreters importing torch: ~30-80 s on 2 shared cores
def test_two_processes_on_one_state_folder_serialise(tmp_path: Path):
    toml = write_federation(out=tmp_path / "demo", nodes=2, rounds=3).nodes[0]
    first = start(str(toml), "1", "3")
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "inside", first.stderr.read()
        second = start(str(toml), "2", "0")  # starts while the first holds the folder
        out2, err2 = second.communicate(timeout=300)
        out1, err1 = first.communicate(timeout=300)
    finally:
        for p in (first,):
            if p.poll() is None:
                p.kill()
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    eps1 = json.loads(out1.strip().splitlines()[-1])["epsilon"]
    eps2 = json.loads(out2.strip().splitlines()[-1])["epsilon"]
    ledger = Ledger(path=toml.parent / "state" / LEDGER_FILE)
    assert ledger.verify().ok
    pending = [e for e in ledger.entries() if e.kind == "pending"]
    assert [e.server_round for e in pending] == [1, 2]  # the delayed one wrote first
    assert len(ledger.committed()) == 2
    # The second saw the first's spend: what the ledger records is what both released.
    both = Accountant(method="rdp")
    for e in pending:
        assert e.noise_multiplier and e.sample_rate and e.steps
        both.compose(GaussianEvent(e.noise_multiplier, e.sample_rate, e.steps))
    spent = both.get_privacy_spent(delta=DELTA).epsilon
    assert eps1 < eps2 == pytest.approx(spent) == pytest.approx(pending[-1].epsilon_after)


HOLD = """
import sys, time
from pathlib import Path
from fedguard.client.state_lock import lock_file
lock_file(Path(sys.argv[1]), wait=False)
print("held", flush=True)
time.sleep(120)
"""


def fedguard_client(toml: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedguard", "client", "--config", str(toml)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.deploy  # real `fedguard client` processes: ~30 s
def test_a_second_node_process_on_a_state_folder_in_use_exits_naming_the_holder(
    tmp_path: Path,
):
    toml = write_federation(out=tmp_path / "demo", nodes=2, rounds=3).nodes[0]
    node_runtime.cache_clear()
    state = toml.parent / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state / "node.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = fedguard_client(toml)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = [x for x in result.stderr.splitlines() if x.strip()]
        assert lines[-1].endswith(
            f"state folder {state} is in use by PID {holder.pid} (another fedguard client?)"
        ), result.stderr
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # The holder gone, its lock went with it: the client gets past it, to wait for the
    # demo's server, which is not running (#17.2: it says so and retries).
    again = subprocess.Popen(
        [sys.executable, "-m", "fedguard", "client", "--config", str(toml)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert again.stdout is not None
        seen = [again.stdout.readline() for _ in range(3)]
        assert any("not reachable; retrying in" in x for x in seen), seen
        assert not any("is in use by PID" in x for x in seen), seen
    finally:
        os.killpg(again.pid, 9)
        again.wait(timeout=30)
