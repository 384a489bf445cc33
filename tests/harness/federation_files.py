"""The files of a loopback test federation: CA, server certificate, node keys, TOMLs.

:func:`write_federation` writes, under one folder, everything ``fedguard server`` and
``fedguard client`` need for ``nodes`` nodes on 127.0.0.1: a federation CA and server
certificate, one OpenSSH key pair per node (the first ``enrol`` enrolled), each node's
roster of every node's public key, a ``node.toml`` per node and one ``federation.toml``
(digits, logistic regression, DP-SGD, SecAgg+ required). Tests edit the TOML text
(``str.replace``) to vary a setting, so the texts below are part of the harness's contract.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from fedguard._io import atomic_write_text
from fedguard.deploy.certs import FederationCerts, init_federation, make_node_keys
from fedguard.deploy_config import load_federation_config
from fedguard.server.run_files import RunFiles, run_files

__all__ = ["DELTA", "EPSILON", "FederationFiles", "fedguard_cmd", "free_port", "write_federation"]

EPSILON = 3.0  # every node's max-epsilon
DELTA = 1e-5  # every node's delta
HOST = "127.0.0.1"


@dataclass(frozen=True)
class FederationFiles:
    """Where :func:`write_federation` put things."""

    root: Path
    federation: Path  # federation.toml
    nodes: list[Path]  # each node's node.toml, in node order (node-a, node-b, ...)

    @property
    def results(self) -> Path:
        """The results folder of the run ``federation.toml`` describes now."""
        return self.run_files().results

    def run_files(self) -> RunFiles:
        """The files of the run ``federation.toml`` describes now (a test may edit it)."""
        return run_files(load_federation_config(self.federation))


def fedguard_cmd(*args: str) -> list[str]:
    """``fedguard ARGS`` with this interpreter (the checkout's environment)."""
    return [sys.executable, "-m", "fedguard", *args]


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _node_toml(
    *, name: str, fleet: str, ca: Path, key: Path, state: Path, roster: Path, k: int, n: int
) -> str:
    return f"""[node]
name = "{name}"
server = "{fleet}"
ca-cert = "{ca}"
private-key = "{key}"
state-dir = "{state}"

[data]
dataset = "digits"
partition-id = {k}
num-partitions = {n}

[privacy]
max-epsilon = {EPSILON}
delta = {DELTA}
min-noise-multiplier = 0.3
max-local-epochs = 5
accountant = "rdp"

[secagg]
required = true
min-neighbours = {min(2, n - 1)}
roster = "{roster}"
max-colluding-nodes = 0
"""


def _federation_toml(
    *,
    out: Path,
    rounds: int,
    min_nodes: int,
    fleet_port: int,
    control_port: int,
    certs: FederationCerts,
) -> str:
    return f"""state-dir = "{out / "server" / "state"}"
out = "{out / "server" / "results"}"

[federation]
name = "demo"
rounds = {rounds}
min-nodes = {min_nodes}
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
enabled = true
clip-range = 1.0
bits = 16
dropout-tolerance = 0.34

[server]
host = "{HOST}"
fleet-port = {fleet_port}
control-port = {control_port}
ca-cert = "{certs.ca_cert}"
server-cert = "{certs.server_cert}"
server-key = "{certs.server_key}"
keys-dir = "{out / "enrolled"}"
"""


def write_federation(
    *, out: Path, nodes: int, rounds: int, enrol: int | None = None
) -> FederationFiles:
    """Write a ``nodes``-node federation under ``out`` (a new folder); the first ``enrol``
    nodes (default: all) are enrolled with the server."""
    out = out.resolve()  # the TOMLs name absolute paths: processes read them from elsewhere
    out.mkdir(parents=True, mode=0o700)
    certs = init_federation(out=out / "certs", hosts=(HOST, "localhost"))
    enrolled = out / "enrolled"
    enrolled.mkdir(mode=0o700)
    fleet_port, control_port = free_port(), free_port()
    names = [f"node-{chr(ord('a') + k)}" if k < 26 else f"node-{k}" for k in range(nodes)]
    keys = {name: make_node_keys(name=name, out=out / name / "keys") for name in names}
    tomls = []
    for k, name in enumerate(names):
        home = out / name
        if enrol is None or k < enrol:
            shutil.copy(keys[name].public_key, enrolled / keys[name].public_key.name)
        roster = home / "roster"  # every node's key, as received out of band
        roster.mkdir(mode=0o700)
        for other in keys.values():
            shutil.copy(other.public_key, roster / other.public_key.name)
        toml = home / "node.toml"
        text = _node_toml(
            name=name,
            fleet=f"{HOST}:{fleet_port}",
            ca=certs.ca_cert,
            key=keys[name].private_key,
            state=home / "state",
            roster=roster,
            k=k,
            n=nodes,
        )
        atomic_write_text(toml, text)
        tomls.append(toml)
    federation = out / "federation.toml"
    min_nodes = nodes if enrol is None else min(nodes, enrol)
    text = _federation_toml(
        out=out,
        rounds=rounds,
        min_nodes=min_nodes,
        fleet_port=fleet_port,
        control_port=control_port,
        certs=certs,
    )
    atomic_write_text(federation, text)
    return FederationFiles(root=out, federation=federation, nodes=tomls)
