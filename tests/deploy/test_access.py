"""Access to a real `fedguard server` (TLS + node authentication) on loopback.

- Revocation: the operator deletes a node's key from keys-dir while the server runs. The
  node takes part in the round under way, then is sent nothing more; the SuperLink
  refuses every call signed with its key (so it can neither pull a message nor push a
  reply, nor, restarted, activate or register again), and `fedguard client` stops with a
  one-line reason.
- Plaintext: a node configured without TLS is refused before it starts, with a reason;
  a raw plaintext gRPC call to the TLS Fleet API gets no answer at all.
"""

import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from flwr.client.grpc_rere_client.node_auth_client_interceptor import (
    NodeAuthClientInterceptor,
)
from flwr.proto.fleet_pb2 import (
    ActivateNodeRequest,
    PullMessagesRequest,
    PushMessagesRequest,
    RegisterNodeFleetRequest,
)
from flwr.proto.fleet_pb2_grpc import FleetStub
from flwr.proto.node_pb2 import Node
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from harness.federation_files import fedguard_cmd, write_federation

from fedguard.files import ENROLMENT_FILE
from fedguard.privacy.ledger import Ledger

pytestmark = pytest.mark.deploy

ROUNDS = 3


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _rounds_trained(toml: Path) -> list[int]:
    ledger = Ledger(path=toml.parent / "state" / "ledger.jsonl")
    return [e.server_round for e in ledger.entries() if e.kind == "pending"]  # type: ignore[misc]


def _fleet_call_refusal(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=20)
    return err.value


def test_plaintext_and_revoked_nodes_are_refused_and_get_nothing(tmp_path: Path, processes, capsys):
    layout = write_federation(out=tmp_path / "fed", nodes=3, rounds=ROUNDS)
    a, b, c = layout.nodes
    # Once node-c is gone, node-a and node-b form a secure sum of two: let them; and a
    # round of two updates is a complete round (min-nodes: the fewest a round aggregates).
    fed = layout.federation
    fed.write_text(fed.read_text().replace("min-nodes = 3", "min-nodes = 2"))
    for toml in (a, b):
        toml.write_text(toml.read_text().replace("min-neighbours = 2", "min-neighbours = 1"))
    server, ready = processes.server(
        layout, expect=[f"enrolled {t.parent.name}" for t in (a, b, c)]
    )
    assert ready.wait(timeout=120), "server did not enrol the nodes"
    fleet = next(
        line.split('"')[1] for line in a.read_text().splitlines() if line.startswith("server")
    )
    ca = (layout.root / "certs" / "ca.crt").read_bytes()

    # A raw plaintext gRPC call to the TLS Fleet API: no TLS handshake, no answer.
    with grpc.insecure_channel(fleet) as channel:
        plain = _fleet_call_refusal(FleetStub(channel).PullMessages, PullMessagesRequest())
    assert plain.code() == grpc.StatusCode.UNAVAILABLE, plain

    # A node configured without TLS: refused before it starts, with the reason.
    plaintext = tmp_path / "plaintext.toml"
    plaintext.write_text(
        a.read_text()
        .replace('name = "node-a"', 'name = "node-a"\ninsecure = true')
        .replace(str(a.parent / "state"), str(tmp_path / "plaintext-state"))
    )
    refused = subprocess.run(
        fedguard_cmd("client", "--config", str(plaintext)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    reason = [ln for ln in refused.stderr.splitlines() if ln.startswith("fedguard: error:")]
    assert len(reason) == 1 and "node.insecure: the server at" in reason[0], refused.stderr
    assert "requires TLS" in reason[0]
    assert not list((tmp_path / "plaintext-state").glob("*.json*"))  # nothing trained

    clients = {t.parent.name: processes.client(t) for t in (a, b, c)}
    # Revoke node-c while round 1 runs: once it has started training, delete its key.
    deadline = time.monotonic() + 300
    ledger_c = c.parent / "state" / "ledger.jsonl"
    while not (ledger_c.exists() and _rounds_trained(c) == [1]):
        assert time.monotonic() < deadline and server.poll() is None, "round 1 never started"
        time.sleep(0.05)
    (layout.root / "enrolled" / "node-c.pub").unlink()
    metrics = layout.results / "metrics.jsonl"
    assert _rows(metrics) == [], "round 1 ended before the key was deleted: cannot test"

    # The ServerApp unregisters node-c at the start of round 2 and records it.
    record_path = layout.root / "server" / "state" / ENROLMENT_FILE
    while not json.loads(record_path.read_text())["nodes"]["node-c"]["revoked_at"]:
        assert time.monotonic() < deadline and server.poll() is None, "node-c never revoked"
        time.sleep(0.1)
    record = json.loads(record_path.read_text())["nodes"]
    assert record["node-a"]["revoked_at"] is None and record["node-b"]["revoked_at"] is None
    node_c = record["node-c"]["node_id"]

    # Calls signed with node-c's key: refused by the SuperLink, to read and to submit.
    key = serialization.load_ssh_private_key(
        (c.parent / "keys" / "node-c").read_bytes(), password=None
    )
    assert server.poll() is None, "the federation ended before the refusal could be checked"
    with grpc.secure_channel(fleet, grpc.ssl_channel_credentials(ca)) as channel:
        signed = grpc.intercept_channel(channel, NodeAuthClientInterceptor(key, key.public_key()))
        stub = FleetStub(signed)
        for call, request in (
            (stub.PullMessages, PullMessagesRequest(node=Node(node_id=node_c))),
            (stub.PushMessages, PushMessagesRequest(node=Node(node_id=node_c))),
        ):
            err = _fleet_call_refusal(call, request)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
            assert "Invalid node ID" in (err.details() or ""), err
        # A restarted node-c: it can neither activate its old registration nor register
        # its key again (only the operator registers keys).
        pub = public_key_to_bytes(key.public_key())
        for call, request, why in (
            (
                stub.ActivateNode,
                ActivateNodeRequest(public_key=pub, heartbeat_interval=30),
                "Failed to activate SuperNode",
            ),
            (
                stub.RegisterNode,
                RegisterNodeFleetRequest(public_key=pub),
                "All SuperNodes must be registered via the CLI",
            ),
        ):
            err = _fleet_call_refusal(call, request)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
            assert why in (err.details() or ""), err

    server.wait(timeout=400)
    assert server.returncode == 0
    # node-c's own process stops with the reason on one line.
    clients["node-c"].wait(timeout=120)
    assert clients["node-c"].returncode == 2
    errors = [
        ln
        for ln in (c.parent / "client.log").read_text().splitlines()
        if ln.startswith("fedguard: error:")
    ]
    assert len(errors) == 1 and "the server revoked this node's enrolment" in errors[0], errors

    out = capsys.readouterr().out
    assert "revoked node-c: node-c.pub was removed from keys-dir" in out
    rows = _rows(metrics)
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert [(r["clients"], r["refused"]) for r in rows] == [(3, 0)] + [(2, 1)] * (ROUNDS - 1)
    # node-c trained round 1 only, got no message of a later round, sent no receipt after.
    assert _rounds_trained(c) == [1]
    log_c = (c.parent / "state" / "supernode.log").read_text()
    assert "ROUND 1]" in log_c
    assert not any(f"ROUND {r}]" in log_c for r in range(2, ROUNDS + 1))
    assert {r["receipts"]["node-c"]["server_round"] for r in rows} == {1}
    for toml in (a, b):
        assert _rounds_trained(toml) == list(range(1, ROUNDS + 1))
        assert rows[-1]["receipts"][toml.parent.name]["server_round"] == ROUNDS
