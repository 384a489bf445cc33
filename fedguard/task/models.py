"""Small models that Opacus can train privately.

Every model here passes ``opacus.validators.ModuleValidator.validate(model, strict=True)``:
no BatchNorm (it mixes examples of a batch, so per-example gradients and the DP
guarantee would not hold); GroupNorm normalises within one example instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedguard.errors import invalid
from fedguard.task.model_names import MODEL_NAMES

__all__ = ["MODEL_NAMES", "build_model"]

TB_CNN_MIN_SIDE = 14
"""Smallest image side ``tb_cnn`` takes: two stride-2 convolutions and two 2x2 pools."""

SCATTER_GROUP = 3
"""``scatter_cnn`` normalises its input in groups of this many channels (T&B: 81 / 27)."""


def build_model(
    *,
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    generator: torch.Generator | None = None,
    hidden: int = 128,
    key: str = "--model",
) -> nn.Module:
    """Build a freshly initialised model.

    Parameters
    ----------
    name
        One of :data:`MODEL_NAMES`.
    input_shape
        Shape of one example: ``(F,)`` for tabular data, ``(C, H, W)`` for images.
    num_classes
        Number of output logits (>= 2).
    generator
        Seeds the initialisation; the same generator state gives the same weights and
        the global torch RNG is left untouched. ``None`` draws from the global RNG, as
        plain PyTorch does.
    hidden
        Width of the ``mlp`` hidden layer.
    key
        How the caller's user named the model in an error: the simulate option by default,
        ``federation.toml: task.model`` for a deployment.

    Raises
    ------
    ConfigError
        Unknown name, ``cnn`` for tabular data, or a bad shape/size.
    """
    if name not in MODEL_NAMES:
        raise invalid(key, allowed=MODEL_NAMES, got=name)
    shape = tuple(int(d) if isinstance(d, np.integer) else d for d in input_shape)
    if len(shape) not in (1, 3) or not all(_is_int(d) and d >= 1 for d in shape):
        raise invalid("input_shape", allowed="(F,) or (C, H, W) of positive integers", got=shape)
    if not _is_int(num_classes) or num_classes < 2:
        raise invalid("num_classes", allowed="an integer >= 2", got=num_classes)
    if not _is_int(hidden) or hidden < 1:
        raise invalid("hidden", allowed="an integer >= 1", got=hidden)
    if name in ("cnn", "tb_cnn", "scatter_cnn"):
        if len(shape) != 3:
            raise invalid(key, allowed="logreg or mlp for tabular data", got=name)
        if min(shape[1:]) < 2:
            raise invalid(key, allowed="cnn for images of at least 2x2 pixels", got=name)
    if name == "tb_cnn" and min(shape[1:]) < TB_CNN_MIN_SIDE:
        side = TB_CNN_MIN_SIDE
        raise invalid(key, allowed=f"cnn for images smaller than {side}x{side}", got=name)
    if name == "scatter_cnn" and shape[0] % SCATTER_GROUP:
        allowed = f"cnn for inputs whose channels are a multiple of {SCATTER_GROUP}"
        raise invalid(key, allowed=allowed, got=name)
    if generator is None:
        return _build(name, shape, num_classes, hidden)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    # fork_rng restores the global CPU RNG on exit; devices=[] leaves CUDA RNGs alone
    # (layers are built on the CPU).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(name, shape, num_classes, hidden)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _build(name: str, shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Module:
    features = math.prod(shape)
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )
    if name == "tb_cnn":
        return _TramerBonehCNN(shape, num_classes)
    if name == "scatter_cnn":
        return _ScatterCNN(shape, num_classes)
    return _SmallCNN(shape[0], num_classes)


class _SmallCNN(nn.Sequential):
    """conv3x3(16)-GN-tanh-maxpool2, conv3x3(32)-GN-tanh, adaptive-avgpool 4x4, FC 40, FC.

    Tanh rather than ReLU: bounded activations keep clipped DP-SGD gradients informative
    (Papernot et al. 2021, "Tempered Sigmoid Activations for Deep Learning with
    Differential Privacy"). The adaptive pool makes one architecture fit 8x8 digits and
    28x28 Fashion-MNIST alike.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(channels, 16, kernel_size=3, padding=1),
            nn.GroupNorm(4, 16),
            nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.GroupNorm(4, 32),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 40),
            nn.Tanh(),
            nn.Linear(40, num_classes),
        )


class _TramerBonehCNN(nn.Sequential):
    """conv8x8(16, stride 2, pad 3)-tanh-maxpool2(stride 1), conv4x4(32, stride 2)-tanh-
    maxpool2(stride 1), FC 32-tanh, FC: the end-to-end CNN of Tramer & Boneh 2021
    ("Differentially Private Learning Needs Better Features (or Much More Data)", Table 9;
    from Papernot et al. 2021), 86.0% on Fashion-MNIST at epsilon 3 trained centrally.

    No normalisation layer, as in the paper (inputs are standardised by the loader). The
    strided convolutions make it about 3x cheaper per DP-SGD step than ``cnn`` on 28x28.
    """

    def __init__(self, shape: tuple[int, ...], num_classes: int) -> None:
        channels, height, width = shape

        def side(n: int) -> int:
            n = (n + 2 * 3 - 8) // 2 + 1 - 1  # conv1, then the stride-1 pool
            return (n - 4) // 2 + 1 - 1  # conv2, then the stride-1 pool

        super().__init__(
            nn.Conv2d(channels, 16, kernel_size=8, stride=2, padding=3),
            nn.Tanh(),
            nn.MaxPool2d(2, stride=1),
            nn.Conv2d(16, 32, kernel_size=4, stride=2),
            nn.Tanh(),
            nn.MaxPool2d(2, stride=1),
            nn.Flatten(),
            nn.Linear(32 * side(height) * side(width), 32),
            nn.Tanh(),
            nn.Linear(32, num_classes),
        )


class _ScatterCNN(nn.Sequential):
    """GroupNorm(C/3 groups, no affine)-conv3x3(16, stride 2, pad 1)-tanh-conv3x3(32, pad
    1)-tanh, FC 32-tanh, FC: Tramer & Boneh 2021's "ScatterNet + CNN" for (Fashion-)MNIST
    (their ``MNIST_CNN`` on 81x7x7 scattering features with GroupNorm of 27 groups); their
    ScatterNet models reach ~89% on Fashion-MNIST at epsilon 3 trained centrally.

    The GroupNorm normalises each example's own features (no statistics across records,
    so no privacy cost); without it the scattering channels' scales differ by orders of
    magnitude.
    """

    def __init__(self, shape: tuple[int, ...], num_classes: int) -> None:
        channels, height, width = shape

        def side(n: int) -> int:
            return (n + 2 - 3) // 2 + 1  # conv1 (stride 2); conv2 keeps the size

        super().__init__(
            nn.GroupNorm(channels // SCATTER_GROUP, channels, affine=False),
            nn.Conv2d(channels, 16, kernel_size=3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(16, 32, kernel_size=3, stride=1, padding=1),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(32 * side(height) * side(width), 32),
            nn.Tanh(),
            nn.Linear(32, num_classes),
        )
