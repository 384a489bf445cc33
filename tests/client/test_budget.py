"""A node's lifetime budget per data set, across federation runs (fedguard.client.budget)."""

from pathlib import Path

import pytest
from harness.federation_files import write_federation

from fedguard.client.node import node_runtime
from fedguard.errors import BudgetExceededError
from fedguard.files import LEDGER_FILE, PLANS_FILE
from fedguard.fl.loop import TrainRequest
from fedguard.privacy.ledger import Ledger
from fedguard.task import build_model, get_weights

WEIGHTS = get_weights(build_model(name="logreg", input_shape=(1, 8, 8), num_classes=10))


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A demo node's config with a lifetime budget of 3 and at most 1.5 per run."""
    layout = write_federation(out=tmp_path / "demo", nodes=2, rounds=3)
    toml = layout.nodes[0]
    text = toml.read_text().replace("[privacy]\n", "[privacy]\nrun-epsilon = 1.5\n")
    toml.write_text(text)
    node_runtime.cache_clear()
    return toml


def request(run: str, server_round: int, rounds: int = 3) -> TrainRequest:
    return TrainRequest(
        server_round=server_round,
        local_epochs=1,
        batch_size=64,
        lr=0.5,
        max_grad_norm=0.5,
        total_rounds=rounds,
        federation="demo",
        model="logreg",
        run_id=run,
    )


def train_run(toml: Path, run: str, rounds: int = 3) -> list[float]:
    runtime = node_runtime(str(toml))
    out = []
    for r in range(1, rounds + 1):
        result = runtime.train(
            model_name="logreg", weights=WEIGHTS, request=request(run, r, rounds)
        )
        out.append(result.epsilon)
    return out


def test_a_second_run_continues_from_what_the_first_spent(node: Path):
    first = train_run(node, "run-a")
    assert 0.97 * 1.5 <= first[-1] <= 1.5  # the run alone is capped by run-epsilon
    second = train_run(node, "run-b")
    # The second run starts where the first ended and its end stays within the lifetime.
    assert second[0] > first[-1]
    assert first[-1] < second[-1] <= 3.0
    state = node_runtime(str(node)).state_dir
    ledger = Ledger(path=state / LEDGER_FILE)
    assert ledger.verify().ok and len(ledger.committed()) == 6
    fingerprint = node_runtime(str(node)).fingerprint
    assert ledger.spent(dataset_fingerprint=fingerprint) == pytest.approx(second[-1])


def test_a_run_that_cannot_fit_is_refused_before_training_with_the_figures(node: Path):
    train_run(node, "run-a")
    train_run(node, "run-b")
    runtime = node_runtime(str(node))
    before_ledger = (runtime.state_dir / LEDGER_FILE).read_bytes()
    before_accountant = runtime.accountant_store().path.read_bytes()
    spent = runtime.accountant_store().load(method="rdp").get_privacy_spent(delta=1e-5).epsilon
    # 3000 more rounds on what is left: more noise than the node's max-noise-multiplier
    # would be needed, so the run is refused, and nothing is trained or written.
    with pytest.raises(BudgetExceededError) as info:
        runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-c", 1, 3000))
    message = str(info.value)
    assert "run 'run-c' refused before any training" in message
    assert f"spent epsilon {spent:.4f}" in message and "lifetime budget 3" in message
    assert "3000 more rounds" in message and "max-noise-multiplier 10" in message
    assert (runtime.state_dir / LEDGER_FILE).read_bytes() == before_ledger
    assert runtime.accountant_store().path.read_bytes() == before_accountant


def test_a_spent_budget_refuses_even_one_more_round(tmp_path: Path):
    layout = write_federation(out=tmp_path / "demo", nodes=2, rounds=3)
    toml = layout.nodes[0]
    node_runtime.cache_clear()
    train_run(toml, "run-a")  # no run cap: the first run spends the lifetime budget
    with pytest.raises(BudgetExceededError, match="refused before any training"):
        node_runtime(str(toml)).train(
            model_name="logreg", weights=WEIGHTS, request=request("run-b", 1, 1)
        )


def test_the_plan_survives_a_restart_and_keeps_the_noise(node: Path):
    runtime = node_runtime(str(node))
    first = runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 1))
    node_runtime.cache_clear()  # a new process: the plan is read back from disk
    again = node_runtime(str(node))
    second = again.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 2))
    assert second.noise_multiplier == first.noise_multiplier
    assert (again.state_dir / PLANS_FILE).stat().st_mode & 0o777 == 0o600


def test_another_data_set_has_its_own_budget(node: Path, tmp_path: Path):
    train_run(node, "run-a")
    other = tmp_path / "other.toml"
    other.write_text(node.read_text().replace("partition-id = 0", "partition-id = 1"))
    runtime = node_runtime(str(other))
    assert runtime.accountant_store().path != node_runtime(str(node)).accountant_store().path
    fresh = runtime.train(model_name="logreg", weights=WEIGHTS, request=request("run-a", 1))
    assert fresh.epsilon is not None and fresh.epsilon < 1.0
