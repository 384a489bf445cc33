"""A deployed node says what it does (#17.2), as its operator sees it: `fedguard client`'s
console. Started before its server, it waits with a visible back-off; per round it prints
the request, its plan and noise, epsilon before and after; once its federation finished
(its run's last round trained, the server gone) it says so and exits 0."""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from harness.federation_files import fedguard_cmd, write_federation

from fedguard.deploy.procs import start

pytestmark = pytest.mark.deploy

ROUNDS = 2


def _wait_for(path: Path, pattern: str, *, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"{path}: no line matching {pattern!r}:\n{text[-3000:]}")


def test_node_waits_for_its_server_says_each_round_and_exits_when_finished(
    tmp_path: Path, processes
):
    layout = write_federation(out=tmp_path / "fed", nodes=2, rounds=ROUNDS)
    # Plain rounds: what is tested here is the node's account, not secure aggregation.
    fed = layout.federation.read_text()
    plain = re.sub(r"(\[secagg\][^\[]*?)enabled = true", r"\1enabled = false", fed)
    assert plain != fed
    layout.federation.write_text(plain)
    for toml in layout.nodes:
        toml.write_text(toml.read_text().replace("required = true", "required = false"))
    nodes = [processes.client(toml) for toml in layout.nodes]
    logs = [toml.parent / "client.log" for toml in layout.nodes]
    server_at = re.escape("server at 127.0.0.1:")
    for log in logs:  # before its server: one line per attempt, the wait doubling
        _wait_for(log, server_at + r"\d+ not reachable; retrying in 4s", timeout=60)
        assert re.search(server_at + r"\d+ not reachable; retrying in 2s\n", log.read_text())
    server = start(
        fedguard_cmd("server", "--config", str(layout.federation)),
        env=dict(os.environ),
        log=subprocess.PIPE,
    )
    processes.started.append(server)
    console, _ = server.communicate(timeout=400)
    assert server.returncode == 0, console.decode(errors="replace")[-3000:]
    # What the operator reads of Flower's output (#17.8): no colour codes, no DEBUG lines.
    shown = console.decode(errors="replace")
    assert "\x1b[" not in shown and ":DEBUG:" not in shown and "Traceback" not in shown
    assert "Starting logstream" in shown  # Flower's own lines are there, plain
    assert "classes (label -> id): '0' -> 0, '1' -> 1, " in shown  # digits (#17.4)
    raw = (layout.root / "server" / "state" / "flwr-run.log").read_text()
    assert ":DEBUG:" in raw and "\x1b[" in raw  # kept whole, for whoever needs them
    superlink = (layout.root / "server" / "state" / "superlink.log").read_text()
    assert "\x1b[" not in superlink and "SuperLink" in superlink  # a file: plain text
    for proc in nodes:  # told by the run's last round and the closed server: exit 0
        assert proc.wait(timeout=60) == 0
    for toml, log in zip(layout.nodes, logs, strict=True):
        text = log.read_text()
        name = toml.parent.name
        for r in range(1, ROUNDS + 1):
            assert re.search(
                rf"node {name}: run '[^']+' round {r} of {ROUNDS}: request: \d+ local epochs, "
                r"batch \d+",
                text,
            ), text[-3000:]
            assert re.search(
                rf"node {name}: run '[^']+' round {r}: trained: noise multiplier [\d.]+ "
                rf"\(the run's plan: {ROUNDS} rounds, epsilon [\d.]+ after its last\).*; "
                r"epsilon [\d.e-]+ -> [\d.e-]+ "
                r"\(delta 1e-05, accountant rdp",
                text,
            ), text[-3000:]
        assert re.search(
            rf"node {name}: federation finished: this node trained the last planned round of "
            r"run '[^']+' and the server at 127\.0\.0\.1:\d+ has closed; exiting",
            text,
        ), text[-3000:]
        assert "\x1b[" not in text  # no colour codes in what the operator reads
        assert re.search(rf"node {name}: \d+ training records; classes \(label -> id\): '0'", text)
        assert "\x1b[" not in (toml.parent / "state" / "supernode.log").read_text()
