"""What the operator asks first: who is enrolled and connected, where the run is, and each
node's epsilon from its receipts (``fedguard status``).

Read from the server's own files (enrolment record, the run's checkpoint and
``metrics.jsonl``, :mod:`fedguard.server.run_files`) and,
when the server runs, from its SuperLink's Control API (``flwr supernode list``): nothing
here imports torch or Flower, so it answers in about a second.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from fedguard._io import read_jsonl
from fedguard.deploy.flower import flower_env
from fedguard.deploy.procs import venv_tool
from fedguard.deploy_config import FederationConfig
from fedguard.files import ENROLMENT_FILE, METRICS_FILE
from fedguard.server.checkpoint import load_checkpoint
from fedguard.server.enrolment import CONNECTION, Enrolment
from fedguard.server.run_files import run_files

__all__ = ["FederationStatus", "NodeStatus", "federation_status"]

_LIST_TIMEOUT_S = 20.0


@dataclass(frozen=True, kw_only=True)
class NodeStatus:
    name: str  # the name it was enrolled under (its key file), never its own claim
    node_id: int
    enrolled_at: str
    revoked_at: str | None
    connection: str  # online, offline, registered (never connected), or unknown
    last_seen: str | None
    epsilon: float | None  # from its newest receipt the server stored
    delta: float | None
    accountant: str | None
    receipt_round: int | None


@dataclass(frozen=True, kw_only=True)
class FederationStatus:
    federation: str
    run: str
    rounds_done: int
    rounds_planned: int
    server: str  # "running" or why it is not known to be
    last_round: dict[str, Any] | None
    nodes: list[NodeStatus] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def federation_status(cfg: FederationConfig) -> FederationStatus:
    """The status of ``cfg``'s federation; raises ``DataError`` for a damaged state file."""
    state, files = cfg.state_dir, run_files(cfg)
    checkpoint = load_checkpoint(files.checkpoint)
    if checkpoint is None:  # written before runs had their own folders
        legacy = load_checkpoint(files.legacy_checkpoint)
        checkpoint = legacy if legacy and legacy.config_digest == cfg.digest() else None
    rows = read_jsonl(files.results / METRICS_FILE)
    last = rows[-1] if rows else None
    receipts: dict[str, dict[str, Any]] = dict(last.get("receipts", {})) if last else {}
    online, server = _connections(cfg)
    enrolled = (
        Enrolment(keys_dir=cfg.server.keys_dir or state, state_dir=state, env={}).records()
        if (state / ENROLMENT_FILE).exists()
        else {}
    )
    nodes = []
    for name, entry in sorted(enrolled.items()):
        seen = online.get(entry["node_id"], {})
        receipt = receipts.get(name, {})
        nodes.append(
            NodeStatus(
                name=name,
                node_id=entry["node_id"],
                enrolled_at=entry["enrolled_at"],
                revoked_at=entry.get("revoked_at"),
                connection=seen.get("status", "unknown"),
                last_seen=seen.get("online-at")
                if seen.get("status") == "online"
                else (seen.get("offline-at")),
                epsilon=receipt.get("epsilon"),
                delta=receipt.get("delta"),
                accountant=receipt.get("accountant"),
                receipt_round=receipt.get("server_round"),
            )
        )
    return FederationStatus(
        federation=cfg.federation.name,
        run=files.run_id,
        rounds_done=0 if checkpoint is None else checkpoint.server_round,
        rounds_planned=cfg.federation.rounds,
        server=server,
        last_round=None
        if last is None
        else {k: v for k, v in last.items() if k not in ("receipts", "epsilon_by_node")},
        nodes=nodes,
    )


def _connections(cfg: FederationConfig) -> tuple[dict[int, dict[str, Any]], str]:
    """Flower's view of the nodes (node id -> its row), and whether the server answered."""
    home = cfg.state_dir / "flwr"
    if not (home / "config.toml").exists():
        return {}, "never started (no SuperLink connection in the state folder)"
    try:
        out = subprocess.run(
            [venv_tool("flwr"), "supernode", "list", CONNECTION, "--format", "json"],
            env=flower_env(home),
            capture_output=True,
            text=True,
            timeout=_LIST_TIMEOUT_S,
            check=False,
        )
        text = out.stdout
        answer = json.loads(text[text.index("{") :])
    except (subprocess.TimeoutExpired, ValueError, OSError):
        answer = {}
    if not isinstance(answer, dict) or not answer.get("success"):
        control = f"{cfg.server.host}:{cfg.server.control_port}"
        return {}, f"not running (its Control API at {control} did not answer)"
    rows = {}
    for row in answer.get("nodes", []):
        try:
            rows[int(row["node-id"])] = row
        except (KeyError, TypeError, ValueError):
            continue
    return rows, "running"
