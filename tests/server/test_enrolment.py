"""The enrolment record and its revocation rules, without a SuperLink (the real-process
test is tests/deploy/test_access.py): what counts as revoked, what is refused, and that
a node whose unregistration fails is still sent nothing."""

import json
from pathlib import Path

import pytest

from fedguard.deploy.certs import make_node_keys
from fedguard.deploy.flower import flower_env
from fedguard.errors import DataError
from fedguard.files import ENROLMENT_FILE
from fedguard.server.enrolment import FORMAT, Enrolment, EnrolmentError, key_digest


def _enrolment(tmp_path: Path, names: list[str], *, revoked: tuple[str, ...] = ()) -> Enrolment:
    """Keys in keys-dir and a record saying Flower registered them (ids 101, 102, ...)."""
    keys = tmp_path / "enrolled"
    nodes = {}
    for i, name in enumerate(names):
        pub = make_node_keys(name=name, out=tmp_path / "keys").public_key
        keys.mkdir(exist_ok=True)
        (keys / pub.name).write_bytes(pub.read_bytes())
        nodes[name] = {
            "node_id": 101 + i,
            "key_sha256": key_digest(pub),
            "enrolled_at": "2026-01-01T00:00:00+00:00",
            "revoked_at": "2026-01-02T00:00:00+00:00" if name in revoked else None,
            "reason": "node-x.pub was removed from keys-dir" if name in revoked else None,
        }
    state = tmp_path / "state"
    state.mkdir()
    (state / ENROLMENT_FILE).write_text(json.dumps({"format": FORMAT, "nodes": nodes}))
    home = state / "flwr"
    home.mkdir()
    # No connection to a SuperLink configured: every flwr call fails, at once, with why.
    (home / "config.toml").write_text('[superlink]\ndefault = "elsewhere"\n')
    return Enrolment(keys_dir=keys, state_dir=state, env=flower_env(home))


def test_nothing_removed_nothing_revoked(tmp_path: Path):
    check = _enrolment(tmp_path, ["node-a", "node-b"]).revoke_removed()
    assert (check.new, check.failed, check.revoked) == ([], [], {})


def test_earlier_revocations_stay_revoked(tmp_path: Path):
    enrolment = _enrolment(tmp_path, ["node-a", "node-x"], revoked=("node-x",))
    (enrolment.keys_dir / "node-x.pub").unlink()
    check = enrolment.revoke_removed()
    assert check.new == [] and list(check.revoked) == [102]
    assert check.revoked[102].name == "node-x"


def test_a_revoked_key_put_back_is_not_enrolled_again(tmp_path: Path):
    enrolment = _enrolment(tmp_path, ["node-a", "node-x"], revoked=("node-x",))
    line = enrolment._enrol(enrolment.keys_dir / "node-x.pub", enrolment._load())
    assert line.startswith("not enrolled node-x: this key was revoked on 2026-01-02")
    assert "new key pair" in line


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("delete", "node-b.pub was removed from keys-dir"),
        ("replace", "node-b.pub now holds another key"),
        ("garble", "node-b.pub is no longer a readable key"),
    ],
)
def test_a_key_gone_or_changed_is_revoked_even_when_unregistering_fails(
    tmp_path: Path, change: str, reason: str
):
    enrolment = _enrolment(tmp_path, ["node-a", "node-b"])
    pub = enrolment.keys_dir / "node-b.pub"
    if change == "delete":
        pub.unlink()
    elif change == "replace":
        pub.write_bytes(make_node_keys(name="node-b", out=tmp_path / "new").public_key.read_bytes())
    else:
        pub.write_bytes(b"\xff\xfe")
    check = enrolment.revoke_removed()
    # Flower could not be asked: unregistering failed, so it is retried, yet node-b is out.
    assert check.new == []
    ((failed, error),) = check.failed
    assert (failed.name, failed.node_id, failed.reason) == ("node-b", 102, reason)
    assert "fedguard" in error  # flwr's own reason: no connection of that name
    assert list(check.revoked) == [102]
    record = json.loads((tmp_path / "state" / ENROLMENT_FILE).read_text())
    assert record["nodes"]["node-b"]["revoked_at"] is None  # not until Flower confirms


def test_a_missing_keys_dir_revokes_nobody(tmp_path: Path):
    enrolment = _enrolment(tmp_path, ["node-a"])
    for pub in enrolment.keys_dir.iterdir():
        pub.unlink()
    enrolment.keys_dir.rmdir()
    with pytest.raises(EnrolmentError, match=r"server\.keys-dir: expected the folder"):
        enrolment.revoke_removed()


def test_a_file_that_is_not_a_node_key_is_refused_by_name(tmp_path: Path):
    enrolment = _enrolment(tmp_path, ["node-a"])
    (enrolment.keys_dir / "intruder.pub").write_text("ssh-rsa AAAA intruder\n")
    with pytest.raises(DataError, match=r"intruder\.pub: expected an EC P-384 public key"):
        enrolment.enrol_all()
