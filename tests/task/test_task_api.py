"""The task API (#16.3): user tasks load through the same checks as the built-ins."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedguard.errors import ConfigError, DataError, RefusalError
from fedguard.privacy.dpsgd import DPTrainer
from fedguard.task.api import (
    LoadRequest,
    RecordTransform,
    Task,
    TaskArrays,
    is_task_spec,
    load_task,
)
from fedguard.task.builtin import build_task_model, builtin_task
from fedguard.task.models import build_model
from fedguard.task.task_checks import load_task_data, make_model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 3)) + 5.0
Y = (X[:, 0] > 5.0).astype(np.int64)


def small_model(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(input_shape[0], 4), nn.Tanh(), nn.Linear(4, num_classes))


def batchnorm_model(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    body = nn.Sequential(nn.Linear(input_shape[0], 4), nn.BatchNorm1d(4), nn.Tanh())
    return nn.Sequential(body, nn.Linear(4, num_classes))


def arrays_task(x: np.ndarray, y: np.ndarray, **kw: object) -> Task:
    return Task(
        name="bank",
        model=small_model,
        load=lambda _r: TaskArrays(x=x, y=y),
        input_shape=(3,),
        num_classes=2,
        **kw,  # type: ignore[arg-type]
    )


REQUEST = LoadRequest(source="rows", seed=0, split="none")


class RunningMean:
    """A 'transform' that centres each record by the mean of the records it has seen:
    fitted to the data set, declared as per record (the attack)."""

    def __init__(self) -> None:
        self.total, self.count = np.zeros(3), 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.total, self.count = self.total + x, self.count + 1
        return x - self.total / self.count


def test_attack_running_mean_transform_leaks_a_neighbour_and_is_refused() -> None:
    # Neighbouring data sets: D and D' = D without record 7. Applied record by record in
    # data order, the running-mean transform gives record 20 another value in D' than in
    # D: record 7 moved another record's features (what the API must not allow).
    def transformed(x: np.ndarray) -> np.ndarray:
        t = RunningMean()
        return np.stack([t(r) for r in x])

    d, d_prime = transformed(X), transformed(np.delete(X, 7, axis=0))
    assert not np.allclose(d[20], d_prime[19])
    task = arrays_task(X, Y, transforms=(RecordTransform(name="centre", apply=RunningMean()),))
    with pytest.raises(ConfigError, match=r"^task bank: transform 'centre' gave record 0 another"):
        load_task_data(task, REQUEST)


def test_a_transform_declared_fitted_is_refused_with_the_dp_way() -> None:
    mean = X.mean(axis=0)  # computed from the records: part of the mechanism
    with pytest.raises(ConfigError, match=r'task bank: transform .* scaling = "dp"'):
        arrays_task(
            X,
            Y,
            transforms=(RecordTransform(name="centre", apply=lambda r: r - mean, fitted=True),),
        )


def test_a_per_record_transform_passes_and_moves_no_other_record() -> None:
    centre = RecordTransform(name="centre", apply=lambda r: (r - 5.0) / 2.0)
    full = load_task_data(arrays_task(X, Y, transforms=(centre,)), REQUEST)
    fewer = load_task_data(
        arrays_task(np.delete(X, 7, 0), np.delete(Y, 7), transforms=(centre,)), REQUEST
    )
    np.testing.assert_array_equal(np.delete(full.x_train, 7, 0), fewer.x_train)
    np.testing.assert_allclose(full.x_train, (X - 5.0) / 2.0, rtol=1e-6)


def test_batchnorm_is_refused_naming_the_layer_and_the_fix() -> None:
    task = Task(
        name="bn", model=batchnorm_model, load=lambda _r: None, input_shape=(3,), num_classes=2
    )
    with pytest.raises(ConfigError) as info:
        make_model(task, input_shape=(3,), num_classes=2)
    text = str(info.value)
    assert text.startswith("task bn: model layer 0.1 (BatchNorm1d) cannot be trained with DP-SGD")
    assert "GroupNorm" in text and "fix = true" in text and "\n" not in text


def test_fix_replaces_batchnorm_with_groupnorm_says_so_and_trains(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec_task = Task(
        name="bn",
        model=batchnorm_model,
        load=lambda _r: None,
        input_shape=(3,),
        num_classes=2,
        fix=True,
    )
    with caplog.at_level(logging.WARNING):
        model = make_model(spec_task, input_shape=(3,), num_classes=2)
    assert isinstance(model.get_submodule("0.1"), nn.GroupNorm)
    assert "replaced 0.1 (BatchNorm1d -> GroupNorm)" in caplog.text
    DPTrainer(model=model)  # real Opacus accepts it


def test_records_are_checked_against_the_declared_shape_and_labels() -> None:
    with pytest.raises(DataError, match=r"^task bank: record 0 of TaskArrays: features have"):
        load_task_data(arrays_task(X[:, :2], Y), REQUEST)
    bad = Y.copy()
    bad[5] = 2
    with pytest.raises(DataError, match=r"^task bank: record 5 of TaskArrays: label 2 is outside"):
        load_task_data(arrays_task(X, bad), REQUEST)


class Pairs(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, broken: int | None = None) -> None:
        self.broken = broken

    def __len__(self) -> int:
        return len(X)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i == self.broken:
            return torch.zeros(3)  # type: ignore[return-value]
        return torch.tensor(X[i]), int(Y[i])


def test_a_map_style_torch_dataset_loads_one_record_at_a_time() -> None:
    task = Task(
        name="torchy", model=small_model, load=lambda _r: Pairs(), input_shape=(3,), num_classes=2
    )
    ds = load_task_data(task, REQUEST)
    np.testing.assert_allclose(ds.x_train, X.astype(np.float32))
    broken = Task(
        name="torchy", model=small_model, load=lambda _r: Pairs(3), input_shape=(3,), num_classes=2
    )
    with pytest.raises(DataError, match=r"^task torchy: record 3 of Pairs: expected a \(features"):
        load_task_data(broken, REQUEST)


def test_builtin_task_builds_the_same_weights_as_build_model() -> None:
    task = builtin_task(model="mlp", hidden=16)
    a = make_model(
        task, input_shape=(30,), num_classes=2, generator=torch.Generator().manual_seed(3)
    )
    b = build_model(
        name="mlp",
        input_shape=(30,),
        num_classes=2,
        hidden=16,
        generator=torch.Generator().manual_seed(3),
    )
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_load_task_names_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^task: expected package.module:attribute"):
        load_task("no_colon")
    with pytest.raises(ConfigError, match=r"cannot import 'fg_absent_pkg.mod' for task"):
        load_task("fg_absent_pkg.mod:task")
    (tmp_path / "fg_user_task.py").write_text(
        textwrap.dedent(
            """
            from fedguard.task.api import Task, TaskArrays
            NOT_A_TASK = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"fg_user_task:NOT_A_TASK \(int\)"):
        load_task("fg_user_task:NOT_A_TASK")
    sys.modules.pop("fg_user_task", None)


