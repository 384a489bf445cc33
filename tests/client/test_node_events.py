"""A node says what it does (#17.2): each request, its plan and noise, epsilon before and
after (delta, accountant) and each refusal, as whole lines in its state folder's
node-events.log (0600), written by the real node runtime (real Opacus, real ledger)."""

import stat
from pathlib import Path

import pytest
from harness.federation_files import write_federation

from fedguard.client.events import finished_run, follow
from fedguard.client.node import node_runtime
from fedguard.errors import PolicyRefusalError
from fedguard.files import EVENTS_FILE, LEDGER_FILE
from fedguard.fl.loop import TrainRequest
from fedguard.privacy.ledger import Ledger
from fedguard.task import build_model, get_weights

WEIGHTS = get_weights(build_model(name="logreg", input_shape=(1, 8, 8), num_classes=10))


def _request(server_round: int, *, epochs: int = 1, rounds: int = 2) -> TrainRequest:
    return TrainRequest(
        server_round=server_round, local_epochs=epochs, batch_size=64, lr=0.5,
        max_grad_norm=0.5, total_rounds=rounds, federation="demo", model="logreg",
        run_id="run-a",
    )  # fmt: skip


def test_every_round_and_refusal_is_a_line_in_the_node_log(tmp_path: Path):
    toml = write_federation(out=tmp_path / "demo", nodes=2, rounds=2).nodes[0]
    node_runtime.cache_clear()
    runtime = node_runtime(str(toml))
    log = runtime.state_dir / EVENTS_FILE
    epsilons = [
        runtime.train(model_name="logreg", weights=WEIGHTS, request=_request(r)).epsilon
        for r in (1, 2)
    ]
    lines, offset = follow(log, 0)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert len(lines) == 4 and offset == log.stat().st_size
    assert "run 'run-a' round 1 of 2: request: 1 local epochs, batch 64, lr 0.5" in lines[0]
    entries = [e for e in Ledger(path=runtime.state_dir / LEDGER_FILE).entries()]
    noise = entries[0].noise_multiplier
    trained = f"round 1: trained: noise multiplier {noise:.4g} (the run's plan: 2 rounds, epsilon "
    assert trained in lines[1]
    # The plan's epsilon after its last round is what round 2 reached.
    assert f"epsilon {epsilons[1]:.4g} after its last)" in lines[1]
    assert f"epsilon 0 -> {epsilons[0]:.4g} (delta 1e-05, accountant rdp" in lines[1]
    assert f"epsilon {epsilons[0]:.4g} -> {epsilons[1]:.4g}" in lines[3]
    assert finished_run(lines[:2]) is None
    assert finished_run(lines) == "run-a"  # round 2 of 2: the run is complete

    with pytest.raises(PolicyRefusalError):
        runtime.train(model_name="logreg", weights=WEIGHTS, request=_request(3, epochs=99))
    more, _ = follow(log, offset)
    assert "round 3 of 2: request: 99 local epochs" in more[0]
    assert "round 3: refused: local-epochs 99 > this node's" in more[1]
    assert finished_run(lines + more) is None  # a refusal is the newest word
