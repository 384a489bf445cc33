"""#15.1, #15.3, #14.5 and #17.1 against real processes: the server names nodes by their
enrolled key, leaves out a node whose data does not fit the task before anyone trains,
and stops (exit non-zero, one line why) when a killed node leaves too few to go on.

Before: a node enrolled as node-b that called itself node-a crashed the ServerApp
(``KeyError``) and the launcher said "run the same command again to resume"; a node with
data of another shape was sent every round and failed it; after a node was killed rounds
aborted about once a second, each "no reply within 120s", and the server said
``finished N rounds`` with exit 0.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from harness.federation_files import FederationFiles, fedguard_cmd, write_federation

from fedguard.deploy.procs import start

pytestmark = pytest.mark.deploy


class Console:
    """The server's console, line by line, as the operator sees it."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self.proc = proc
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for raw in self.proc.stdout or ():
            line = raw.decode(errors="replace").rstrip("\n")
            print(line, flush=True)
            self.lines.append(line)

    def wait_for(self, prefix: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(x.startswith(prefix) for x in self.lines):
                return True
            time.sleep(0.2)
        return False


def _server(layout: FederationFiles, processes) -> Console:
    proc = start(
        fedguard_cmd("server", "--config", str(layout.federation)),
        env=dict(os.environ),
        log=subprocess.PIPE,
    )
    processes.started.append(proc)
    return Console(proc)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, path)
    path.write_text(text.replace(old, new))


def test_a_node_is_named_by_its_key_and_a_misfit_is_left_out(tmp_path: Path, processes):
    layout = write_federation(out=tmp_path / "fed", nodes=3, rounds=2)
    _, b, c = layout.nodes
    _edit(layout.federation, "min-nodes = 3", "min-nodes = 2")
    for toml in layout.nodes:  # a cohort of two: one neighbour each
        _edit(toml, "min-neighbours = 2", "min-neighbours = 1")
    # node-b, enrolled under its own key, says it is node-a.
    _edit(b, 'name = "node-b"', 'name = "node-a"')
    # node-c holds 4x4 images: not the task's 8x8.
    rng = np.random.default_rng(0)
    misfit = c.parent / "small.npz"
    np.savez(misfit, x=rng.random((120, 1, 4, 4)).astype(np.float32), y=np.arange(120) % 10)
    _edit(c, 'dataset = "digits"\npartition-id = 2\nnum-partitions = 3', f'dataset = "{misfit}"')

    console = _server(layout, processes)
    assert console.wait_for("enrolled node-c", 120), "server did not enrol the nodes"
    for toml in layout.nodes:
        processes.client(toml)
    console.proc.wait(timeout=400)
    out = "\n".join(console.lines)
    assert console.proc.returncode == 0, out
    # The misfit is named (by its enrolled name) with the mismatch, before round 1.
    left_out = [x for x in console.lines if x.startswith("left out node-c")]
    assert len(left_out) == 1 and "input shape" in left_out[0], out
    assert out.index("left out node-c") < out.index("round 1:")
    assert "2 nodes: node-a, node-b" in out, out
    summary = json.loads((layout.results / "summary.json").read_text())
    assert summary["nodes"] == ["node-a", "node-b"]
    assert sorted(summary["epsilon_by_node"]) == ["node-a", "node-b"]
    rows = [json.loads(x) for x in (layout.results / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in rows] == [2, 2]
    # node-c never trained: its ledger holds nothing.
    ledger = c.parent / "state" / "ledger.jsonl"
    assert not ledger.exists() or not ledger.read_text().strip()


def test_a_killed_node_stops_the_run_with_a_reason(tmp_path: Path, processes):
    # Round 1 must finish within it too: a node's first round took up to ~15 s with two
    # test workers' federations side by side (make unit), so 30, not 20.
    timeout = 30
    layout = write_federation(out=tmp_path / "fed", nodes=2, rounds=60)
    _edit(layout.federation, "round-timeout = 120.0", f"round-timeout = {timeout}.0")
    console = _server(layout, processes)
    assert console.wait_for("enrolled node-b", 120), "server did not enrol the nodes"
    a = processes.client(layout.nodes[0])
    out_b = (tmp_path / "b.out").open("wb")
    cmd = fedguard_cmd("client", "--config", str(layout.nodes[1]))
    b = start(cmd, env=dict(os.environ), log=out_b)
    processes.started.append(b)
    assert console.wait_for("round 1:", 300), "\n".join(console.lines)
    text = (tmp_path / "b.out").read_text()
    supernode = int(re.findall(r"SuperNode started \(pid (\d+)\)", text)[-1])
    for pid in (b.pid, supernode):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    killed = time.monotonic()
    try:
        console.proc.wait(timeout=timeout + 150)
    except subprocess.TimeoutExpired:
        pytest.fail("the server kept going without node-b:\n" + "\n".join(console.lines[-15:]))
    took = time.monotonic() - killed
    out = "\n".join(console.lines)
    assert console.proc.returncode != 0, out
    assert not any(x.startswith("federation 'demo' finished") for x in console.lines), out
    assert a.poll() is None  # the live node was not the problem
    # One line naming the stop and the round; the node that is gone is named in it (it
    # refused or was offline) or, when it vanished mid secure aggregation, in the round's
    # own warning just before.
    last = console.lines[-1]
    assert "stopped" in last and "round" in last, out
    assert "node-b" in last or any("node-b dropped" in x for x in console.lines), out
    rounds = [x for x in console.lines if re.match(r"round \d+:", x)]
    assert len(rounds) <= 4, out  # not a round a second
    assert took < timeout + 150
    # No round is said to time out before its timeout could have passed.
    for line in console.lines:
        m = re.search(r"no reply within (\d+)s", line)
        assert m is None or int(m.group(1)) >= timeout, line


def test_the_server_waits_for_enrolled_nodes_that_connect_late(tmp_path: Path, processes):
    """Nodes connect one by one. The first two (each demanding two neighbours) cannot form
    a secure sum alone; before, the server described them, left both out and stopped
    before round 1 ("1 node(s) fit the task, min-nodes is 2") instead of waiting for the
    third enrolled node. Now it names whom it waits for and runs once node-b is there."""
    layout = write_federation(out=tmp_path / "fed", nodes=3, rounds=1)
    a, b, c = layout.nodes
    _edit(layout.federation, "min-nodes = 3", "min-nodes = 2")
    console = _server(layout, processes)
    assert console.wait_for("enrolled node-c", 120), "server did not enrol the nodes"
    processes.client(a)
    processes.client(c)
    waiting = console.wait_for("waiting up to", 300)
    out = "\n".join(console.lines)
    assert waiting, out
    line = next(x for x in console.lines if x.startswith("waiting up to"))
    assert "for node-b (2 of 3 enrolled nodes answered)" in line, out
    assert console.proc.poll() is None, out
    processes.client(b)
    console.proc.wait(timeout=400)
    out = "\n".join(console.lines)
    assert console.proc.returncode == 0, out
    assert "3 nodes: node-a, node-b, node-c" in out, out
    assert not any(x.startswith("left out") for x in console.lines), out
