"""The built-in model names, without importing torch (option checks run before it)."""

from __future__ import annotations

__all__ = ["MODEL_NAMES"]

MODEL_NAMES: tuple[str, ...] = ("logreg", "mlp", "cnn", "tb_cnn", "scatter_cnn")
"""``logreg``: one linear layer; ``mlp``: one hidden ReLU layer; ``cnn``: two conv
blocks for images (about 26k parameters on 28x28 inputs with 10 classes); ``tb_cnn``:
Tramer & Boneh's (2021) end-to-end DP CNN for (Fashion-)MNIST, strided convolutions and
tanh (26,010 parameters on 28x28 inputs with 10 classes; images of at least 14x14);
``scatter_cnn``: Tramer & Boneh's small CNN on ScatterNet features (the
``fashion_mnist_scattering`` data set: 81 channels of 7x7), per-example GroupNorm, two
3x3 convolutions and tanh (33,066 parameters with 10 classes)."""
