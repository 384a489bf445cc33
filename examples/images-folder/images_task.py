"""A hospital's scan-classification task for fedguard: images in class folders.

Name it as ``task = "images_task:task"`` (this folder on ``PYTHONPATH``, or installed).
The data is ``<folder>/<class>/*.png``; the class list is declared here (public), never
discovered from the folders a node happens to hold. Each image is read when its record
is asked for and transformed on its own with public constants (to [0, 1], then
standardised by published values), so nothing fitted to the records runs before DP-SGD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from fedguard.errors import DataError
from fedguard.task.api import LoadRequest, RecordTransform, Task

CLASSES = ("normal", "nodule", "effusion")
SHAPE = (1, 16, 16)
PIXEL_MEAN, PIXEL_STD = 0.30, 0.20  # public constants for this scanner type


class ScanFolders(torch.utils.data.Dataset[tuple[np.ndarray, int]]):
    """A map-style data set over ``root/<class>/*.png``: one file read per record."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise DataError(f"images_task: {root} is not a folder of class folders")
        unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in CLASSES)
        if unknown:
            raise DataError(f"images_task: {root} has folders {unknown}, classes are {CLASSES}")
        self.files = [
            (path, label)
            for label, name in enumerate(CLASSES)
            for path in sorted((root / name).glob("*.png"))
        ]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.files[i]
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("L"), dtype=np.float64)
        return pixels[None], label


def model(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A small CNN; GroupNorm normalises within one image (BatchNorm would mix a batch)."""
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 8, kernel_size=3, padding=1),
        nn.GroupNorm(2, 8),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.GroupNorm(4, 16),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, num_classes),
    )


def load(request: LoadRequest) -> ScanFolders:
    return ScanFolders(Path(request.source))


task = Task(
    name="scan-classes",
    model=model,
    load=load,
    input_shape=SHAPE,
    num_classes=len(CLASSES),
    class_names=CLASSES,
    transforms=(
        RecordTransform(name="to-unit", apply=lambda x: x / 255.0),
        RecordTransform(name="standardise", apply=lambda x: (x - PIXEL_MEAN) / PIXEL_STD),
    ),
)
