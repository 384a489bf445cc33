"""Attacks on a node's lifetime budget (issue #13 points 2-5): each one tried on a real
demo node (real Opacus, real ledger, real files) and each one must fail.

The node spends its whole lifetime budget (max-epsilon 3) in one run on its records; then
the same records come back rearranged (reversed, reshuffled as a new ``[data] seed``
would, one row removed, rows appended), or a state file is deleted or damaged, or the
server keeps asking: no arrangement of the same records may train again.
"""

from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from harness.federation_files import write_federation

from fedguard.client.node import NodeRuntime, node_runtime
from fedguard.client.node_records import fallback_record_keys
from fedguard.errors import BudgetExceededError, PolicyRefusalError, StateFileError
from fedguard.files import LEDGER_FILE, PLANS_FILE
from fedguard.fl.loop import TrainRequest
from fedguard.privacy.ledger import Ledger
from fedguard.task import build_model, get_weights

WEIGHTS = get_weights(build_model(name="logreg", input_shape=(1, 8, 8), num_classes=10))


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    layout = write_federation(out=tmp_path / "demo", nodes=2, rounds=3)
    node_runtime.cache_clear()
    return layout.nodes[0]


def request(run: str, server_round: int, rounds: int = 3, lr: float = 0.5) -> TrainRequest:
    return TrainRequest(
        server_round=server_round,
        local_epochs=1,
        batch_size=64,
        lr=lr,
        max_grad_norm=0.5,
        total_rounds=rounds,
        federation="demo",
        model="logreg",
        run_id=run,
    )


def on_rows(base: NodeRuntime, rows: torch.Tensor, extra: int = 0) -> NodeRuntime:
    """The node, with its data file replaced by its rows ``rows`` (in that order) and
    ``extra`` new records appended (same config, same state folder)."""
    x, y, keys = base.x[rows], base.y[rows], base.record_keys[rows.numpy()]
    if extra:
        new_x = torch.rand((extra, *x.shape[1:]), generator=torch.Generator().manual_seed(3))
        new_y = y[:extra]
        x, y = torch.cat([x, new_x]), torch.cat([y, new_y])
        keys = np.concatenate([keys, fallback_record_keys(new_x.numpy(), new_y.numpy())])
    return dataclasses.replace(base, x=x, y=y, _trainers={}, record_keys=keys)


def spend_everything(runtime: NodeRuntime) -> float:
    out = 0.0
    for r in (1, 2, 3):
        result = runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", r))
        eps = result.epsilon
        assert eps is not None
        out = eps
    assert 0.97 * 3.0 <= out <= 3.0  # the run spent the node's lifetime budget
    return out


def rearranged(base: NodeRuntime, how: str) -> NodeRuntime:
    n = len(base.y)
    if how == "reversed":
        return on_rows(base, torch.arange(n - 1, -1, -1))
    if how == "reshuffled":  # what another [data] seed or a copied, re-sorted file gives
        return on_rows(base, torch.from_numpy(np.random.default_rng(1).permutation(n)))
    if how == "one-row-removed":
        return on_rows(base, torch.arange(1, n))
    if how == "rows-appended":
        return on_rows(base, torch.arange(n), extra=8)
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["reversed", "reshuffled", "one-row-removed", "rows-appended"])
def test_the_same_records_rearranged_get_no_fresh_budget(toml: Path, how: str):
    base = node_runtime(str(toml))
    spend_everything(base)
    again = rearranged(base, how)
    with pytest.raises(BudgetExceededError, match="refused"):
        again.train(model_name="logreg", weights=WEIGHTS, request=request("run-b", 1, rounds=1))


@pytest.mark.parametrize(
    "deleted",
    [("accountant-*.json",), ("record-index*", PLANS_FILE), ("node-secret.key",)],
    ids=["accountant", "index-and-plans", "node-secret"],
)
def test_deleting_state_files_frees_nothing(toml: Path, deleted: tuple[str, ...]):
    base = node_runtime(str(toml))
    spend_everything(base)
    for pattern in deleted:
        for path in base.state_dir.glob(pattern):
            path.unlink()
    node_runtime.cache_clear()
    again = node_runtime(str(toml))
    with pytest.raises(BudgetExceededError, match="refused"):
        again.train(model_name="logreg", weights=WEIGHTS, request=request("run-b", 1, rounds=1))


