"""CohortDPTrainer trains K clients at once exactly as DPTrainer trains them one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedguard.errors import ConfigError
from fedguard.privacy import Accountant, DPTrainer, GaussianEvent
from fedguard.privacy.cohort import CohortClient, CohortDPTrainer
from fedguard.task import build_model, get_weights, set_weights

SHAPES = {
    "logreg": (1, 8, 8),
    "mlp": (1, 8, 8),
    "cnn": (1, 8, 8),
    "tb_cnn": (1, 28, 28),
    "scatter_cnn": (6, 7, 7),
    # cnn off the 8x8 path: its adaptive pool runs (8x8 -> 4x4), its second conv forms
    # per-example gradients from channels-last patches; 3 channels, 9x11 (4x5 -> 4x4).
    "cnn@16": (1, 16, 16),
    "cnn@9x11": (3, 9, 11),
}


def _model(name: str) -> nn.Module:
    return build_model(
        name=name.split("@")[0],
        input_shape=SHAPES[name],
        num_classes=10,
        generator=torch.Generator().manual_seed(1),
        hidden=16,
    )


def _data(sizes: list[int], shape: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = torch.Generator().manual_seed(7)
    return [
        (torch.randn((n, *shape), generator=rng), torch.randint(0, 10, (n,), generator=rng))
        for n in sizes
    ]


def _gen(i: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + i)


@pytest.mark.parametrize(
    ("name", "momentum", "mu", "sizes"),
    [
        ("logreg", 0.0, 0.0, [20, 20, 20]),
        ("mlp", 0.9, 0.0, [50, 13, 31, 3]),  # unequal data: different q, steps, batches
        ("mlp", 0.0, 0.1, [40, 40]),  # FedProx
        ("cnn", 0.5, 0.0, [24, 9, 17]),  # Conv2d + GroupNorm + pools
        ("cnn@16", 0.5, 0.0, [12, 7]),  # a pool that is not the identity
        ("cnn@9x11", 0.0, 0.0, [10, 5]),
        ("tb_cnn", 0.9, 0.01, [12, 30]),  # strided convolutions, 28x28
        ("scatter_cnn", 0.5, 0.0, [10, 21]),  # GroupNorm without affine map
    ],
)
@pytest.mark.parametrize("engine", ["stacked", "vmap"])
def test_cohort_equals_one_client_at_a_time(
    name: str, momentum: float, mu: float, sizes: list[int], engine: str
) -> None:
    data = _data(sizes, SHAPES[name])
    start = get_weights(_model(name))
    sigmas = [0.7 + 0.1 * i for i in range(len(sizes))]
    hyper = {"epochs": 2, "batch_size": 8, "lr": 0.3, "momentum": momentum, "max_grad_norm": 0.8}

    single = DPTrainer(model=_model(name))
    expected, expected_acc = [], []
    for i, (x, y) in enumerate(data):
        set_weights(single.module, start)
        acc = Accountant(method="rdp")
        res = single.train(
            x=x,
            y=y,
            noise_multiplier=sigmas[i],
            accountant=acc,
            generator=_gen(i),
            prox_mu=mu,
            **hyper,
        )
        expected.append((get_weights(single.module), res))
        expected_acc.append(acc)

    written: list[GaussianEvent] = []
    accs = [Accountant(method="rdp") for _ in sizes]
    clients = [
        CohortClient(
            x=x,
            y=y,
            noise_multiplier=sigmas[i],
            generator=_gen(i),
            accountant=accs[i],
            before_training=written.append,
        )
        for i, (x, y) in enumerate(data)
    ]
    got = list(
        CohortDPTrainer(model=_model(name), engine=engine).train(
            start=start, clients=clients, prox_mu=mu, **hyper
        )
    )

    assert len(got) == len(sizes)
    for (w_exp, r_exp), r, acc, acc_exp in zip(expected, got, accs, expected_acc, strict=True):
        for a, b in zip(r.weights, w_exp, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert (r.train.steps, r.train.examples) == (r_exp.steps, r_exp.examples)
        assert r.train.sample_rate == r_exp.sample_rate
        assert r.train.mean_loss == pytest.approx(r_exp.mean_loss, rel=1e-4)
        assert acc.events == acc_exp.events
    assert written == [a.events[0] for a in accs]  # write-ahead, one event per client


def test_chunks_give_the_same_result_as_one_pass() -> None:
    data = _data([30] * 5, SHAPES["mlp"])
    start = get_weights(_model("mlp"))

    def run(max_floats: int) -> list[list[np.ndarray]]:
        clients = [
            CohortClient(
                x=x,
                y=y,
                noise_multiplier=1.0,
                generator=_gen(i),
                accountant=Accountant(method="rdp"),
            )
            for i, (x, y) in enumerate(data)
        ]
        trainer = CohortDPTrainer(model=_model("mlp"), max_floats=max_floats)
        return [
            r.weights
            for r in trainer.train(
                start=start, clients=clients, epochs=1, batch_size=10, lr=0.5, max_grad_norm=1.0
            )
        ]

    whole, one_by_one = run(1 << 25), run(1)
    for a, b in zip(whole, one_by_one, strict=True):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_a_model_with_buffers_is_refused_naming_both_engines() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8))
    with pytest.raises(
        ConfigError, match=r"stacked: 2 \(BatchNorm1d\): has buffers.*vmap: has buffers"
    ):
        CohortDPTrainer(model=model)


class _Branchy(nn.Module):
    """Data-dependent Python control flow: what torch.func.vmap cannot batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        return out if out.sum() > 0 else -out


