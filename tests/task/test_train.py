"""Samplers, plain SGD training and evaluation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedguard.errors import ConfigError, DataError
from fedguard.task.data import Dataset, load_dataset
from fedguard.task.metrics import compute_metrics
from fedguard.task.models import build_model
from fedguard.task.train import (
    TrainStats,
    evaluate,
    poisson_batches,
    shuffled_batches,
    train_plain,
)
from fedguard.task.weights import get_weights


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(name="digits", seed=0)


def _tensors(ds: Dataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(getattr(ds, f"x_{split}")), torch.from_numpy(getattr(ds, f"y_{split}"))


# ---------------------------------------------------------------- samplers


def test_poisson_batches_rate_and_determinism() -> None:
    def draw(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return list(poisson_batches(num_examples=1000, sample_rate=0.1, steps=200, generator=gen))

    a, b, c = draw(0), draw(0), draw(1)
    assert len(a) == 200
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    sizes = np.array([len(x) for x in a])
    assert sizes.mean() == pytest.approx(100, abs=3)  # binomial(1000, 0.1): sd of mean ~0.7
    assert sizes.std() > 5  # sizes vary (sd ~9.5), unlike fixed batches
    for batch in a:
        assert batch.dtype == torch.int64 and torch.all(batch[1:] > batch[:-1])
        assert batch.numel() == 0 or (batch.min() >= 0 and batch.max() < 1000)


def test_poisson_batches_may_be_empty() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = list(poisson_batches(num_examples=5, sample_rate=0.01, steps=50, generator=gen))
    assert sum(b.numel() == 0 for b in batches) > 40


@pytest.mark.parametrize("rate", [0.0, 1.5, float("nan"), True])
def test_poisson_batches_rejects_bad_rate(rate: float) -> None:
    gen = torch.Generator()
    with pytest.raises(ConfigError, match=r"^sample_rate: expected a number in"):
        next(poisson_batches(num_examples=5, sample_rate=rate, steps=1, generator=gen))


def test_shuffled_batches_are_one_permutation_per_epoch() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = list(shuffled_batches(num_examples=10, batch_size=4, epochs=2, generator=gen))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(batches[:3]), torch.cat(batches[3:]))


# ---------------------------------------------------------------- training


def test_logreg_on_digits_learns(digits: Dataset) -> None:
    gen = torch.Generator().manual_seed(0)
    model = build_model(
        name="logreg", input_shape=digits.input_shape, num_classes=10, generator=gen
    )
    x, y = _tensors(digits, "train")
    stats = train_plain(model=model, x=x, y=y, epochs=5, batch_size=32, lr=0.05, generator=gen)
    n = len(digits.y_train)  # the per-record holdout keeps about 80% of 1,797
    steps = 5 * -(-n // 32)
    assert stats == TrainStats(steps=steps, examples=5 * n, mean_loss=stats.mean_loss)
    assert 0 < stats.mean_loss < 1.0
    metrics = evaluate(
        model=model, x=_tensors(digits, "test")[0], y=_tensors(digits, "test")[1], num_classes=10
    )
    assert metrics.accuracy > 0.9 and metrics.examples == len(digits.y_test)


def test_training_is_deterministic_for_a_seed(digits: Dataset) -> None:
    x, y = _tensors(digits, "train")

    def run(seed: int) -> list[np.ndarray]:
        gen = torch.Generator().manual_seed(seed)
        model = build_model(name="mlp", input_shape=(1, 8, 8), num_classes=10, generator=gen)
        train_plain(
            model=model,
            x=x[:300],
            y=y[:300],
            epochs=1,
            batch_size=50,
            lr=0.1,
            momentum=0.9,
            generator=gen,
        )
        return get_weights(model)

    a, b, c = run(0), run(0), run(1)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


@pytest.mark.parametrize("training", [True, False])
def test_train_and_evaluate_restore_the_model_mode(digits: Dataset, training: bool) -> None:
    model = build_model(name="cnn", input_shape=(1, 8, 8), num_classes=10)
    model.train(training)
    x, y = _tensors(digits, "test")
    train_plain(
        model=model,
        x=x[:20],
        y=y[:20],
        epochs=1,
        batch_size=10,
        lr=0.01,
        generator=torch.Generator(),
    )
    assert model.training is training
    evaluate(model=model, x=x, y=y, num_classes=10)
    assert model.training is training


def test_evaluate_matches_compute_metrics_for_any_batch_size(digits: Dataset) -> None:
    model = build_model(
        name="mlp",
        input_shape=(1, 8, 8),
        num_classes=10,
        generator=torch.Generator().manual_seed(0),
    )
    x, y = _tensors(digits, "test")
    with torch.no_grad():
        expected = compute_metrics(y_true=y.numpy(), logits=model(x).numpy(), num_classes=10)
    got = evaluate(model=model, x=x, y=y, num_classes=10, batch_size=7)
    assert got.accuracy == expected.accuracy and got.examples == len(y)
    assert got.loss == pytest.approx(expected.loss, rel=1e-6)


def test_divergence_is_reported_with_the_learning_rate(digits: Dataset) -> None:
    model = build_model(name="logreg", input_shape=(1, 8, 8), num_classes=10)
    x, y = _tensors(digits, "train")
    with pytest.raises(ConfigError, match=r"^--lr: expected a smaller learning rate, got 1e\+38 "):
        train_plain(
            model=model, x=x, y=y, epochs=1, batch_size=32, lr=1e38, generator=torch.Generator()
        )
    assert all(np.isfinite(w).all() for w in get_weights(model))  # no NaN step was taken


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 0}, "--batch-size"),
        ({"lr": -0.1}, "--lr"),
        ({"lr": float("inf")}, "--lr"),
        ({"momentum": 1.0}, "--momentum"),
    ],
)
def test_bad_training_options(kwargs: dict[str, object], key: str) -> None:
    model = build_model(name="logreg", input_shape=(4,), num_classes=2)
    opts: dict[str, Any] = {"epochs": 1, "batch_size": 2, "lr": 0.1, **kwargs}
    with pytest.raises(ConfigError, match=f"^{key}: expected"):
        train_plain(
            model=model,
            x=torch.zeros(4, 4),
            y=torch.zeros(4, dtype=torch.long),
            generator=torch.Generator(),
            **opts,
        )


def test_mismatched_or_float_labels_are_data_errors() -> None:
    model = build_model(name="logreg", input_shape=(4,), num_classes=2)
    gen = torch.Generator()
    with pytest.raises(DataError, match=r"got \(4, 4\) and \(3,\)"):
        train_plain(
            model=model,
            x=torch.zeros(4, 4),
            y=torch.zeros(3, dtype=torch.long),
            epochs=1,
            batch_size=2,
            lr=0.1,
            generator=gen,
        )
    with pytest.raises(DataError, match="integer class ids"):
        evaluate(model=model, x=torch.zeros(4, 4), y=torch.zeros(4), num_classes=2)
