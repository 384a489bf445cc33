"""`fedguard demo`: a real federation on loopback, every piece a separate process.

A federation CA and server certificate, one key pair per node (enrolled by the server),
one `fedguard server` and N `fedguard client` processes each holding its own IID share
of the digits data set, TLS + node authentication + DP on. Prints per-round accuracy and
every node's epsilon (read from the node's own accountant), and stops every process it
started, also on failure or Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from fedguard._io import atomic_write_text
from fedguard.deploy.certs import init_federation, make_node_keys
from fedguard.deploy.procs import free_port, start, stop
from fedguard.deploy_config import load_federation_config
from fedguard.errors import ConfigError, FedguardError
from fedguard.server.run_files import RunFiles, run_files

__all__ = ["DemoLayout", "fedguard_cmd", "prepare_demo", "relay_output", "run_demo"]

MARKER = ".fedguard-demo"
DELTA = 1e-5
EPSILON = 3.0


@dataclass(frozen=True)
class DemoLayout:
    root: Path
    federation: Path
    nodes: list[Path]  # each node's node.toml

    @property
    def results(self) -> Path:
        """The results folder of the run ``federation.toml`` describes now."""
        return self.run_files().results

    def run_files(self) -> RunFiles:
        """The files of the run ``federation.toml`` describes now (it may be edited)."""
        return run_files(load_federation_config(self.federation))


def _node_toml(
    *,
    name: str,
    fleet: str,
    certs: Path,
    key: Path,
    state: Path,
    roster: Path,
    partition: int,
    partitions: int,
) -> str:
    return f"""[node]
name = "{name}"
server = "{fleet}"
ca-cert = "{certs / "ca.crt"}"
private-key = "{key}"
state-dir = "{state}"

[data]
dataset = "digits"
partition-id = {partition}
num-partitions = {partitions}

[privacy]
max-epsilon = {EPSILON}
delta = {DELTA}
min-noise-multiplier = 0.3
max-local-epochs = 5
accountant = "rdp"

[secagg]
# Send updates only under secure aggregation, and only while at least 2 neighbours live.
required = true
min-neighbours = {min(2, partitions - 1)}
# Every node's public key, received out of band (here: copied by the demo; in a real
# federation, check each fingerprint with `ssh-keygen -lf NAME.pub` before trusting it).
roster = "{roster}"
# Nodes that may collude with the server: the survivor-set quorum is floor((n + c)/2) + 1.
max-colluding-nodes = 0
"""


def prepare_demo(*, out: Path, nodes: int, rounds: int, enrol: int | None = None) -> DemoLayout:
    """Write certificates, keys and configs for ``nodes`` nodes (the first ``enrol`` of
    them enrolled; default all) under ``out``, replacing an earlier demo there."""
    out = out.resolve()  # the configs name absolute paths: they are read from elsewhere
    if nodes < 2:
        raise ConfigError(
            f"--nodes: expected an integer >= 2 (secure aggregation sums 2 or more), got {nodes}"
        )
    if rounds < 1:
        raise ConfigError(f"--rounds: expected an integer >= 1, got {rounds}")
    if out.exists():
        if not (out / MARKER).exists():
            raise ConfigError(
                f"--out: expected a new folder or an earlier demo's, got "
                f"{str(out)!r} which holds other files"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, mode=0o700)
    (out / MARKER).touch()
    certs = init_federation(out=out / "certs", hosts=("127.0.0.1", "localhost"))
    enrolled = out / "enrolled"
    enrolled.mkdir(mode=0o700)
    host, fleet_port, control_port = "127.0.0.1", free_port(), free_port()
    fleet = f"{host}:{fleet_port}"
    node_files = []
    names = [f"node-{chr(ord('a') + k)}" if k < 26 else f"node-{k}" for k in range(nodes)]
    made = {name: make_node_keys(name=name, out=out / name / "keys") for name in names}
    for k, name in enumerate(names):
        home, keys = out / name, made[name]
        if enrol is None or k < enrol:
            shutil.copy(keys.public_key, enrolled / keys.public_key.name)
        # Each node's own roster: every node's public key (as its IT team would receive
        # them out of band), so no key it checks comes through the server.
        roster = home / "roster"
        roster.mkdir(mode=0o700)
        for other in made.values():
            shutil.copy(other.public_key, roster / other.public_key.name)
        toml = home / "node.toml"
        atomic_write_text(
            toml,
            _node_toml(
                name=name,
                fleet=fleet,
                certs=certs.ca_cert.parent,
                key=keys.private_key,
                state=home / "state",
                roster=roster,
                partition=k,
                partitions=nodes,
            ),
        )
        node_files.append(toml)
    federation = out / "federation.toml"
    atomic_write_text(
        federation,
        f"""state-dir = "{out / "server" / "state"}"
