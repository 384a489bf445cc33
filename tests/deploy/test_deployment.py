"""A real federation on loopback: `fedguard server` + 3 `fedguard client` processes over
gRPC with TLS and node authentication, DP on. Also: nodes that must be refused are, with
a reason that says which problem it is."""

import json
import subprocess
from pathlib import Path

import pytest
from harness.federation_files import fedguard_cmd, write_federation

from fedguard.client.node import node_runtime
from fedguard.deploy.certs import init_federation
from fedguard.privacy import AccountantStore
from fedguard.privacy.ledger import Ledger
from fedguard.privacy.receipts import coarse_epsilon
from fedguard.server.checkpoint import load_checkpoint

pytestmark = pytest.mark.deploy

ROUNDS = 2


def run_client(toml: Path) -> subprocess.Popen[str]:
    """A ``fedguard client`` in its own process group (stopped with the federation's)."""
    return subprocess.Popen(
        fedguard_cmd("client", "--config", str(toml)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_tls_federation_trains_and_refuses_outsiders(tmp_path: Path, processes):
    layout = write_federation(out=tmp_path / "fed", nodes=4, rounds=ROUNDS, enrol=3)
    members, outsider = layout.nodes[:3], layout.nodes[3]
    # A node holding another federation's CA certificate: refused before connecting.
    other = init_federation(out=tmp_path / "other-ca")
    wrong_ca = tmp_path / "wrong-ca.toml"
    wrong_ca.write_text(
        members[0]
        .read_text()
        .replace(str(layout.root / "certs" / "ca.crt"), str(other.ca_cert))
        .replace(str(members[0].parent / "state"), str(tmp_path / "wrong-ca-state"))
    )
    server, ready = processes.server(layout, expect=[f"enrolled {t.parent.name}" for t in members])
    # A node whose key the operator never enrolled: refused, and told so. It waits out a
    # session the server might still hold for a restarted node (~35 s), so it goes first
    # (the server waits for its members before round 1), started with the server and with
    # the wrong-CA node: each waits until the server answers.
    refusals = [run_client(outsider), run_client(wrong_ca)]
    processes.started.extend(refusals)  # type: ignore[arg-type]  # stopped alike
    assert ready.wait(timeout=120), "server did not enrol the nodes"
    _, refused = refusals[0].communicate(timeout=240)
    assert refusals[0].returncode == 2, refused
    assert "not enrolled" in refused and "node-d.pub" in refused
    for toml in members:
        processes.client(toml)
    _, result = refusals[1].communicate(timeout=240)
    assert refusals[1].returncode == 2, result
    assert "node.ca-cert" in result and "not signed by the CA" in result

    server.wait(timeout=400)
    assert server.returncode == 0
    processes.stop_all()

    rows = [json.loads(x) for x in (layout.results / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["clients"] == 3 and r["refused"] == 0 for r in rows)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] > 0.15  # learning (10 classes)
    checkpoint = load_checkpoint(layout.run_files().checkpoint)
    assert checkpoint is not None and checkpoint.server_round == ROUNDS
    # Each member's own accountant holds the spent epsilon, within its budget, and the
    # server's per-node figures are those the nodes reported.
    for toml in members:
        spent = (
            AccountantStore(path=node_runtime(str(toml)).accountant_store().path)
            .load(method="rdp")
            .get_privacy_spent(delta=1e-5)
        )
        assert 0.97 * 3.0 <= spent.epsilon <= 3.0
        # Rounded up to 0.1: these nodes keep their record count (reveal-count = false).
        coarse = coarse_epsilon(spent.epsilon)
        assert rows[-1]["epsilon_by_node"][toml.parent.name] == pytest.approx(coarse)
        # ... and its hash-chained ledger: one committed entry per round, chain intact.
        ledger = Ledger(path=toml.parent / "state" / "ledger.jsonl")
        assert ledger.verify().ok
        assert len(ledger.committed()) == ROUNDS
        pending = [e for e in ledger.entries() if e.kind == "pending"]
        assert [e.server_round for e in pending] == list(range(1, ROUNDS + 1))
        fingerprint = pending[-1].dataset_fingerprint
        assert fingerprint is not None and fingerprint.startswith("hmac:")
        assert ledger.spent(dataset_fingerprint=fingerprint) == pytest.approx(spent.epsilon)
        # The server's record is the node's receipt: its ledger's last entry, by hash.
        receipt = rows[-1]["receipts"][toml.parent.name]
        assert receipt["ledger_hash"] == pending[-1].hash and receipt["committed"] is True
        assert receipt["epsilon"] == pytest.approx(coarse)
        assert receipt["dataset_fingerprint"] == fingerprint
        # Secure aggregation left no round secrets behind on the node: only its journal of
        # what it sent (client/released.py), so no update goes into a second sum, and the
        # survivor sets it signed (client/signed_sets.py), so it never signs a second one.
        left = sorted(p.name for p in (toml.parent / "state").glob("secagg-*"))
        assert left == ["secagg-released.json", "secagg-signed.jsonl"], left
    summary = json.loads((layout.results / "summary.json").read_text())
    assert summary["secure_aggregation"]["protocol"] == "SecAgg+"
    assert summary["secure_aggregation"]["enabled"] is True
    assert not list((outsider.parent / "state").glob("accountant-*.json"))
    assert not list((tmp_path / "wrong-ca-state").glob("accountant-*.json"))
