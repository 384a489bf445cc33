"""Class weights in a deployment (#17.5): ``[training] class-weights`` reaches the nodes in
the train request, a hostile or malformed value is refused by the node before training,
and configs without the key keep their checkpoint digest (a run resumes)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from fedguard.deploy_config import load_federation_config
from fedguard.errors import ConfigError
from fedguard.fl.loop import TrainRequest
from fedguard.transport.messages import decode_request, encode_train


def _message(content: object) -> object:
    # flwr.app.Message needs a running Flower app; decode_request only reads .content.
    return types.SimpleNamespace(content=content)


def _encoded(request: TrainRequest):  # type: ignore[no-untyped-def]
    weights = [np.ones((2, 3), dtype=np.float32)]
    return encode_train(weights=weights, request=request)


def test_class_weights_cross_the_wire() -> None:
    request = TrainRequest(
        server_round=2, local_epochs=1, batch_size=8, lr=0.1, class_weights=(0.05, 1.0)
    )
    assert decode_request(_message(_encoded(request)))[1] == request  # type: ignore[arg-type]
    plain = TrainRequest(server_round=2, local_epochs=1, batch_size=8, lr=0.1)
    content = _encoded(plain)
    assert "class-weights" not in content.config_records["request"]  # older nodes accept it
    assert decode_request(_message(content))[1].class_weights == ()  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [[5.0, 1.0], [0.0, 1.0], [float("nan"), 1.0], [1.0], "0.5,1"])
def test_a_hostile_servers_weights_are_refused_by_the_node(bad: object) -> None:
    content = _encoded(TrainRequest(server_round=2, local_epochs=1, batch_size=8, lr=0.1))
    content.config_records["request"]["class-weights"] = bad
    with pytest.raises(ValueError, match=r"^train request: class-weights: expected .*got "):
        decode_request(_message(content))  # type: ignore[arg-type]


def _toml(tmp_path: Path, training: str) -> Path:
    path = tmp_path / "federation.toml"
    path.write_text(
        f"[task]\nnum-classes = 2\ninput-shape = [20]\n[training]\n{training}\n"
        "[server]\ninsecure = true\n"
    )
    return path


def test_federation_key_validated_and_out_of_the_digest_when_unset(tmp_path: Path) -> None:
    plain = load_federation_config(_toml(tmp_path, ""))
    weighted = load_federation_config(_toml(tmp_path, "class-weights = [0.031, 1.0]"))
    assert weighted.training.class_weights == [0.031, 1.0]
    assert plain.training.class_weights is None
    assert plain.digest() != weighted.digest()  # a new training objective: a new run
    for bad in ("[2.0, 1.0]", "[0.5, 0.5, 1.0]", '"0.5,1"'):
        with pytest.raises(ConfigError, match=r"training.class-weights: expected "):
            load_federation_config(_toml(tmp_path, f"class-weights = {bad}"))
