"""Write a seeded folder of small grayscale PNG scans, one sub-folder per class.

    python make_images.py --out data/scans --per-class 80 --seed 0

normal: noise only; nodule: a bright round spot somewhere; effusion: a bright band at
the bottom of the image. 16x16 pixels, 8-bit grayscale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("normal", "nodule", "effusion")
SIDE = 16


def scan(kind: int, rng: np.random.Generator) -> np.ndarray:
    img = rng.normal(70, 18, size=(SIDE, SIDE))
    yy, xx = np.mgrid[:SIDE, :SIDE]
    if kind == 1:
        cy, cx = rng.integers(3, SIDE - 3, size=2)
        img += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.6**2))
    elif kind == 2:
        top = rng.integers(9, 13)
        img += np.where(yy >= top, 90, 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def make(out: Path, *, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(scan(k, rng), mode="L").save(folder / f"{name}-{i:04d}.png")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/scans"))
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {make(args.out, per_class=args.per_class, seed=args.seed)}")