def _snapshot(state: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(state)): p.read_bytes()
        for p in state.rglob("*")
        if p.is_file() and p.name not in ("budget.lock", "node-events.log")  # (#17.2)
    }


def test_a_round_whose_ledger_line_was_edited_is_refused_and_charged_nothing(toml: Path):
    runtime = node_runtime(str(toml))
    runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 1))
    ledger = runtime.state_dir / LEDGER_FILE
    ledger.write_text(ledger.read_text().replace('"server_round":1', '"server_round":7', 1))
    before = _snapshot(runtime.state_dir)
    for r in (2, 3):  # every round refused, and nothing written: not the accountant either
        with pytest.raises(StateFileError, match=r"ledger"):
            runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", r))
        assert _snapshot(runtime.state_dir) == before


def test_a_round_whose_ledger_entry_cannot_be_written_is_neither_trained_nor_charged(
    toml: Path, monkeypatch: pytest.MonkeyPatch
):
    runtime = node_runtime(str(toml))
    runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 1))
    before = _snapshot(runtime.state_dir)

    def full_disk(path: object, text: str, *, mode: int = 0o644) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("fedguard.privacy.ledger.atomic_write_text", full_disk)
    trained = []
    real_run = runtime._trainers["logreg"].run
    monkeypatch.setattr(
        runtime._trainers["logreg"], "run", lambda **kw: trained.append(1) or real_run(**kw)
    )
    with pytest.raises(StateFileError, match=r"No space left on device"):
        runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 2))
    assert trained == [] and _snapshot(runtime.state_dir) == before
    monkeypatch.undo()
    # Once the disk has room the round trains, and the ledger holds exactly what was spent.
    result = runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 2))
    pending = [e for e in Ledger(path=ledger_path(runtime)).entries() if e.kind == "pending"]
    assert [e.server_round for e in pending] == [1, 2]
    assert result.epsilon == pytest.approx(pending[-1].epsilon_after)


def ledger_path(runtime: NodeRuntime) -> Path:
    return runtime.state_dir / LEDGER_FILE


def test_a_server_asking_past_the_planned_rounds_is_refused(toml: Path):
    # Lifetime 3, 1 per run: what stops round 3 here is the plan, not the lifetime budget.
    toml.write_text(toml.read_text().replace("[privacy]\n", "[privacy]\nrun-epsilon = 1.0\n"))
    node_runtime.cache_clear()
    runtime = node_runtime(str(toml))
    for r in (1, 2):
        runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", r, 2))
    with pytest.raises(PolicyRefusalError, match=r"round 3 refused: .*planned 2 rounds"):
        runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 3, 2))
    with pytest.raises(PolicyRefusalError, match=r"total-rounds 5 differs from the 2 rounds"):
        runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 3, 5))
    # Asking round 2 again with other weights (a new request, not a replay) is a third round.
    with pytest.raises(PolicyRefusalError, match=r"already trained 2 rounds"):
        runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 2, 2, lr=0.1))
    pending = [e for e in Ledger(path=ledger_path(runtime)).entries() if e.kind == "pending"]
    assert len(pending) == 2


def test_a_run_cannot_pass_run_epsilon_even_with_a_tampered_plan(toml: Path):
    toml.write_text(toml.read_text().replace("[privacy]\n", "[privacy]\nrun-epsilon = 1.0\n"))
    node_runtime.cache_clear()
    runtime = node_runtime(str(toml))
    runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 1))
    # Someone lowers the run's planned noise (the plan file is only a record of a choice).
    plans = runtime.state_dir / PLANS_FILE
    data = json.loads(plans.read_text())
    for plan in data.values():
        plan["noise_multiplier"] = max(0.3, 0.6 * plan["noise_multiplier"])
    plans.write_text(json.dumps(data))
    with pytest.raises(BudgetExceededError, match=r"run-epsilon 1"):
        runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 2))
    eps = [e.epsilon_after for e in Ledger(path=ledger_path(runtime)).entries() if e.run]
    assert len(eps) == 1 and eps[0] is not None and eps[0] <= 1.0
