"""Models (Opacus-compatible, deterministic init), weight exchange, and the public API."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from fedguard.errors import ConfigError
from fedguard.task.models import MODEL_NAMES, build_model
from fedguard.task.weights import get_weights, set_weights

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 5, 7), (30,)]
IMAGE_MODELS = ("cnn", "tb_cnn", "scatter_cnn")
# tb_cnn takes images of at least 14x14; (3, 15, 17) checks odd, non-square sides.
TB_SHAPES = [(1, 28, 28), (3, 15, 17), (1, 14, 14)]
# scatter_cnn: ScatterNet features of 28x28 images (81x7x7), odd sides, a 2x2 map.
SCATTER_SHAPES = [(81, 7, 7), (3, 5, 7), (6, 2, 2)]
OWN_SHAPES = {"tb_cnn": TB_SHAPES, "scatter_cnn": SCATTER_SHAPES}
CASES = [(n, s) for n in MODEL_NAMES for s in OWN_SHAPES.get(n, SHAPES)]
CASES = [(n, s) for n, s in CASES if not (n in IMAGE_MODELS and len(s) == 1)]


def _seed_shape(name: str) -> tuple[int, ...]:
    return {"tb_cnn": (1, 28, 28), "scatter_cnn": (81, 7, 7)}.get(name, (1, 8, 8))


def _model(name: str = "mlp", shape: tuple[int, ...] = (30,), seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    return build_model(name=name, input_shape=shape, num_classes=3, generator=gen)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_opacus_accepts_model_and_forward_shape(name: str, shape: tuple[int, ...]) -> None:
    model = _model(name, shape)
    assert ModuleValidator.validate(model, strict=True) == []
    assert model(torch.randn(5, *shape)).shape == (5, 3)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # inputs need no grad
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_per_sample_gradients_work_in_opacus(name: str) -> None:
    shape = _seed_shape(name)
    model = GradSampleModule(_model(name, shape))
    out = model(torch.randn(4, *shape))
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0])).backward()
    for p in model.parameters():
        assert p.grad_sample is not None and p.grad_sample.shape == (4, *p.shape)


def test_cnn_size_on_fashion_mnist() -> None:
    model = build_model(name="cnn", input_shape=(1, 28, 28), num_classes=10)
    assert 20_000 < sum(p.numel() for p in model.parameters()) < 30_000


def test_tb_cnn_is_tramer_boneh_architecture_on_fashion_mnist() -> None:
    model = build_model(name="tb_cnn", input_shape=(1, 28, 28), num_classes=10)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [
        (16, 1, 8, 8),
        (16,),
        (32, 16, 4, 4),
        (32,),
        (32, 512),
        (32,),
        (10, 32),
        (10,),
    ]
    assert sum(p.numel() for p in model.parameters()) == 26_010
    assert sum(isinstance(m, torch.nn.Tanh) for m in model.modules()) == 3


def test_scatter_cnn_is_tramer_boneh_scatternet_cnn() -> None:
    model = build_model(name="scatter_cnn", input_shape=(81, 7, 7), num_classes=10)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [
        (16, 81, 3, 3),
        (16,),
        (32, 16, 3, 3),
        (32,),
        (32, 512),
        (32,),
        (10, 32),
        (10,),
    ]
    assert sum(p.numel() for p in model.parameters()) == 33_066
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.GroupNorm))
    assert (norm.num_groups, norm.affine) == (27, False)  # per example, nothing learned
    # Each example is normalised on its own: scaling one example's features leaves its
    # output unchanged and never moves another example's.
    x = torch.rand(3, 81, 7, 7)
    scaled = x.clone()
    scaled[1] *= 10.0
    torch.testing.assert_close(model(scaled), model(x), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "shape", "allowed"),
    [
        ("tb_cnn", (30,), "logreg or mlp for tabular data"),
        ("tb_cnn", (1, 13, 28), "cnn for images smaller than 14x14"),
        ("tb_cnn", (1, 8, 8), "cnn for images smaller than 14x14"),
        ("scatter_cnn", (30,), "logreg or mlp for tabular data"),
        ("scatter_cnn", (1, 28, 28), "cnn for inputs whose channels are a multiple of 3"),
        ("scatter_cnn", (80, 7, 7), "cnn for inputs whose channels are a multiple of 3"),
    ],
)
def test_image_models_refuse_inputs_they_cannot_take(
    name: str, shape: tuple[int, ...], allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(name=name, input_shape=shape, num_classes=10)
    assert str(info.value) == f"--model: expected {allowed}, got {name!r}"


def test_mlp_hidden_width_is_configurable() -> None:
    model = build_model(name="mlp", input_shape=(30,), num_classes=2, hidden=7)
    assert [tuple(p.shape) for p in model.parameters()] == [(7, 30), (7,), (2, 7), (2,)]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_generator_seed_same_weights_and_global_rng_untouched(name: str) -> None:
    torch.manual_seed(99)
    before = torch.get_rng_state()
    a, b, c = (get_weights(_model(name, _seed_shape(name), seed)) for seed in (5, 5, 6))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_cnn_on_tabular_data_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(name="cnn", input_shape=(30,), num_classes=2)
    assert str(info.value) == "--model: expected logreg or mlp for tabular data, got 'cnn'"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"name": "resnet"}, "--model"),
        ({"input_shape": (8, 8)}, "input_shape"),
        ({"input_shape": (0,)}, "input_shape"),
        ({"num_classes": 1}, "num_classes"),
        ({"hidden": 0}, "hidden"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], key: str) -> None:
    opts: dict[str, object] = {"name": "mlp", "input_shape": (30,), "num_classes": 2, **kwargs}
    with pytest.raises(ConfigError, match=f"^{key}: expected"):
        build_model(**opts)  # type: ignore[arg-type]


# ---------------------------------------------------------------- weights


def test_get_weights_are_float32_copies_in_state_dict_order() -> None:
    model = _model("cnn", (1, 8, 8))
    weights = get_weights(model)
    names = list(model.state_dict())
    assert len(weights) == len(names)
    assert all(w.dtype == np.float32 for w in weights)
    assert [w.shape for w in weights] == [tuple(t.shape) for t in model.state_dict().values()]
    weights[0][...] = 42.0  # must not reach the model
    assert not torch.any(model.state_dict()[names[0]] == 42.0)


def test_set_weights_round_trip() -> None:
    src, dst = _model(seed=1), _model(seed=2)
    set_weights(dst, get_weights(src))
    x = torch.randn(4, 30)
    assert torch.equal(src(x), dst(x))


def test_set_weights_rejects_wrong_count() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"expected 4 arrays .* got 3"):
        set_weights(model, get_weights(model)[:3])


def test_set_weights_rejects_wrong_shape_naming_the_parameter() -> None:
    model = _model()
    weights = get_weights(model)
    weights[2] = np.zeros((3, 5), dtype=np.float32)
    with pytest.raises(ValueError) as info:
        set_weights(model, weights)
    assert (
        str(info.value) == "set_weights: parameter '3.weight': expected shape (3, 128), got (3, 5)"
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_set_weights_rejects_non_finite_and_leaves_model_unchanged(bad: float) -> None:
    model = _model()
    original = get_weights(model)
    weights = [w + 1.0 for w in original]
    weights[3][1] = bad
    with pytest.raises(ValueError, match=r"parameter '3\.bias': contains NaN or infinite"):
        set_weights(model, weights)
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(model), original, strict=True))


# ---------------------------------------------------------------- public API


@pytest.mark.parametrize(
    "module",
    [
        "fedguard.task",
        "fedguard.task.data",
        "fedguard.task.partition",
        "fedguard.task.models",
        "fedguard.task.metrics",
        "fedguard.task.train",
        "fedguard.task.weights",
    ],
)
def test_every_name_in_all_exists(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__all__ and all(hasattr(mod, name) for name in mod.__all__)
    namespace: dict[str, object] = {}
    exec(f"from {module} import *", namespace)  # the star-import users will do
    assert set(mod.__all__) <= set(namespace)