def test_a_forward_pass_vmap_cannot_batch_is_refused_by_the_probe() -> None:
    trainer = CohortDPTrainer(model=_Branchy())
    assert trainer.engine == "vmap"
    with pytest.raises(ConfigError, match=r"model: expected a forward pass torch.func.vmap"):
        trainer.probe(torch.zeros((1, 1, 8, 8)))


class _Residual(nn.Module):
    """A task-API style model no Sequential can express: a skip connection, LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 16)
        self.norm = nn.LayerNorm(16)
        self.mid = nn.Linear(16, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x.flatten(1)))
        return self.out(h + torch.tanh(self.mid(self.norm(h))))


def test_a_non_sequential_model_is_vmapped_and_equals_one_client_at_a_time() -> None:
    def model() -> nn.Module:
        torch.manual_seed(3)
        return _Residual()

    data = _data([19, 7, 33], (1, 8, 8))
    start = get_weights(model())
    hyper = {"epochs": 2, "batch_size": 8, "lr": 0.3, "momentum": 0.9, "max_grad_norm": 0.7}
    single = DPTrainer(model=model())
    expected = []
    for i, (x, y) in enumerate(data):
        set_weights(single.module, start)
        acc = Accountant(method="rdp")
        single.train(x=x, y=y, noise_multiplier=1.1, accountant=acc, generator=_gen(i), **hyper)
        expected.append((get_weights(single.module), acc.events))
    trainer = CohortDPTrainer(model=model())
    assert trainer.engine == "vmap"
    trainer.probe(data[0][0][:1])
    accs = [Accountant(method="rdp") for _ in data]
    clients = [
        CohortClient(x=x, y=y, noise_multiplier=1.1, generator=_gen(i), accountant=accs[i])
        for i, (x, y) in enumerate(data)
    ]
    got = list(trainer.train(start=start, clients=clients, **hyper))
    for r, acc, (w_exp, events) in zip(got, accs, expected, strict=True):
        for a, b in zip(r.weights, w_exp, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert acc.events == events


def test_bad_hyperparameters_name_the_key() -> None:
    ((x, y),) = _data([10], SHAPES["mlp"])
    client = CohortClient(
        x=x, y=y, noise_multiplier=1.0, generator=_gen(0), accountant=Accountant(method="rdp")
    )
    trainer = CohortDPTrainer(model=_model("mlp"))
    with pytest.raises(ValueError, match="momentum"):
        list(
            trainer.train(
                start=get_weights(_model("mlp")),
                clients=[client],
                epochs=1,
                batch_size=4,
                lr=0.1,
                momentum=1.5,
                max_grad_norm=1.0,
            )
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cohort_on_cuda_equals_dptrainer_on_cuda() -> None:
    """The vectorised path on a GPU draws from CUDA generators as DPTrainer does."""
    dev = torch.device("cuda")
    data = [(x.to(dev), y.to(dev)) for x, y in _data([30, 11], SHAPES["mlp"])]
    start = get_weights(_model("mlp"))
    hyper = {"epochs": 1, "batch_size": 8, "lr": 0.3, "momentum": 0.9, "max_grad_norm": 1.0}
    single = DPTrainer(model=_model("mlp").to(dev))
    expected = []
    for i, (x, y) in enumerate(data):
        set_weights(single.module, start)
        single.train(
            x=x,
            y=y,
            noise_multiplier=1.0,
            accountant=Accountant(method="rdp"),
            generator=torch.Generator(device=dev).manual_seed(i),
            **hyper,
        )
        expected.append(get_weights(single.module))
    clients = [
        CohortClient(
            x=x,
            y=y,
            noise_multiplier=1.0,
            generator=torch.Generator(device=dev).manual_seed(i),
            accountant=Accountant(method="rdp"),
        )
        for i, (x, y) in enumerate(data)
    ]
    trainer = CohortDPTrainer(model=_model("mlp").to(dev))
    for got, want in zip(
        trainer.train(start=start, clients=clients, **hyper), expected, strict=True
    ):
        for a, b in zip(got.weights, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", ["stacked", "vmap"])
def test_class_weights_are_applied_as_one_client_at_a_time(engine: str) -> None:
    data = _data([21, 9], SHAPES["mlp"])
    start = get_weights(_model("mlp"))
    weights = [0.2 + 0.08 * c for c in range(10)]
    hyper = {"epochs": 1, "batch_size": 8, "lr": 0.4, "max_grad_norm": 0.9}
    single = DPTrainer(model=_model("mlp"))
    expected = []
    for i, (x, y) in enumerate(data):
        set_weights(single.module, start)
        single.train(
            x=x,
            y=y,
            noise_multiplier=0.8,
            accountant=Accountant(method="rdp"),
            generator=_gen(i),
            class_weights=weights,
            **hyper,
        )
        expected.append(get_weights(single.module))
    clients = [
        CohortClient(
            x=x, y=y, noise_multiplier=0.8, generator=_gen(i), accountant=Accountant(method="rdp")
        )
        for i, (x, y) in enumerate(data)
    ]
    trainer = CohortDPTrainer(model=_model("mlp"), engine=engine)
    got = trainer.train(start=start, clients=clients, class_weights=weights, **hyper)
    for r, want in zip(got, expected, strict=True):
        for a, b in zip(r.weights, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
