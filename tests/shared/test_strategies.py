"""Server strategies selectable in deployment: FedAdam (server side) and FedProx (client side)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedguard.deploy_config import FederationConfig, load_federation_config
from fedguard.errors import ConfigError
from fedguard.fl.loop import TrainRequest
from fedguard.fl.strategies import STRATEGIES, FedAdam, FedAvgM, ServerOptimizer, server_optimizer
from fedguard.privacy import Accountant, DPTrainer
from fedguard.task import train_plain
from fedguard.transport.messages import decode_request, encode_train

pytestmark = pytest.mark.filterwarnings(
    "ignore:Full backward hook is firing:UserWarning",
    "ignore:Optimal order is the:UserWarning",
)


def make_server_optimizer(cfg: FederationConfig) -> ServerOptimizer:
    f = cfg.federation
    return server_optimizer(
        strategy=f.strategy, server_lr=f.server_lr, server_momentum=f.server_momentum
    )


# --- FedAdam ---------------------------------------------------------------------------


def test_fedadam_first_step_matches_hand_computation():
    opt = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    w = [np.array([1.0, -2.0], dtype=np.float32)]
    d = [np.array([0.5, -0.25], dtype=np.float32)]
    m = 0.1 * d[0]
    v = 0.01 * d[0] ** 2
    expected = w[0] + 0.1 * m / (np.sqrt(v) + 1e-3)
    (new,) = opt.apply(weights=w, mean_update=d)
    np.testing.assert_allclose(new, expected, rtol=1e-6)
    assert new.dtype == np.float32


def _quadratic_update(w: np.ndarray, optimum: np.ndarray) -> np.ndarray:
    # A client's update on f(w) = ||w - optimum||^2 / 2: one local step of lr 0.5.
    return (-0.5 * (w - optimum)).astype(np.float32)


def test_fedadam_moves_toward_the_optimum_and_state_round_trips():
    optimum = np.array([3.0, -1.0, 0.5], dtype=np.float32)
    w = [np.zeros(3, dtype=np.float32)]
    opt = FedAdam(server_lr=0.1)
    start = float(np.linalg.norm(w[0] - optimum))
    for _ in range(30):
        w = opt.apply(weights=w, mean_update=[_quadratic_update(w[0], optimum)])
    assert float(np.linalg.norm(w[0] - optimum)) < 0.5 * start

    state = opt.state()
    assert len(state) == 2  # m then v, one array each
    restored = FedAdam(server_lr=0.1)
    restored.load_state(state)
    update = [_quadratic_update(w[0], optimum)]
    a = opt.apply(weights=w, mean_update=update)
    b = restored.apply(weights=w, mean_update=update)
    np.testing.assert_array_equal(a[0], b[0])
    assert all(np.array_equal(x, y) for x, y in zip(opt.state(), restored.state(), strict=True))


def test_fedadam_refuses_a_malformed_state():
    with pytest.raises(ValueError, match="FedAdam state"):
        FedAdam().load_state([np.zeros(2), np.zeros(2), np.zeros(2)])
    empty = FedAdam()
    empty.load_state([])
    assert empty.state() == []


# --- FedProx ---------------------------------------------------------------------------


def _data(seed: int = 0, n: int = 120, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, (x @ torch.randn(d, generator=g) > 0).long()


def _model() -> nn.Module:
    torch.manual_seed(0)  # identical initial weights in every call
    return nn.Linear(5, 2)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _plain_drift(prox_mu: float) -> float:
    model = _model()
    start = _flat(model)
    x, y = _data()
    train_plain(
        model=model,
        x=x,
        y=y,
        epochs=5,
        batch_size=16,
        lr=0.5,
        generator=torch.Generator().manual_seed(1),
        prox_mu=prox_mu,
    )
    return float(torch.linalg.vector_norm(_flat(model) - start))


def test_train_plain_prox_term_keeps_weights_near_the_start():
    free, prox = _plain_drift(0.0), _plain_drift(1.0)
    assert prox < 0.7 * free


def _dp_drift(prox_mu: float) -> float:
    trainer = DPTrainer(model=_model())
    start = _flat(trainer.module)
    x, y = _data()
    trainer.train(
        x=x,
        y=y,
        epochs=5,
        batch_size=16,
        lr=0.5,
        noise_multiplier=0.5,
        max_grad_norm=1.0,
        accountant=Accountant(method="rdp"),
        generator=torch.Generator().manual_seed(1),
        prox_mu=prox_mu,
    )
    return float(torch.linalg.vector_norm(_flat(trainer.module) - start))


def test_dp_trainer_prox_term_keeps_weights_near_the_start():
    free, prox = _dp_drift(0.0), _dp_drift(1.0)
    assert prox < 0.7 * free


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_prox_mu_must_be_finite_and_non_negative(bad: float):
    with pytest.raises(ConfigError, match="prox-mu"):
        TrainRequest(server_round=1, local_epochs=1, batch_size=8, lr=0.1, prox_mu=bad)
    x, y = _data()
    with pytest.raises(ConfigError, match="prox-mu"):
        train_plain(
            model=_model(),
            x=x,
            y=y,
            epochs=1,
            batch_size=16,
            lr=0.1,
            generator=torch.Generator(),
            prox_mu=bad,
        )


def _message(content):
    # flwr.app.Message needs a running Flower app (TaskIdentity.run_id); decode_request
    # only reads .content.
    return types.SimpleNamespace(content=content)


def test_prox_mu_crosses_the_wire_and_defaults_to_zero():
    weights = [np.ones((2, 3), dtype=np.float32)]
    request = TrainRequest(server_round=2, local_epochs=1, batch_size=8, lr=0.1, prox_mu=0.25)
    content = encode_train(weights=weights, request=request)
    got_weights, got = decode_request(_message(content))
    assert got == request
    np.testing.assert_array_equal(got_weights[0], weights[0])

    # A request from a server without FedProx support has no "prox-mu" key.
    old = encode_train(
        weights=weights,
        request=TrainRequest(server_round=2, local_epochs=1, batch_size=8, lr=0.1),
    )
    del old.config_records["request"]["prox-mu"]
    assert decode_request(_message(old))[1].prox_mu == 0.0


# --- deployment config ---------------------------------------------------------------------


def _federation_toml(tmp_path: Path, federation: str) -> Path:
    path = tmp_path / "federation.toml"
    path.write_text(f"[federation]\n{federation}\n[server]\ninsecure = true\n")
    return path


def test_fedprox_config_loads_and_selects_its_optimizer(tmp_path: Path):
    cfg = load_federation_config(
        _federation_toml(tmp_path, 'strategy = "fedprox"\nprox-mu = 0.1\nserver-momentum = 0.9')
    )
    assert cfg.federation.strategy == "fedprox"
    assert cfg.federation.prox_mu == 0.1
    server = make_server_optimizer(cfg)
    assert isinstance(server, FedAvgM) and server.server_momentum == 0.0


def test_fedadam_config_selects_fedadam(tmp_path: Path):
    cfg = load_federation_config(
        _federation_toml(tmp_path, 'strategy = "fedadam"\nserver-lr = 0.02')
    )
    server = make_server_optimizer(cfg)
    assert isinstance(server, FedAdam) and server.server_lr == 0.02


def test_prox_mu_only_enters_the_digest_with_fedprox(tmp_path: Path):
    plain = load_federation_config(_federation_toml(tmp_path, 'strategy = "fedavg"'))
    other_mu = load_federation_config(
        _federation_toml(tmp_path, 'strategy = "fedavg"\nprox-mu = 0.5')
    )
    assert plain.digest() == other_mu.digest()
    a = load_federation_config(_federation_toml(tmp_path, 'strategy = "fedprox"'))
    b = load_federation_config(_federation_toml(tmp_path, 'strategy = "fedprox"\nprox-mu = 0.5'))
    assert a.digest() != b.digest()


def test_unknown_strategy_is_refused_listing_the_four(tmp_path: Path):
    assert STRATEGIES == ("fedavg", "fedavgm", "fedadam", "fedprox")
    with pytest.raises(ConfigError) as err:
        load_federation_config(_federation_toml(tmp_path, 'strategy = "sgd"'))
    message = str(err.value)
    assert "federation.strategy" in message and "'sgd'" in message
    assert "one of fedavg, fedavgm, fedadam, fedprox" in message


def test_negative_prox_mu_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"federation\.prox-mu"):
        load_federation_config(_federation_toml(tmp_path, 'strategy = "fedprox"\nprox-mu = -1'))