out = "{out / "server" / "results"}"

[federation]
name = "demo"
rounds = {rounds}
min-nodes = {nodes if enrol is None else min(nodes, enrol)}
round-timeout = 120.0

[task]
model = "logreg"
input-shape = [1, 8, 8]
num-classes = 10
eval-dataset = "digits"

[training]
local-epochs = 1
batch-size = 64
lr = 0.5
max-grad-norm = 0.5

[secagg]
# SecAgg+: the server learns only the sum of the nodes' updates.
enabled = true
clip-range = 1.0
bits = 16
dropout-tolerance = 0.34

[server]
host = "{host}"
fleet-port = {fleet_port}
control-port = {control_port}
ca-cert = "{certs.ca_cert}"
server-cert = "{certs.server_cert}"
server-key = "{certs.server_key}"
keys-dir = "{enrolled}"
""",
    )
    return DemoLayout(root=out, federation=federation, nodes=node_files)


def relay_output(proc: subprocess.Popen[bytes], *, expect: list[str]) -> threading.Event:
    """Print ``proc``'s output as it comes; the event is set once every line in ``expect``
    has been seen (each as the start of a line)."""
    seen = threading.Event()
    missing = set(expect)

    def pump() -> None:
        for raw in proc.stdout or ():
            line = raw.decode(errors="replace").rstrip()
            print(line, flush=True)
            missing.discard(line.split(" (")[0])
            if not missing:
                seen.set()

    threading.Thread(target=pump, daemon=True).start()
    return seen


def fedguard_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedguard", *args]


def run_demo(*, out: Path, nodes: int, rounds: int, timeout: float | None = None) -> None:
    layout = prepare_demo(out=out, nodes=nodes, rounds=rounds)
    print(
        f"demo: {nodes} nodes, {rounds} rounds, TLS + node auth + DP-SGD "
        f"(epsilon <= {EPSILON:g} per node at delta {DELTA:g}); files in {out}",
        flush=True,
    )
    env = dict(os.environ)
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        server = start(
            fedguard_cmd("server", "--config", str(layout.federation)), env=env, log=subprocess.PIPE
        )
        procs.append(server)
        enrolled = relay_output(server, expect=[f"enrolled {t.parent.name}" for t in layout.nodes])
        # Nodes join once the server has enrolled their keys (else they are refused).
        if not enrolled.wait(timeout=120.0):
            raise FedguardError(f"demo: the server did not enrol the nodes; logs under {out}")
        for toml in layout.nodes:
            log = (toml.parent / "client.log").open("ab")
            logs.append(log)
            procs.append(start(fedguard_cmd("client", "--config", str(toml)), env=env, log=log))
        limit = timeout or 120.0 + 60.0 * rounds
        try:
            server.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise FedguardError(
                f"demo: the server did not finish within {limit:.0f}s; logs under {out}"
            ) from None
        if server.returncode != 0:
            raise FedguardError(
                f"demo: the server failed (status {server.returncode}); logs under {out}"
            )
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()
    # Here, not at the top: the process that starts the federation need not load torch.
    from fedguard.privacy import AccountantStore

    for toml in layout.nodes:
        # One accountant per data set the node trained on (fedguard.client.node).
        (path,) = sorted((toml.parent / "state").glob("accountant-*.json"))
        spent = AccountantStore(path=path).load(method="rdp").get_privacy_spent(delta=DELTA)
        print(
            f"{toml.parent.name}: epsilon {spent.epsilon:.3f} at delta {DELTA:g} "
            f"({spent.method.value.upper()}, from the node's own accountant)",
            flush=True,
        )
