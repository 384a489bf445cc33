"""#13.1: a deployed node's ``scaling = "dp"`` columns are scaled with a DP estimate that
is charged ONCE, to the ledger and to every training record, before any training on the
scaled data; the released statistics are stored and reused (post-processing). Real node
runtime, data, ledger, record index."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import numpy as np
import pytest

from fedguard.client.node import node_runtime
from fedguard.errors import BudgetExceededError, StateFileError
from fedguard.files import INDEX_FILE, LEDGER_FILE, SCALING_FILE
from fedguard.fl.loop import TrainRequest
from fedguard.privacy import Accountant, GaussianEvent
from fedguard.privacy.ledger import Ledger
from fedguard.privacy.record_budget import load_index, record_spend
from fedguard.task import build_model, get_weights

SCHEMA = """
[target]
column = "y"
labels = [0, 1]
[columns.rid]
type = "identifier"
[columns.v]
type = "numeric"
range = [0, 100]
scaling = "dp"
[columns.w]
type = "numeric"
range = [-1, 1]
"""
ROWS = 4000


def _node(tmp_path: Path) -> Path:
    csv = tmp_path / "records.csv"
    rng = np.random.default_rng(0)
    csv.write_text(
        "rid,v,w,y\n"
        + "".join(
            f"r{i},{rng.normal(70, 5):.3f},{rng.uniform(-1, 1):.3f},{i % 2}\n" for i in range(ROWS)
        )
    )
    (tmp_path / "features.toml").write_text(SCHEMA)
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[node]\nname = "n"\nserver = "127.0.0.1:9"\ninsecure = true\n'
        f'state-dir = "{tmp_path / "state"}"\n\n[data]\ndataset = "{csv}"\n'
        f'schema = "features.toml"\n'
    )
    return toml


def _request(run: str, server_round: int = 1) -> TrainRequest:
    return TrainRequest(
        server_round=server_round,
        local_epochs=1,
        batch_size=32,
        lr=0.1,
        max_grad_norm=1.0,
        total_rounds=2,
        federation="tabular",
        model="logreg",
        run_id=run,
    )


def _spent(runtime) -> float:
    entries = Ledger(path=runtime.state_dir / LEDGER_FILE).entries()
    records = runtime.records()
    index, warning = load_index(
        path=runtime.state_dir / INDEX_FILE, entries=entries, key_check=records.key_check
    )
    assert warning is None, warning
    spend = record_spend(index=index, warning=None, records=records, entries=entries)
    policy = runtime.config.privacy
    return spend.epsilon(method=policy.accountant, delta=policy.delta)


def test_the_dp_scaling_is_released_once_charged_first_and_reused(tmp_path: Path):
    toml = _node(tmp_path)
    node_runtime.cache_clear()
    runtime = node_runtime(str(toml))
    raw_v = runtime.x[:, 0].clone()
    assert float(raw_v.mean()) > 50  # loaded clipped, not scaled
    weights = get_weights(build_model(name="logreg", input_shape=(2,), num_classes=2))
    first = runtime.train(model_name="logreg", weights=weights, request=_request("run-a"))
    ledger = Ledger(path=runtime.state_dir / LEDGER_FILE)
    entries = ledger.entries()
    # The scaling release is its own ledger event, committed BEFORE the round's pending.
    assert [e.kind for e in entries] == ["pending", "commit", "pending", "commit"]
    scaling = entries[0]
    assert (scaling.sample_rate, scaling.steps, scaling.server_round) == (1.0, 1, 0)
    assert scaling.run is not None and scaling.run.startswith("dp-scaling/")
    z = float(scaling.noise_multiplier or 0)
    assert z > 0
    # The node now trains on scaled features: the released centre/scale were applied.
    stored = json.loads((runtime.state_dir / SCALING_FILE).read_text())
    assert stat.S_IMODE((runtime.state_dir / SCALING_FILE).stat().st_mode) == 0o600
    [released] = stored["released"].values()
    centre, scale = released["centre"][0], released["scale"][0]
    assert 65 < centre < 75 and 0 < scale < 10  # true: 70 and 5
    np.testing.assert_allclose(
        runtime.x[:, 0].numpy(), (raw_v.numpy().astype(np.float64) - centre) / scale, atol=1e-5
    )
    # Every training record is charged the release: the round's epsilon includes it.
    policy = runtime.config.privacy
    round_only = entries[2]
    event = GaussianEvent(
        noise_multiplier=float(round_only.noise_multiplier or 0),
        sample_rate=float(round_only.sample_rate or 0),
        steps=int(round_only.steps or 0),
    )
    alone = Accountant(method=policy.accountant)
    alone.compose(event)
    without = alone.get_privacy_spent(delta=policy.delta).epsilon
    assert first.epsilon is not None and first.epsilon > without * 1.01
    assert first.epsilon == pytest.approx(_spent(runtime))

    # A restarted node, another run: the stored statistics are reused, no new charge.
    node_runtime.cache_clear()
    again = node_runtime(str(toml))
    again.train(model_name="logreg", weights=weights, request=_request("run-b"))
    entries = ledger.entries()
    assert [e.run for e in entries].count(scaling.run) == 1
    assert len(entries) == 6
    np.testing.assert_array_equal(again.x.numpy(), runtime.x.numpy())


def test_a_scaling_release_over_the_budget_is_refused_before_anything_is_released(
    tmp_path: Path,
):
    toml = _node(tmp_path)
    text = toml.read_text() + "\n[privacy]\nmax-epsilon = 0.05\n"
    toml.write_text(text)
    node_runtime.cache_clear()
    runtime = node_runtime(str(toml))
    weights = get_weights(build_model(name="logreg", input_shape=(2,), num_classes=2))
    request = dataclasses.replace(_request("run-a"), total_rounds=50)
    with pytest.raises(BudgetExceededError, match="refused before any training"):
        runtime.train(model_name="logreg", weights=weights, request=request)
    # The run could not fit WITH the release counted: nothing released, nothing charged.
    assert not (runtime.state_dir / SCALING_FILE).exists()
    assert Ledger(path=runtime.state_dir / LEDGER_FILE).entries() == []


def test_a_deleted_or_damaged_statistics_file_never_gives_a_free_release(tmp_path: Path):
    toml = _node(tmp_path)
    node_runtime.cache_clear()
    runtime = node_runtime(str(toml))
    weights = get_weights(build_model(name="logreg", input_shape=(2,), num_classes=2))
    runtime.train(model_name="logreg", weights=weights, request=_request("run-a"))
    stats = runtime.state_dir / SCALING_FILE
    ledger = Ledger(path=runtime.state_dir / LEDGER_FILE)

    def releases() -> int:
        return sum(1 for e in ledger.entries() if (e.run or "").startswith("dp-scaling/"))

    # Damaged: refused in one line naming the file, nothing trained or charged.
    stats.write_text(json.dumps({"format": "fedguard-dp-scaling/1", "released": []}))
    node_runtime.cache_clear()
    damaged = node_runtime(str(toml))
    before = len(ledger.entries())
    with pytest.raises(StateFileError) as info:
        damaged.train(model_name="logreg", weights=weights, request=_request("run-b"))
    assert str(stats) in str(info.value) and "\n" not in str(info.value)
    assert len(ledger.entries()) == before
    # Deleted: the node releases again, and charges again.
    stats.unlink()
    node_runtime.cache_clear()
    node_runtime(str(toml)).train(model_name="logreg", weights=weights, request=_request("run-c"))
    assert releases() == 2
