"""Which nodes the server accepts: the keys in ``server.keys-dir``, enforced by Flower.

Enrolment: `fedguard server` registers every ``NAME.pub`` in keys-dir with its SuperLink
(``flwr supernode register``) and records the node id Flower assigns to each key in
``state-dir/enrolment.json`` (0600): Flower's own listing does not show keys, so this
record is how a key is later matched to its node.

Revocation: deleting ``NAME.pub`` from keys-dir (or replacing it with another key) while
the server runs revokes that node from the next round on. The ServerApp checks keys-dir
at the start of every round (:meth:`Enrolment.revoke_removed`): a recorded key that is
gone is unregistered from the SuperLink (``flwr supernode unregister ID``, Flower 1.39's
Control API), and the ServerApp sends that node nothing more. From then on the SuperLink
refuses every Fleet API call signed with the key ("Invalid node ID"): the node can
neither pull a message nor push a reply, and a restarted node is refused activation.
A round already under way when the key is deleted finishes with the node; revocation
takes effect at round boundaries. A revoked key stays revoked: Flower never registers a
public key twice, so to readmit the node give it a new key pair.

Limits: a key that was registered without this record (by hand, or with the record lost)
cannot be matched to its node; the server says so at start-up and revoking it needs
``flwr supernode unregister``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedguard._io import atomic_write_json
from fedguard.deploy.certs import load_public_key_openssh
from fedguard.deploy.flower.cli_output import ApiCode, flwr_json_answer, has_api_code
from fedguard.deploy.procs import venv_tool
from fedguard.errors import FedguardError
from fedguard.files import ENROLMENT_FILE

__all__ = [
    "CONNECTION",
    "Enrolment",
    "EnrolmentError",
    "Revocation",
    "RevocationCheck",
]

CONNECTION = "fedguard"  # the SuperLink connection's name in the server's FLWR_HOME
FORMAT = "fedguard-enrolment/1"
FLWR_TIMEOUT_S = 120.0


class EnrolmentError(FedguardError):
    """A key could not be enrolled or revoked; the message names it and says why."""


@dataclass(frozen=True)
class Revocation:
    """A node whose key left keys-dir: unregistered from the SuperLink, sent nothing more."""

    name: str  # the key's file stem in keys-dir
    node_id: int
    reason: str
    at: str  # UTC, ISO 8601


@dataclass(frozen=True)
class RevocationCheck:
    """What one look at keys-dir found."""

    new: list[Revocation]  # unregistered from the SuperLink by this check
    failed: list[tuple[Revocation, str]]  # unregistering failed (flwr's error); retried
    revoked: dict[int, Revocation]  # every node id to send nothing to, by node id


def key_digest(path: Path) -> str | None:
    """sha256 of an OpenSSH public key's type and key fields (its comment may change);
    None if the file cannot be read as one."""
    try:
        fields = path.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    return hashlib.sha256(" ".join(fields[:2]).encode()).hexdigest() if len(fields) >= 2 else None


class Enrolment:
    """The enrolled keys of one server and the node ids Flower gave them.

    Parameters
    ----------
    keys_dir
        The operator's folder of ``NAME.pub`` files (``server.keys-dir``).
    state_dir
        The server's state folder; the record is ``state_dir/enrolment.json``.
    env
        Environment for the ``flwr`` CLI: its ``FLWR_HOME`` names the SuperLink
        connection :data:`CONNECTION`.
    """

    def __init__(self, *, keys_dir: Path, state_dir: Path, env: Mapping[str, str]) -> None:
        self.keys_dir, self.path, self.env = keys_dir, state_dir / ENROLMENT_FILE, dict(env)
        self._lock = threading.Lock()

    def records(self) -> dict[str, dict[str, Any]]:
        """Every node ever enrolled: name -> node_id, key_sha256, enrolled_at, revoked_at."""
        return dict(self._load()["nodes"])

    # -- enrolment (the launcher, at start-up) ------------------------------------------

    def enrol_all(self, *, workers: int = 4) -> list[str]:
        """Register every ``*.pub`` in keys-dir not registered yet; one line per key.

        Keys are registered ``workers`` at a time (each is one ``flwr`` process, ~1 s).
        """
        record = self._load()
        pubs = sorted(self.keys_dir.glob("*.pub"))
        for pub in pubs:  # all checked first: one bad file and nothing is registered
            load_public_key_openssh(pub)  # DataError naming the file if not a node key
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(lambda pub: self._enrol(pub, record), pubs))

    def _enrol(self, pub: Path, record: dict[str, Any]) -> str:
        name, digest = pub.stem, key_digest(pub)
        known = record["nodes"].get(name)
        same_key = known is not None and known["key_sha256"] == digest
        if same_key and known is not None and known.get("revoked_at"):
            return (
                f"not enrolled {name}: this key was revoked on {known['revoked_at']} "
                f"(Flower never registers a key twice: give the node a new key pair)"
            )
        out = self._flwr("supernode", "register", str(pub), CONNECTION)
        if out.get("success"):
            entry = {
                "node_id": int(out["node-id"]),
                "key_sha256": digest,
                "enrolled_at": _now(),
                "revoked_at": None,
                "reason": None,
            }
            with self._lock:  # record each as soon as Flower has it: a crash loses none
                record["nodes"][name] = entry
                self._save(record)
            return f"enrolled {name}"
        error = str(out.get("error-message", ""))
        if not has_api_code(out, ApiCode.PUBLIC_KEY_ALREADY_IN_USE):
            raise EnrolmentError(f"could not enrol {pub}: {' '.join(error.split())[-300:]}")
        if same_key:
            return f"enrolled {name} (already)"
        return (
            f"enrolled {name} (already, but not by this server's record: deleting "
            f"{pub.name} will not revoke it; use `flwr supernode unregister`)"
        )

    # -- revocation (the ServerApp, every round) -----------------------------------------

    def revoke_removed(self) -> RevocationCheck:
        """Unregister every recorded node whose key left keys-dir (or changed).

        A node whose unregistration fails is still among ``revoked`` (the ServerApp must
        not send to it) and is tried again on the next call.

        Raises
        ------
        EnrolmentError
            keys-dir is missing: every node would count as revoked, which is more likely
            a mount or path problem than the operator's intent; nothing is unregistered.
        """
        if not self.keys_dir.is_dir():
            raise EnrolmentError(
                f"server.keys-dir: expected the folder of enrolled keys, got "
                f"{str(self.keys_dir)!r}, which is not a folder; nothing revoked"
            )
        with self._lock:
            record = self._load()
            present = {p.stem: key_digest(p) for p in self.keys_dir.glob("*.pub")}
            due: list[Revocation] = []
            for name, entry in sorted(record["nodes"].items()):
                if entry.get("revoked_at"):
                    continue
                if name not in present:
                    reason = f"{name}.pub was removed from keys-dir"
                elif present[name] is None:
                    reason = f"{name}.pub is no longer a readable key"
                elif present[name] != entry["key_sha256"]:
                    reason = f"{name}.pub now holds another key"
                else:
                    continue
                due.append(
                    Revocation(name=name, node_id=int(entry["node_id"]), reason=reason, at=_now())
                )
            new: list[Revocation] = []
            failed: list[tuple[Revocation, str]] = []
            for r in due:
                out = self._flwr("supernode", "unregister", str(r.node_id), CONNECTION)
                error = " ".join(str(out.get("error-message", "")).split())
                gone = has_api_code(out, ApiCode.NODE_NOT_FOUND)  # not found: already gone
                if out.get("success") or gone:
                    record["nodes"][r.name].update(revoked_at=r.at, reason=r.reason)
                    new.append(r)
                else:
                    failed.append((r, error[-300:]))
            if new:
                self._save(record)
            revoked = {
                int(e["node_id"]): Revocation(
                    name=n, node_id=int(e["node_id"]), reason=e["reason"], at=e["revoked_at"]
                )
                for n, e in record["nodes"].items()
                if e.get("revoked_at")
            }
        revoked.update({r.node_id: r for r, _ in failed})
        return RevocationCheck(new=new, failed=failed, revoked=revoked)

    # -- internals -----------------------------------------------------------------------

    def _flwr(self, *args: str) -> dict[str, Any]:
        """Run ``flwr ARGS --format json``; its JSON answer (``success`` false on error)."""
        try:
            out = subprocess.run(
                [venv_tool("flwr"), *args, "--format", "json"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=FLWR_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"success": False, "error-message": f"flwr {args[1]} timed out"}
        return flwr_json_answer(out.stdout, out.stderr)

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": FORMAT, "nodes": {}}
        except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested JSON
            raise EnrolmentError(
                f"{self.path}: unreadable enrolment record ({exc}); move it away and "
                "re-enrol the nodes with new keys"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise EnrolmentError(
                f"{self.path}: expected format {FORMAT!r}, got {data.get('format')!r}"
                if isinstance(data, dict)
                else f"{self.path}: expected a JSON object, got {type(data).__name__}"
            )
        nodes = data.get("nodes")
        bad = (
            ["nodes"]
            if not isinstance(nodes, dict)
            else [name for name, entry in nodes.items() if not _entry_ok(entry)]
        )
        if bad:
            raise EnrolmentError(
                f"{self.path}: malformed enrolment record (entry {bad[0]!r}); move it away "
                "and re-enrol the nodes with new keys"
            )
        return data

    def _save(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.path, record, mode=0o600)


def _entry_ok(entry: object) -> bool:
    """One node's record as :meth:`Enrolment._enrol` writes it."""
    if not isinstance(entry, dict):
        return False
    node_id = entry.get("node_id")
    return (
        isinstance(node_id, int)
        and not isinstance(node_id, bool)
        and isinstance(entry.get("key_sha256"), str)
        and isinstance(entry.get("enrolled_at"), str)
        and all(isinstance(entry.get(k), str | None) for k in ("revoked_at", "reason"))
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
