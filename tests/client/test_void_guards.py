"""#14.4, the other side: nothing that may have left the node is ever given back, and
nothing given back ever leaves. Real node runtime, data, ledger and journal (demo node)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from harness.federation_files import write_federation

from fedguard.client.node import node_runtime
from fedguard.client.released import read_journal
from fedguard.client.secure import NodeSecAgg
from fedguard.errors import PolicyRefusalError
from fedguard.files import LEDGER_FILE, RELEASED_FILE, SESSION_FILE, UPDATE_FILE
from fedguard.fl.loop import TrainRequest
from fedguard.privacy.ledger import Ledger
from fedguard.privacy.secagg import Setup, make_params
from fedguard.task import build_model, get_weights

WEIGHTS = get_weights(build_model(name="logreg", input_shape=(1, 8, 8), num_classes=10))
REQUEST = TrainRequest(
    server_round=1,
    local_epochs=1,
    batch_size=32,
    lr=0.1,
    max_grad_norm=0.5,
    total_rounds=3,
    federation="demo",
    model="logreg",
    run_id="void-guards",
)


@pytest.fixture
def runtime(tmp_path: Path):
    layout = write_federation(out=tmp_path / "demo", nodes=3, rounds=3)
    node_runtime.cache_clear()
    return node_runtime(str(layout.nodes[0]))


def _kinds(runtime) -> list[str]:
    return [e.kind for e in Ledger(path=runtime.state_dir / LEDGER_FILE).entries()]


def _train(runtime, server_round: int, *, secure: bool):
    request = dataclasses.replace(REQUEST, server_round=server_round)
    result = runtime.train(model_name="logreg", weights=WEIGHTS, request=request, secure=secure)
    return request, result


def _setup(server_round: int) -> Setup:
    params = make_params(
        run="demo",
        server_round=server_round,
        cohort=3,
        clip_range=1.0,
        bits=24,
        weight_cap=1,
        dropout_tolerance=0.34,
        graph_seed=1,
    )
    # The demo's nodes by slot: this node (node-a) is slot 1.
    params = dataclasses.replace(params, names=("node-a", "node-b", "node-c"))
    return Setup(params=params, slot=1)


def test_a_held_update_sent_alone_later_is_never_given_back(runtime):
    """The attack: train round 1 for a secure sum, ask the very same request again without
    one (the stored reply goes out alone), then move on: round 1 must stay spent."""
    _train(runtime, 1, secure=True)
    assert read_journal(runtime.state_dir / RELEASED_FILE).held is not None
    _train(runtime, 1, secure=False)  # the stored reply goes out in the clear
    assert read_journal(runtime.state_dir / RELEASED_FILE).held is None
    _train(runtime, 2, secure=False)
    assert _kinds(runtime) == ["pending", "commit", "pending", "commit"]


def test_a_re_asked_secure_round_is_answered_from_its_stored_reply_not_given_back(runtime):
    _, first = _train(runtime, 1, secure=True)
    _, again = _train(runtime, 1, secure=True)
    for a, b in zip(first.weights, again.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert _kinds(runtime) == ["pending", "commit"]


def test_a_given_back_update_is_never_masked_afterwards(runtime):
    request, result = _train(runtime, 1, secure=True)
    secure = NodeSecAgg(config=runtime.config, examples=1)
    update = [w - g for w, g in zip(result.weights, WEIGHTS, strict=True)]
    secure.begin(setup=_setup(1), update=update, request=request)  # keys advertised
    assert (runtime.state_dir / UPDATE_FILE).exists()
    _train(runtime, 2, secure=True)  # round 1's session is over, nothing was masked
    assert _kinds(runtime) == ["pending", "commit", "void", "pending", "commit"]
    assert not (runtime.state_dir / UPDATE_FILE).exists()
    assert not (runtime.state_dir / SESSION_FILE).exists()
    journal = read_journal(runtime.state_dir / RELEASED_FILE)
    assert journal.session is not None and journal.session.abandoned
    # The server asks for round 1's update again, in the same session or a new one.
    for setup in (_setup(1), _setup(3)):
        with pytest.raises(PolicyRefusalError, match="given back"):
            secure.begin(setup=setup, update=update, request=request)
    # Asked round 1 again, the node trains it anew (and charges it anew): a new update.
    _, retrained = _train(runtime, 1, secure=True)
    assert _kinds(runtime)[-2:] == ["pending", "commit"]
    assert any(
        not np.array_equal(a, b) for a, b in zip(result.weights, retrained.weights, strict=True)
    )
