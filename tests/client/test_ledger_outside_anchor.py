"""`fedguard ledger verify --against metrics.jsonl` (issue #13 point 5): the server's record
of a node's receipts names a ledger rewritten whole (hashes recomputed, which plain
`verify` cannot see) or truncated; and receipts carry a keyed data set fingerprint.

A demo node trains three real rounds; the server's ``metrics.jsonl`` is written as the
deployed server writes it (each row: every node's newest receipt).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from harness.federation_files import write_federation

from fedguard.cli import main
from fedguard.client.node import node_runtime
from fedguard.files import LEDGER_FILE
from fedguard.fl.loop import TrainRequest
from fedguard.privacy.ledger import Ledger, canonical_bytes
from fedguard.task import build_model, get_weights

WEIGHTS = get_weights(build_model(name="logreg", input_shape=(1, 8, 8), num_classes=10))


def request(r: int) -> TrainRequest:
    return TrainRequest(
        server_round=r,
        local_epochs=1,
        batch_size=64,
        lr=0.5,
        max_grad_norm=0.5,
        total_rounds=3,
        federation="demo",
        model="logreg",
        run_id="demo/anchor",
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the node's state folder, the server's metrics.jsonl) after three rounds."""
    layout = write_federation(out=tmp_path_factory.mktemp("anchor") / "demo", nodes=2, rounds=3)
    node_runtime.cache_clear()
    runtime = node_runtime(str(layout.nodes[0]))
    rows, receipts = [], {}
    for r in (1, 2, 3):
        runtime.train(model_name="logreg", weights=WEIGHTS, request=request(r))
        receipt = runtime.receipt(request(r))
        assert receipt is not None
        receipts["node-a"] = dataclasses.asdict(receipt)
        rows.append({"round": r, "receipts": dict(receipts)})
    metrics = layout.root / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return runtime.state_dir, metrics


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str


@pytest.fixture
def fedguard(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """The `fedguard` command line, in this process."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return Result(returncode=code, stdout=capsys.readouterr().out)

    return run


def copy_state(state: Path, tmp_path: Path, lines: list[str]) -> Path:
    out = tmp_path / "state"
    out.mkdir()
    (out / LEDGER_FILE).write_text("".join(line + "\n" for line in lines))
    return out


def rechained(objs: list[dict]) -> list[str]:
    """What someone who can write the file does: renumber and recompute every hash."""
    out, prev = [], "0" * 64
    for seq, obj in enumerate(objs):
        obj = {**obj, "seq": seq, "prev": prev}
        if obj["kind"] == "commit":
            obj["pending_seq"] = seq - 1
            obj["pending"] = json.loads(out[-1])["hash"]
        obj.pop("hash")
        obj["hash"] = hashlib.sha256(canonical_bytes(obj)).hexdigest()
        out.append(canonical_bytes(obj).decode())
        prev = hashlib.sha256(canonical_bytes(obj)).hexdigest()
    return out


def test_the_intact_ledger_matches_the_servers_receipts(node: tuple[Path, Path], fedguard):
    state, metrics = node
    result = fedguard("ledger", "verify", "--state", str(state), "--against", str(metrics))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the 3 receipts" in result.stdout


def test_a_rewritten_ledger_passes_verify_but_not_verify_against(
    node: tuple[Path, Path], tmp_path: Path, fedguard
):
    state, metrics = node
    objs = [json.loads(x) for x in (state / LEDGER_FILE).read_text().splitlines()]
    # Round 1 (entries 0 and 1) erased, the rest renumbered and re-hashed: a chain that
    # verifies, with less spent than the node released.
    forged = copy_state(state, tmp_path, rechained(objs[2:]))
    assert Ledger(path=forged / LEDGER_FILE).verify().ok
    assert fedguard("ledger", "verify", "--state", str(forged)).returncode == 0
    result = fedguard("ledger", "verify", "--state", str(forged), "--against", str(metrics))
    assert result.returncode == 1
    named = result.stdout.splitlines()
    assert any("round 1 (entry 0)" in x and "rewritten" in x for x in named), named
    assert any("round 3 (entry 4)" in x and "missing" in x for x in named), named


def test_a_truncated_ledger_is_named(node: tuple[Path, Path], tmp_path: Path, fedguard):
    state, metrics = node
    lines = (state / LEDGER_FILE).read_text().splitlines()
    cut = copy_state(state, tmp_path, lines[:3])  # round 3's entries (and a commit) gone
    assert Ledger(path=cut / LEDGER_FILE).verify().ok  # the newest lines: undetectable
    result = fedguard("ledger", "verify", "--state", str(cut), "--against", str(metrics))
    assert result.returncode == 1
    (line,) = result.stdout.splitlines()
    assert "metrics.jsonl line 3: run 'demo/anchor' round 3 (entry 4): missing" in line


def test_receipts_carry_a_keyed_fingerprint_that_confirms_no_guess(node: tuple[Path, Path]):
    state, metrics = node
    receipt = json.loads(metrics.read_text().splitlines()[-1])["receipts"]["node-a"]
    fp = receipt["dataset_fingerprint"]
    assert fp.startswith("hmac:") and len(fp) == 5 + 64
    # An operator who knows every row tries the plain fingerprints the node used to send
    # (sha256 of the training arrays) and of the sorted record keys: none matches.
    rt = node_runtime(str(state.parent / "node.toml"))
    x, y = rt.x.numpy(), rt.y.numpy()
    plain = hashlib.sha256()
    for a in (x, y):
        plain.update(str((a.dtype.str, a.shape)).encode())
        plain.update(np.ascontiguousarray(a).tobytes())
    keys = np.sort(rt.record_keys.view(f"S{rt.record_keys.shape[1]}").ravel()).tobytes()
    guesses = {plain.hexdigest(), hashlib.sha256(keys).hexdigest()}
    assert fp.removeprefix("hmac:") not in guesses
    assert "sha256:" not in (state / LEDGER_FILE).read_text()