def test_a_round_naming_another_task_imports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hostile server names an installed module with side effects as the round's model.
    marker = tmp_path / "imported"
    (tmp_path / "fg_side_effect.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for installed in (None, "credit_task:task"):
        with pytest.raises(RefusalError, match=r"^--model: the request names task 'fg_side"):
            build_task_model(
                name="fg_side_effect:task", installed=installed, input_shape=(3,), num_classes=2
            )
    with pytest.raises(RefusalError, match=r"request names task 'logreg', this process has"):
        build_task_model(
            name="logreg", installed="credit_task:task", input_shape=(3,), num_classes=2
        )
    assert not marker.exists()
    assert isinstance(
        build_task_model(name="logreg", installed=None, input_shape=(3,), num_classes=2),
        nn.Module,
    )


def test_an_in_place_transform_does_not_change_record_keys_or_the_loaders_data():
    """Record keys (the per-record budget's) are the raw records' bytes: a transform that
    works in place (x -= c, legal numpy) must not make them follow its constant, which
    gave the same records a fresh budget under another constant (red team)."""
    x0 = np.arange(12, dtype=np.float64).reshape(6, 2)
    y0 = np.array([0, 1] * 3)

    def keys(c: float) -> np.ndarray:
        def shift(x: np.ndarray) -> np.ndarray:
            x -= c
            return x

        loaded = x0.copy()
        task = Task(
            name="t",
            model=lambda **k: nn.Linear(2, 2),
            load=lambda r: TaskArrays(x=loaded, y=y0),
            input_shape=(2,),
            num_classes=2,
            transforms=(RecordTransform(name="shift", apply=shift),),
        )
        data = load_task_data(task, LoadRequest(source="m", seed=0, split="none"))
        assert np.array_equal(loaded, x0)  # the loader's arrays untouched
        return data.train_record_keys

    assert np.array_equal(keys(0.5), keys(0.25))


def test_a_task_name_with_a_trailing_newline_is_not_a_task_spec():
    assert is_task_spec("credit_task:task")
    assert not is_task_spec("credit_task:task\n")
