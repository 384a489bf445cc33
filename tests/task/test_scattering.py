"""The scattering transform: Kymatio's known answers, its invariants, and the data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedguard.task.scattering import Scattering2D, scatter_images, scattering_channels

VECTORS = Path(__file__).parents[1] / "vectors" / "scattering.json"


def _pattern() -> np.ndarray:
    """The input ``scattering.json`` was computed from (its "input" field)."""
    i, j = np.mgrid[0:28, 0:28]
    return (((i * 7 + j * 3) % 11) / 10.0 + np.sin(i / 3.0) * np.cos(j / 5.0)).astype(np.float32)


def test_matches_kymatio_known_answers() -> None:
    expected = json.loads(VECTORS.read_text())
    out = Scattering2D(height=28, width=28, scales=2, angles=8)(
        torch.from_numpy(_pattern()[None, None])
    )
    assert out.shape == (1, 81, 7, 7)
    # Kymatio divides by 3.1415 where we use pi: relative differences ~3e-5.
    np.testing.assert_allclose(
        out[0].sum(dim=(-1, -2)).numpy(), expected["channel_sums"], rtol=2e-4
    )
    np.testing.assert_allclose(
        out[0, :, 3, 4].numpy(), expected["at_row_3_col_4"], rtol=2e-4, atol=1e-6
    )


@pytest.mark.parametrize(
    ("channels", "height", "width", "scales", "angles"),
    [(1, 28, 28, 2, 8), (3, 16, 16, 2, 4), (1, 32, 24, 3, 8), (2, 8, 12, 1, 6)],
)
def test_output_shape_and_channel_count(
    channels: int, height: int, width: int, scales: int, angles: int
) -> None:
    k = scattering_channels(scales=scales, angles=angles)
    assert k == 1 + scales * angles + angles**2 * scales * (scales - 1) // 2
    transform = Scattering2D(height=height, width=width, scales=scales, angles=angles)
    assert list(transform.parameters()) == []  # nothing to train
    out = transform(torch.rand(5, channels, height, width))
    assert out.shape == (5, channels * k, height // 2**scales, width // 2**scales)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_each_image_is_transformed_on_its_own() -> None:
    images = torch.rand(6, 1, 28, 28)
    transform = Scattering2D(height=28, width=28)
    together = transform(images)
    alone = torch.cat([transform(images[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_constant_image_has_no_wavelet_energy() -> None:
    # Morlet wavelets have zero mean and the low-pass has unit gain: a constant image
    # scatters to the constant (order 0) and nothing else.
    out = Scattering2D(height=28, width=28)(torch.full((1, 1, 28, 28), 0.7))
    torch.testing.assert_close(out[0, 0], torch.full((7, 7), 0.7), rtol=1e-4, atol=1e-5)
    assert out[0, 1:].abs().max() < 1e-4


def test_order_one_energy_is_preserved_under_small_translation_better_than_pixels() -> None:
    # Scattering is locally translation invariant (below 2**J pixels); pixels are not.
    image = torch.from_numpy(_pattern()[None, None])
    shifted = torch.roll(image, shifts=1, dims=-1)
    transform = Scattering2D(height=28, width=28)
    feature_change = (transform(shifted) - transform(image)).norm() / transform(image).norm()
    pixel_change = (shifted - image).norm() / image.norm()
    assert feature_change < pixel_change / 3


@pytest.mark.parametrize(
    ("height", "width", "scales"), [(28, 30, 2), (6, 6, 3), (12, 20, 3), (4, 8, 2), (8, 8, 3)]
)
def test_sizes_not_multiple_of_two_to_the_scales_or_too_small_are_refused(
    height: int, width: int, scales: int
) -> None:
    step = 2**scales
    expected = rf"expected multiples of 2\*\*scales = {step}, at least {2 * step}, "
    with pytest.raises(ValueError, match=expected + rf"got {height}x{width}$"):
        Scattering2D(height=height, width=width, scales=scales)


def test_scatter_images_does_not_depend_on_chunking() -> None:
    images = np.random.default_rng(0).random((7, 1, 28, 28), dtype=np.float32)
    a = scatter_images(images, scales=2, angles=8, chunk=3)
    b = scatter_images(images, scales=2, angles=8, chunk=25)
    assert a.shape == (7, 81, 7, 7) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    empty = scatter_images(images[:0], scales=2, angles=8)
    assert empty.shape == (0, 81, 7, 7)


def test_scatter_images_leaves_the_callers_thread_count() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scatter_images(np.zeros((2, 1, 8, 8), np.float32), scales=2, angles=4)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
