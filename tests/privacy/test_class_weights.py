"""Per-class loss weights keep DP-SGD's per-example bound, with real Opacus (#17.5).

Weights multiply each example's loss before its gradient is clipped: in every per-sample
gradient mode (and the vectorised cohort trainer) one step is the microbatch oracle of
``clip(w[y_i] * g_i)``, and two neighbouring data sets (one record apart, that record an
outlier with the label the model finds least likely) release noiseless sums at most C
apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedguard.config import SimulationConfig
from fedguard.errors import ConfigError
from fedguard.privacy import GRAD_SAMPLE_MODES, Accountant, DPTrainer
from fedguard.privacy.class_weights import check_class_weights, weights_for_prevalence
from fedguard.privacy.cohort import CohortClient, CohortDPTrainer
from fedguard.task import build_model, get_weights, set_weights

pytestmark = pytest.mark.filterwarnings(
    "ignore:Full backward hook is firing:UserWarning",
    "ignore:Optimal order is the:UserWarning",
)

MODES = [m for m in GRAD_SAMPLE_MODES if m != "auto"]
WEIGHTS = (0.05, 1.0)  # the common class 0 weighted down, the rare class 1 at 1


def _model(name: str = "mlp") -> nn.Module:
    return build_model(
        name=name,
        input_shape=(6,),
        num_classes=2,
        generator=torch.Generator().manual_seed(0),
        hidden=8,
    )


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    scale = torch.logspace(-2, 1.5, n)[:, None]  # some gradients clipped, some not
    y = torch.zeros(n, dtype=torch.int64)
    y[1::3] = 1
    return torch.randn(n, 6, generator=g) * scale, y


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _oracle(x: torch.Tensor, y: torch.Tensor, clip: float) -> tuple[torch.Tensor, list[float]]:
    """Sum of ``clip(w[y_i] * g_i)``, one example at a time (the definition)."""
    model = _model()
    total, norms = torch.zeros_like(_flat(model)), []
    for i in range(len(x)):
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        (WEIGHTS[int(y[i])] * loss).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        clipped = g * min(1.0, clip / (float(g.norm()) + 1e-6))
        norms.append(float(clipped.norm()))
        total += clipped
    return total, norms


def _one_step(mode: str, x: torch.Tensor, y: torch.Tensor, clip: float) -> torch.Tensor:
    """The noiseless clipped sum one DP-SGD step applies (q = 1, lr = 1)."""
    trainer = DPTrainer(model=_model(), grad_sample_mode=mode)
    start = _flat(trainer.module)
    trainer.train(
        x=x,
        y=y,
        epochs=1,
        batch_size=len(x),
        lr=1.0,
        noise_multiplier=1e-9,
        max_grad_norm=clip,
        accountant=Accountant(method="rdp"),
        generator=torch.Generator().manual_seed(5),
        class_weights=WEIGHTS,
    )
    return (start - _flat(trainer.module)) * len(x)  # the optimizer divides by n


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_clips_the_weighted_per_example_gradient(mode: str) -> None:
    x, y = _data()
    clip = 0.3
    expected, norms = _oracle(x, y, clip)
    assert max(norms) <= clip * (1 + 1e-6)  # C bounds every weighted, clipped gradient
    # Weights matter: without them the same step is another vector.
    unweighted = DPTrainer(model=_model(), grad_sample_mode=mode)
    got = _one_step(mode, x, y, clip)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4, msg=mode)
    start = _flat(unweighted.module)
    unweighted.train(
        x=x, y=y, epochs=1, batch_size=len(x), lr=1.0, noise_multiplier=1e-9,
        max_grad_norm=clip, accountant=Accountant(method="rdp"),
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    assert not torch.allclose((start - _flat(unweighted.module)) * len(x), got, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_neighbouring_data_sets_release_sums_at_most_c_apart(mode: str) -> None:
    """The attack: one record, an outlier with a huge loss, added to the data."""
    x, y = _data()
    clip = 0.3
    outlier_x = torch.full((1, 6), 1e3)
    with torch.no_grad():  # the label the model finds least likely: the largest gradient
        outlier_y = _model()(outlier_x).argmin(1)
    with_it = _one_step(mode, torch.cat([x, outlier_x]), torch.cat([y, outlier_y]), clip)
    without = _one_step(mode, x, y, clip)
    moved = float((with_it - without).norm())
    assert moved <= clip * (1 + 1e-4), (mode, moved)
    assert moved > 0.5 * clip  # the outlier was clipped to C, not weighted away


def test_cohort_trainer_applies_the_same_weights() -> None:
    x, y = _data(20)
    start = get_weights(_model())
    hyper = {"epochs": 2, "batch_size": 5, "lr": 0.3, "max_grad_norm": 0.4}
    single = DPTrainer(model=_model())
    set_weights(single.module, start)
    single.train(
        x=x, y=y, noise_multiplier=0.8, accountant=Accountant(method="rdp"),
        generator=torch.Generator().manual_seed(9), class_weights=WEIGHTS, **hyper,
    )  # fmt: skip
    client = CohortClient(
        x=x,
        y=y,
        noise_multiplier=0.8,
        generator=torch.Generator().manual_seed(9),
        accountant=Accountant(method="rdp"),
    )
    (got,) = CohortDPTrainer(model=_model()).train(
        start=start, clients=[client], class_weights=WEIGHTS, **hyper
    )
    for a, b in zip(got.weights, get_weights(single.module), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "bad", [(0.0, 1.0), (1.5, 1.0), (float("nan"), 1.0), (1.0,), (True, 1.0), "0.5,1"]
)
def test_weights_outside_0_1_are_refused_before_anything_is_spent(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^class-weights: expected .*, got "):
        check_class_weights(bad)  # type: ignore[arg-type]
    acc = Accountant(method="rdp")
    x, y = _data()
    with pytest.raises(ConfigError):
        DPTrainer(model=_model()).train(
            x=x, y=y, epochs=1, batch_size=4, lr=0.1, noise_multiplier=1.0,
            max_grad_norm=1.0, accountant=acc, generator=torch.Generator().manual_seed(1),
            class_weights=bad,  # type: ignore[arg-type]
        )  # fmt: skip
    assert acc.events == ()  # refused before the release was counted


def test_config_key_names_the_option_and_value() -> None:
    assert SimulationConfig(class_weights="0.05, 1").class_weight_values == (0.05, 1.0)
    assert SimulationConfig().class_weight_values == ()
    for text in ("2,1", "a,b", "1"):
        with pytest.raises(ConfigError, match=rf"^--class-weights: expected .*got '{text}'"):
            SimulationConfig(class_weights=text)


def test_balanced_weights_from_a_declared_prevalence() -> None:
    assert weights_for_prevalence([0.97, 0.03]) == pytest.approx((0.03 / 0.97, 1.0))
    with pytest.raises(ConfigError, match="class-prevalence"):
        weights_for_prevalence([1.0, 0.0])
