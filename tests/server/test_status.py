"""`fedguard status` from a server's files: enrolled names, rounds, each node's epsilon from
its newest receipt; and fast: it imports neither torch nor Flower."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from fedguard._io import atomic_write_json
from fedguard.deploy_config import load_federation_config
from fedguard.server.checkpoint import Checkpoint, save_checkpoint
from fedguard.server.run_files import run_files
from fedguard.server.status import federation_status


def _federation(tmp_path: Path) -> Path:
    toml = tmp_path / "federation.toml"
    toml.write_text(
        'state-dir = "state"\nout = "results"\n[federation]\nname = "card"\nrounds = 5\n'
        "[server]\ninsecure = true\n"
    )
    return toml


def test_status_names_nodes_by_enrolment_and_reads_their_receipts(tmp_path: Path):
    cfg = load_federation_config(_federation(tmp_path))
    state = cfg.state_dir
    atomic_write_json(
        state / "enrolment.json",
        {
            "format": "fedguard-enrolment/1",
            "nodes": {
                name: {"node_id": i + 7, "key_sha256": "x", "enrolled_at": "2026-12-04T10:00:00",
                       "revoked_at": None, "reason": None}
                for i, name in enumerate(["bank-a", "bank-b"])
            },
        },
    )  # fmt: skip
    files = run_files(cfg)  # the run's own folders (#17.1)
    files.checkpoint.parent.mkdir(parents=True)
    save_checkpoint(
        files.checkpoint,
        Checkpoint(server_round=2, config_digest=cfg.digest(), weights=[np.zeros(3)], velocity=[]),
    )
    receipt = {"epsilon": 1.25, "delta": 1e-5, "accountant": "rdp", "server_round": 2}
    rows = [
        {"round": 1, "accuracy": 0.5, "clients": 2, "refused": 0, "receipts": {}},
        {"round": 2, "accuracy": 0.6, "clients": 1, "refused": 1,
         "receipts": {"bank-a": receipt}},
    ]  # fmt: skip
    files.results.mkdir(parents=True)
    (files.results / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    st = federation_status(cfg)
    assert (st.rounds_done, st.rounds_planned) == (2, 5)
    assert st.server.startswith("never started")
    assert [(n.name, n.node_id, n.epsilon) for n in st.nodes] == [
        ("bank-a", 7, 1.25),
        ("bank-b", 8, None),
    ]
    assert st.last_round is not None and st.last_round["refused"] == 1
    assert json.loads(st.to_json())["nodes"][0]["accountant"] == "rdp"


def test_status_of_a_fresh_federation_and_no_heavy_imports(tmp_path: Path):
    toml = _federation(tmp_path)
    code = "import sys; from fedguard.cli import main; main(['status', '--config', sys.argv[1]])\n"
    check = "import sys; print('torch' in sys.modules or 'flwr' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code + check, str(toml)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert "0 of 5 rounds done; server never started" in lines[0]
    assert "no node enrolled yet" in out.stdout
    assert lines[-1] == "False"


def test_status_of_a_binary_task_leads_with_roc_auc(tmp_path: Path):
    """#17.5: with 3% positives, accuracy alone (0.97 for "No" everywhere) says nothing."""
    toml = _federation(tmp_path)
    files = run_files(load_federation_config(toml))
    files.results.mkdir(parents=True)
    row = {"round": 1, "accuracy": 0.97, "roc_auc": 0.81, "pr_auc": 0.52, "f1_pos": 0.5,
           "precision_pos": 0.45, "recall_pos": 0.56, "threshold": 0.08, "clients": 3,
           "refused": 0, "receipts": {}}  # fmt: skip
    (files.results / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    code = "import sys; from fedguard.cli import main; main(['status', '--config', sys.argv[1]])\n"
    out = subprocess.run(
        [sys.executable, "-c", code, str(toml)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("last round 1:"))
    assert line.index("ROC-AUC 0.8100") < line.index("accuracy 0.9700"), line
    assert "PR-AUC 0.5200" in line and "positive F1 0.5000" in line, line
