"""DPTrainer: cumulative epsilon across recreated clients, write-ahead accounting, per-sample
clipping against a microbatch oracle, noise, reuse across clients, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedguard.errors import ConfigError
from fedguard.privacy import (
    Accountant,
    AccountantStore,
    DPTrainer,
    DPTrainResult,
    GaussianEvent,
    sample_rate_for,
    steps_per_epoch,
)

pytestmark = pytest.mark.filterwarnings(
    # torch warns on every backward through a module whose inputs need no grad.
    "ignore:Full backward hook is firing:UserWarning",
    "ignore:Optimal order is the:UserWarning",
)

DELTA = 1e-5
LEAK_ATTRS = ("grad_sample", "summed_grad", "_current_grad_sample")


def _data(seed: int, n: int = 200, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    return x, (x @ w > 0).long()  # linearly separable through the origin


def _model(seed: int = 0, d: int = 5) -> nn.Module:
    torch.manual_seed(seed)  # only to build identical initial weights in tests
    return nn.Linear(d, 2)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _train(trainer: DPTrainer, x, y, *, seed: int = 0, accountant=None, **kw) -> DPTrainResult:
    args = {
        "epochs": 1,
        "batch_size": 20,
        "lr": 0.5,
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        **kw,
    }
    return trainer.train(
        x=x,
        y=y,
        accountant=accountant if accountant is not None else Accountant(method="rdp"),
        generator=torch.Generator().manual_seed(seed),
        **args,
    )


def _assert_clean(model: nn.Module) -> None:
    for p in model.parameters():
        assert p.grad is None
        for attr in LEAK_ATTRS:
            assert not hasattr(p, attr), attr
    for m in model.modules():
        assert not hasattr(m, "activations") and not hasattr(m, "max_batch_len")


def test_steps_and_sample_rate_follow_opacus():
    assert steps_per_epoch(num_examples=1000, batch_size=64) == 16
    assert sample_rate_for(num_examples=1000, batch_size=64) == 1 / 16
    assert steps_per_epoch(num_examples=5, batch_size=64) == 1
    assert sample_rate_for(num_examples=5, batch_size=64) == 1.0
    with pytest.raises(ConfigError, match=r"^batch_size: expected an integer >= 1"):
        steps_per_epoch(num_examples=10, batch_size=0)
    with pytest.raises(ConfigError, match=r"^num_examples"):
        sample_rate_for(num_examples=True, batch_size=1)


# --- the epsilon-reset bug ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["rdp", "prv"])
def test_epsilon_accumulates_across_recreated_clients(tmp_path, method):
    """Flower recreates the ClientApp every round; epsilon must not restart from zero."""
    x, y = _data(1)
    trainer = DPTrainer(model=_model())
    path = tmp_path / "accountants" / "client-0.json"
    events: list[GaussianEvent] = []
    per_round: list[float] = []
    for rnd in range(3):
        store = AccountantStore(path=path)  # a new object every round, like Flower's
        acc = store.load(method=method)
        result = _train(
            trainer,
            x,
            y,
            seed=rnd,
            accountant=acc,
            epochs=2,
            noise_multiplier=1.1,
            before_training=lambda _e, s=store, a=acc: s.save(a),
        )
        store.save(acc)
        events.append(GaussianEvent(result.noise_multiplier, result.sample_rate, result.steps))
        per_round.append(acc.get_privacy_spent(delta=DELTA).epsilon)

    reference = Accountant(method=method)
    for event in events:
        reference.compose(event)
    final = AccountantStore(path=path).load(method=method).get_privacy_spent(delta=DELTA)
    assert final == reference.get_privacy_spent(delta=DELTA)
    one_round = Accountant(method=method)
    one_round.compose(events[0])
    single = one_round.get_privacy_spent(delta=DELTA).epsilon
    # The buggy pattern (a fresh accountant per round) would report `single` every round.
    assert per_round[0] == pytest.approx(single)
    assert per_round[0] < per_round[1] < per_round[2] == final.epsilon
    assert final.epsilon > 1.3 * single


def test_before_training_runs_once_before_any_update_with_the_composed_event():
    x, y = _data(2)
    trainer = DPTrainer(model=_model())
    start = _flat(trainer.module)
    acc = Accountant(method="rdp")
    acc.compose(GaussianEvent(2.0, 0.5, 3))
    seen: list[tuple[GaussianEvent, tuple[GaussianEvent, ...], torch.Tensor]] = []

    def hook(event: GaussianEvent) -> None:
        seen.append((event, acc.events, _flat(trainer.module)))

    result = _train(
        trainer,
        x,
        y,
        accountant=acc,
        epochs=3,
        batch_size=40,
        noise_multiplier=0.8,
        before_training=hook,
    )
    assert len(seen) == 1
    event, events_then, weights_then = seen[0]
    assert event == GaussianEvent(0.8, 1 / 5, 15)
    assert (result.steps, result.sample_rate, result.noise_multiplier) == (15, 0.2, 0.8)
    assert events_then == (GaussianEvent(2.0, 0.5, 3), event)  # composed before the hook
    assert torch.equal(weights_then, start)
    assert not torch.equal(_flat(trainer.module), start)


def test_failing_before_training_stops_training_but_counts_the_event():
    x, y = _data(3)
    trainer = DPTrainer(model=_model())
    start = _flat(trainer.module)
    acc = Accountant(method="rdp")

    def crash(_event: GaussianEvent) -> None:
        raise OSError("ledger disk full")

    with pytest.raises(OSError, match="ledger disk full"):
        _train(trainer, x, y, accountant=acc, before_training=crash)
    assert torch.equal(_flat(trainer.module), start)
    assert acc.events == (GaussianEvent(1.0, 0.1, 10),)
    _assert_clean(trainer.module)


# --- DP-SGD mechanics ----------------------------------------------------------------


def test_update_matches_a_microbatch_oracle_of_per_sample_clipping():
    """q = 1 (one full batch), noise ~0: the step is lr * mean of individually clipped grads."""
    g = torch.Generator().manual_seed(4)
    x = (
        torch.randn(8, 5, generator=g)
        * torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0, 1, 1, 1])[:, None]
    )
    y = torch.randint(0, 2, (8,), generator=g)
    model = _model(4)
    start = [p.detach().clone() for p in model.parameters()]
    clip = 0.7

    oracle = [torch.zeros_like(p) for p in start]
    clipped_any = unclipped_any = False
    for i in range(8):  # microbatches of one example: the definition of per-sample clipping
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.sqrt(sum((gr**2).sum() for gr in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        clipped_any |= factor < 1.0
        unclipped_any |= factor == 1.0
        for acc_g, gr in zip(oracle, grads, strict=True):
            acc_g += factor * gr
    model.zero_grad(set_to_none=True)
    assert clipped_any and unclipped_any  # the data exercises both branches

    trainer = DPTrainer(model=model)
    result = _train(trainer, x, y, batch_size=8, lr=1.0, noise_multiplier=1e-9, max_grad_norm=clip)
    assert (result.steps, result.examples, result.sample_rate) == (1, 8, 1.0)
    for p, p0, s in zip(trainer.module.parameters(), start, oracle, strict=True):
        torch.testing.assert_close(p0 - p.detach(), s / 8, atol=1e-5, rtol=1e-4)


def test_total_movement_is_bounded_by_clipping():
    x, y = _data(5)
    x = x * 100  # huge raw gradients: without clipping the weights would fly off
    trainer = DPTrainer(model=_model(5))
    start = _flat(trainer.module)
    lr, clip, batch = 0.1, 0.5, 20
    result = _train(
        trainer, x, y, epochs=2, batch_size=batch, lr=lr, noise_multiplier=1e-9, max_grad_norm=clip
    )
    moved = float((_flat(trainer.module) - start).norm())
    expected_batch = round(result.sample_rate * 200)
    # Each step moves by lr * ||sum of clipped grads|| / E <= lr * clip * |B_t| / E.
    bound = lr * clip * result.examples / expected_batch
    assert 0 < moved <= bound * (1 + 1e-6)


def test_large_noise_dominates_the_update():
    x, y = _data(6)
    trainer = DPTrainer(model=_model(6))
    start = _flat(trainer.module)
    result = _train(trainer, x, y, lr=0.1, noise_multiplier=1000.0, max_grad_norm=1.0)
    moved = float((_flat(trainer.module) - start).norm())
    signal_bound = 0.1 * 1.0 * result.examples / 20  # what clipped gradients alone allow
    assert moved > 20 * signal_bound


def test_small_noise_learns_a_separable_problem():
    x, y = _data(7, n=400)
    trainer = DPTrainer(model=_model(7))
    result = _train(
        trainer,
        x,
        y,
        epochs=8,
        batch_size=40,
        lr=1.0,
        noise_multiplier=0.3,
        max_grad_norm=1.0,
        seed=7,
    )
    with torch.no_grad():
        accuracy = float((trainer.module(x).argmax(1) == y).float().mean())
    assert accuracy > 0.9
    assert result.steps == 80 and 0.0 < result.mean_loss < math.log(2) + 0.5


def test_same_seed_same_weights_other_seed_other_weights():
    x, y = _data(8)
    finals = []
    for seed in (11, 11, 12):
        trainer = DPTrainer(model=_model(8))
        _train(trainer, x, y, seed=seed, epochs=2)
        finals.append(_flat(trainer.module))
    assert torch.equal(finals[0], finals[1])
    assert not torch.equal(finals[0], finals[2])


def test_global_rng_is_not_used():
    x, y = _data(9)
    trainer = DPTrainer(model=_model(9))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _train(trainer, x, y)
    assert torch.equal(torch.get_rng_state(), before)


def test_empty_poisson_batches_still_release_noise():
    x, y = _data(10, n=2)
    for seed in range(200):  # find a seed whose every Poisson batch is empty (p = 1/16)
        trainer = DPTrainer(model=_model(10))
        start = _flat(trainer.module)
        result = _train(trainer, x, y, seed=seed, epochs=2, batch_size=1)
        if result.examples == 0:
            break
    else:
        pytest.fail("no all-empty run found")
    assert result.steps == 4 and result.mean_loss == 0.0
    assert not torch.equal(_flat(trainer.module), start)  # noise-only steps were taken
    _assert_clean(trainer.module)


def test_tiny_sample_rate_with_many_empty_batches():
    # q = 1/300, expected batch 1: about a third of the 300 steps draw no example.
    x, y = _data(11, n=300)
    trainer = DPTrainer(model=_model(11))
    result = _train(trainer, x, y, batch_size=1, lr=0.01)
    assert result.steps == 300 and 200 < result.examples < 400
    assert all(torch.isfinite(p).all() for p in trainer.module.parameters())
    _assert_clean(trainer.module)


# --- reuse across clients ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ew", "ghost", "bk"])
def test_one_trainer_serves_many_clients_without_leaks(mode):
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    trainer = DPTrainer(model=model, grad_sample_mode=mode)
    global_weights = {k: v.clone() for k, v in model.state_dict().items()}
    updates = []
    for client in range(2):
        trainer.module.load_state_dict(global_weights)
        x, y = _data(20 + client, n=60 + 40 * client)
        acc = Accountant(method="rdp")
        _train(trainer, x, y, seed=client, accountant=acc)
        _assert_clean(trainer.module)
        updates.append({k: v - global_weights[k] for k, v in trainer.module.state_dict().items()})
        assert len(acc.events) == 1
    assert any(not torch.equal(updates[0][k], updates[1][k]) for k in global_weights)
    # Outside train() the module is a plain module: grads flow, no per-sample state.
    x, y = _data(30)
    nn.functional.cross_entropy(trainer.module(x), y).backward()
    assert all(p.grad is not None and not hasattr(p, "grad_sample") for p in model.parameters())


def test_second_trainer_on_the_same_model_is_refused():
    model = _model()
    DPTrainer(model=model)
    with pytest.raises(ConfigError, match="already has per-sample-gradient hooks"):
        DPTrainer(model=model)


def test_eval_mode_model_is_accepted_and_mode_restored():
    model = _model().eval()
    trainer = DPTrainer(model=model)
    x, y = _data(12)
    _train(trainer, x, y)
    assert not model.training


def test_unsupported_layers_are_all_listed_on_one_line():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2), nn.BatchNorm1d(2))
    with pytest.raises(ConfigError) as info:
        DPTrainer(model=model)
    message = str(info.value)
    assert (
        "2 problem(s)" in message and "1 (BatchNorm1d)" in message and "3 (BatchNorm1d)" in message
    )
    assert "\n" not in message
    assert not hasattr(model, "autograd_grad_sample_hooks")  # nothing was wrapped


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1.0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": True}, "noise_multiplier"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"max_grad_norm": math.inf}, "max_grad_norm"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_spent(kwargs, key):
    x, y = _data(13)
    trainer = DPTrainer(model=_model())
    acc = Accountant(method="rdp")
    with pytest.raises(ConfigError, match=rf"^{key}: expected"):
        _train(trainer, x, y, accountant=acc, **kwargs)
    assert acc.events == ()


def test_mismatched_data_is_refused():
    trainer = DPTrainer(model=_model())
    x, y = _data(14)
    with pytest.raises(ConfigError, match=r"^x, y"):
        _train(trainer, x, y[:-1])
    with pytest.raises(ConfigError, match=r"^y: expected integer class labels"):
        _train(trainer, x, y.float())
    with pytest.raises(
        ConfigError,
        match=r"^grad_sample_mode: expected one of auto, hooks, functorch, ew, ghost, bk",
    ):
        DPTrainer(model=_model(), grad_sample_mode="vmap")


class _NoiseSpy:
    """Wraps Opacus's real ``_generate_noise``: records each call's mode and noise."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import opacus.optimizers.optimizer as plain_opt
        import opacus.optimizers.optimizer_fast_gradient_clipping as fast_opt

        self.calls: list[tuple[bool, float, torch.Tensor]] = []
        real = plain_opt._generate_noise

        def spy(std, reference, generator=None, secure_mode=False):
            noise = real(std, reference, generator=generator, secure_mode=secure_mode)
            self.calls.append((secure_mode, std, noise.detach().clone()))
            return noise

        # Both optimizers DPTrainer builds (per-sample modes and bk/ghost) call it.
        monkeypatch.setattr(plain_opt, "_generate_noise", spy)
        monkeypatch.setattr(fast_opt, "_generate_noise", spy)


