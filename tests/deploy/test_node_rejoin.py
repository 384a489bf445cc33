"""#15 point 2: a node SIGKILLed while connected, restarted at once, rejoins.

Flower keeps a crashed node's session online until its heartbeat patience runs out and
refuses to activate its key meanwhile; `fedguard client` took that refusal for an
unenrolled key, exited 2 with a false message and never retried. Now it waits, saying what
it waits for, and the restarted node is activated again within seconds.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from harness.federation_files import fedguard_cmd, write_federation

from fedguard.deploy.procs import start

pytestmark = pytest.mark.deploy


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_a_node_killed_and_restarted_rejoins_within_seconds(tmp_path: Path, processes):
    layout = write_federation(out=tmp_path / "fed", nodes=2, rounds=200)
    a, b = layout.nodes
    _server, ready = processes.server(layout, expect=["enrolled node-a", "enrolled node-b"])
    assert ready.wait(timeout=120), "server did not enrol the nodes"
    processes.client(b)
    log = a.parent / "state" / "supernode.log"

    def activations() -> int:
        return log.read_text(errors="replace").count("SuperNode ID") if log.exists() else 0

    out = (tmp_path / "a-first.out").open("wb")
    first = start(fedguard_cmd("client", "--config", str(a)), env=dict(os.environ), log=out)
    processes.started.append(first)
    assert _wait_for(lambda: activations() >= 1, 120), "node-a never connected"
    # SIGKILL the node: the launcher and the SuperNode it forked (its own session).
    text = (tmp_path / "a-first.out").read_text()
    supernode = int(re.findall(r"SuperNode started \(pid (\d+)\)", text)[-1])
    for pid in (first.pid, supernode):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    first.wait(timeout=30)

    killed_at = time.monotonic()
    again = subprocess.Popen(
        fedguard_cmd("client", "--config", str(a)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
        start_new_session=True,
    )
    processes.started.append(again)
    rejoined = _wait_for(lambda: activations() >= 2 or again.poll() is not None, 90)
    took = time.monotonic() - killed_at
    assert again.poll() is None, again.stdout.read().decode() if again.stdout else ""
    assert rejoined and activations() >= 2, "the restarted node was not activated again"
    assert took < 60, f"rejoined only after {took:.0f} s"

    # #17.3: the operator's view, scriptable: both nodes by their enrolled names, online.
    def status() -> dict:
        out = subprocess.run(
            fedguard_cmd("status", "--config", str(layout.federation), "--json"),
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return json.loads(out.stdout)

    assert _wait_for(
        lambda: [n["connection"] for n in status()["nodes"]] == ["online", "online"], 60
    ), status()
    st = status()
    assert st["server"] == "running" and st["rounds_planned"] == 200
    assert [n["name"] for n in st["nodes"]] == ["node-a", "node-b"]
