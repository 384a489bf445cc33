"""Every per-sample gradient mode computes the same clipped sum (a microbatch oracle with
noise ~0), releases the same noisy update from the same seed, and keeps the device rules;
``auto`` picks book-keeping clipping where it applies and Opacus's hooks otherwise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedguard.errors import ConfigError
from fedguard.privacy import GRAD_SAMPLE_MODES, Accountant, DPTrainer
from fedguard.task import build_model

pytestmark = pytest.mark.filterwarnings(
    "ignore:Full backward hook is firing:UserWarning",
    "ignore:Optimal order is the:UserWarning",
)

MODES = [m for m in GRAD_SAMPLE_MODES if m != "auto"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(name: str, hidden: int = 16) -> nn.Module:
    return build_model(
        name=name,
        input_shape=(1, 8, 8),
        num_classes=10,
        generator=torch.Generator().manual_seed(0),
        hidden=hidden,
    )


def _data(n: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Rows at very different scales: some per-example gradients get clipped, some not.
    scale = torch.logspace(-2, 1.5, n)[:, None, None, None]
    return torch.randn(n, 1, 8, 8, generator=g) * scale, torch.randint(0, 10, (n,), generator=g)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _train(trainer: DPTrainer, x, y, *, seed: int = 5, device: str = "cpu", **kw):
    args = {
        "epochs": 1,
        "batch_size": len(x),
        "lr": 1.0,
        "noise_multiplier": 1e-9,
        "max_grad_norm": 0.3,
        **kw,
    }
    return trainer.train(
        x=x,
        y=y,
        accountant=Accountant(method="rdp"),
        generator=torch.Generator(device=device).manual_seed(seed),
        **args,
    )


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_every_mode_is_the_microbatch_oracle_of_per_sample_clipping(name):
    """q = 1, noise ~0: one step moves the weights by lr * (sum of clipped grads) / n."""
    x, y = _data(12)
    oracle_model = _model(name)
    start = _flat(oracle_model)
    grads = []
    for i in range(len(x)):  # one example at a time: the definition of per-sample clipping
        oracle_model.zero_grad()
        nn.functional.cross_entropy(oracle_model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in oracle_model.parameters()]))
    clip = float(torch.stack([g.norm() for g in grads]).median())  # half of them clipped
    factors = [min(1.0, clip / (float(g.norm()) + 1e-6)) for g in grads]
    assert min(factors) < 1.0 and max(factors) == 1.0  # both branches of the clipping
    total = sum((f * g for f, g in zip(factors, grads, strict=True)), torch.zeros_like(start))
    for mode in MODES:
        trainer = DPTrainer(model=_model(name), grad_sample_mode=mode)
        result = _train(trainer, x, y, max_grad_norm=clip)
        assert (result.steps, result.examples) == (1, 12)
        moved = start - _flat(trainer.module)
        torch.testing.assert_close(moved, total / 12, atol=2e-6, rtol=1e-4, msg=mode)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_all_modes_release_the_same_noisy_updates_from_the_same_seed(name):
    """Poisson batches (q = 1/4), noise sigma = 1, 3 epochs: the same sampling and noise
    draws, so the same weights to float rounding, whatever the mode."""
    x, y = _data(40)
    finals = {}
    for mode in MODES:
        trainer = DPTrainer(model=_model(name), grad_sample_mode=mode)
        result = _train(trainer, x, y, epochs=3, batch_size=10, lr=0.5, noise_multiplier=1.0)
        assert result.steps == 12 and 0 < result.examples < 12 * 40
        finals[mode] = _flat(trainer.module)
    reference = finals.pop("hooks")
    assert not torch.equal(reference, _flat(_model(name)))  # it trained
    for mode, weights in finals.items():
        torch.testing.assert_close(weights, reference, atol=1e-5, rtol=1e-5, msg=mode)


class _Scale(nn.Module):
    """A layer no Opacus grad sampler knows (Opacus's hooks fall back to functorch)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_auto_is_book_keeping_where_it_applies_and_hooks_otherwise():
    for name in ("logreg", "mlp", "cnn"):
        assert DPTrainer(model=_model(name)).grad_sample_mode == "bk"
    odd = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), _Scale())
    assert DPTrainer(model=odd).grad_sample_mode == "hooks"


def test_book_keeping_refuses_layers_it_cannot_clip_and_a_second_wrapping():
    odd = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), _Scale())
    with pytest.raises(ConfigError, match=r"^grad_sample_mode: .*Opacus grad sampler.*_Scale"):
        DPTrainer(model=odd, grad_sample_mode="bk")
    model = _model("mlp")
    DPTrainer(model=model, grad_sample_mode="bk")
    with pytest.raises(ConfigError, match="already has per-sample-gradient hooks"):
        DPTrainer(model=model, grad_sample_mode="hooks")


@pytest.mark.parametrize("mode", ["ew", "ghost", "bk"])
def test_empty_poisson_batches_still_release_noise(mode):
    x, y = _data(2)
    for seed in range(200):  # a seed whose every Poisson batch is empty (p = 1/16)
        trainer = DPTrainer(model=_model("mlp"), grad_sample_mode=mode)
        start = _flat(trainer.module)
        result = _train(trainer, x, y, seed=seed, batch_size=1, noise_multiplier=1.0)
        if result.examples == 0:
            break
    else:
        pytest.fail("no all-empty run found")
    assert result.steps == 2 and result.mean_loss == 0.0
    assert not torch.equal(_flat(trainer.module), start)  # noise-only steps were taken


def test_data_on_another_device_than_the_model_is_refused_before_spending():
    trainer = DPTrainer(model=_model("mlp"))
    x, y = _data(4)
    accountant = Accountant(method="rdp")
    with pytest.raises(ConfigError, match=r"^x, y: expected tensors on the model's device cpu"):
        trainer.train(
            x=x.to("meta"),
            y=y.to("meta"),
            epochs=1,
            batch_size=2,
            lr=0.1,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            accountant=accountant,
            generator=torch.Generator(),
        )
    assert accountant.events == ()


@CUDA
@pytest.mark.parametrize("mode", MODES)
def test_training_on_cuda_matches_the_cpu_oracle_and_needs_a_cuda_generator(mode):
    name = "cnn" if mode in ("ew", "functorch") else "mlp"
    x, y = _data(12)
    cpu_trainer = DPTrainer(model=_model(name), grad_sample_mode=mode)
    _train(cpu_trainer, x, y)
    trainer = DPTrainer(model=_model(name).cuda(), grad_sample_mode=mode)
    _train(trainer, x.cuda(), y.cuda(), device="cuda")
    torch.testing.assert_close(
        _flat(trainer.module).cpu(), _flat(cpu_trainer.module), atol=1e-5, rtol=1e-4
    )
    with pytest.raises(ConfigError, match=r"^generator: expected a torch.Generator on .* cuda"):
        _train(trainer, x.cuda(), y.cuda(), device="cpu")