@pytest.mark.parametrize("mode", ["hooks", "bk"])
def test_secure_mode_noise_is_opacus_defended_and_has_the_right_spread(monkeypatch, mode):
    from fedguard.privacy.rng import os_entropy_generator

    spy = _NoiseSpy(monkeypatch)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 100, (32,), generator=torch.Generator().manual_seed(2))
    trainer = DPTrainer(model=nn.Linear(64, 100), grad_sample_mode=mode, secure_mode=True)
    assert trainer.secure_mode
    trainer.train(
        x=x,
        y=y,
        epochs=10,  # batch 32 of 32: one step an epoch, 6,500 noise values a step
        batch_size=32,
        lr=0.1,
        noise_multiplier=1.3,
        max_grad_norm=0.7,
        accountant=Accountant(method="rdp"),
        generator=os_entropy_generator(),
    )
    assert len(spy.calls) == 10 * 2  # weight and bias, every step
    assert all(secure for secure, _, _ in spy.calls)
    assert all(std == pytest.approx(1.3 * 0.7) for _, std, _ in spy.calls)
    noise = torch.cat([n.reshape(-1) for _, _, n in spy.calls]).double()
    # 65,000 draws: the sample std is within 0.3% of the true one (1 sd), the mean 0.004.
    assert noise.std().item() == pytest.approx(1.3 * 0.7, rel=0.02)
    assert abs(noise.mean().item()) < 5 * 1.3 * 0.7 / math.sqrt(noise.numel())


def test_secure_mode_draws_other_numbers_and_is_off_by_default(monkeypatch):
    spy = _NoiseSpy(monkeypatch)
    x, y = _data(0)
    plain, secure = DPTrainer(model=_model()), DPTrainer(model=_model(), secure_mode=True)
    assert not plain.secure_mode  # simulation's default: reproducible, like CohortDPTrainer
    _train(plain, x, y, seed=5)
    _train(secure, x, y, seed=5)
    modes = [secure_mode for secure_mode, _, _ in spy.calls]
    half = len(modes) // 2
    assert not any(modes[:half]) and all(modes[half:])
    # Same generator seed, same data: the defended noise is other draws (4 a value).
    assert not torch.equal(_flat(plain.module), _flat(secure.module))
    with pytest.raises(ConfigError, match="secure_mode"):
        DPTrainer(model=_model(1), secure_mode=1)  # type: ignore[arg-type]
