"""The 2-D wavelet scattering transform (Bruna & Mallat 2013), a fixed feature extractor.

Tramer & Boneh (2021, "Differentially Private Learning Needs Better Features") train DP
models on ScatterNet features rather than pixels: the transform has no learned weights
and is applied to each image on its own, so it costs no privacy budget, and a small CNN
on its output reaches a better accuracy at a given epsilon than an end-to-end CNN.

This follows Kymatio's ``Scattering2D`` (Andreux et al. 2020), which T&B used, in pure
PyTorch so that nothing beyond torch is needed: Morlet wavelets at ``J`` scales and
``L`` angles built in the Fourier domain on the reflect-padded image, modulus, then a
Gaussian low-pass and subsampling by ``2**J``; scattering of order 0, 1 and 2. With
``J = 2`` and ``L = 8`` an image channel becomes ``1 + J*L + L*L*J*(J-1)/2 = 81``
channels of ``H/4 x W/4``. ``tests/task/test_scattering.py`` checks it against values
Kymatio 0.3.0 computed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional

__all__ = ["Scattering2D", "scatter_images", "scattering_channels"]


def scattering_channels(*, scales: int, angles: int) -> int:
    """Output channels per input channel: orders 0, 1 and 2."""
    return 1 + scales * angles + angles * angles * scales * (scales - 1) // 2


def scatter_images(images: np.ndarray, *, scales: int, angles: int, chunk: int = 25) -> np.ndarray:
    """Scattering features of ``(N, C, H, W)`` float images, as float32, on the CPU.

    ``chunk`` images at a time: small chunks keep the complex intermediates in cache
    (25: ~0.6 ms an image on one core for 28x28, J = 2; 200: twice that). Runs on one
    torch thread and restores the caller's thread count.
    """
    _, _, height, width = images.shape
    transform = Scattering2D(height=height, width=width, scales=scales, angles=angles)
    out = []
    # One torch thread: the FFTs of a chunk are too small to share, and where processes
    # share cores (two sweeps, nodes on one box) OpenMP's spin-waits made 2 threads 5x
    # slower than 1 (16.6 s vs 3.4 s for 5,000 images; alone 2 threads take 1.9 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for start in range(0, len(images), chunk):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk]))
                out.append(transform(batch).numpy())
    finally:
        torch.set_num_threads(threads)
    if not out:
        k = scattering_channels(scales=scales, angles=angles) * images.shape[1]
        return np.zeros((0, k, height // 2**scales, width // 2**scales), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


class Scattering2D(nn.Module):
    """Scattering of order 2: ``(N, C, H, W)`` -> ``(N, C * K, H / 2**J, W / 2**J)``.

    ``H`` and ``W`` must be multiples of ``2**J``, at least ``2 * 2**J``. No parameters:
    the filters are buffers, so the module moves with ``.to(device)`` and is never trained.
    """

    def __init__(self, *, height: int, width: int, scales: int = 2, angles: int = 8) -> None:
        super().__init__()
        if scales < 1 or angles < 1:
            raise ValueError(f"scales, angles: expected integers >= 1, got {scales}, {angles}")
        step = 2**scales
        # The reflect padding needs sides longer than 2**J: at least 2 * 2**J.
        if height % step or width % step or min(height, width) < 2 * step:
            raise ValueError(
                f"image size: expected multiples of 2**scales = {step}, at least {2 * step}, "
                f"got {height}x{width}"
            )
        self.scales, self.angles = scales, angles
        self.height, self.width = height, width
        # Padded size as Kymatio: room for the widest filter, a multiple of 2**J.
        self._padded = ((height + step) // step + 1) * step, ((width + step) // step + 1) * step
        rows, cols = self._padded
        self._pad = (
            (cols - width) // 2,
            (cols - width + 1) // 2,
            (rows - height) // 2,
            (rows - height + 1) // 2,
        )
        for j in range(scales):
            # Levels > 0 are only used to filter order-1 maps already subsampled by 2**j1.
            for level in range(min(j + 1, max(scales - 1, 1))):
                bank = [
                    _periodize(_morlet_fourier(rows, cols, j=j, theta=t, angles=angles), level)
                    for t in range(angles)
                ]
                self.register_buffer(f"psi_{j}_{level}", torch.from_numpy(np.stack(bank)))
        phi = _gabor(rows, cols, sigma=0.8 * 2 ** (scales - 1), theta=0.0, xi=0.0, slant=1.0)
        phi_fourier = np.fft.fft2(phi).real.astype(np.float32)
        for level in range(scales):
            self.register_buffer(f"phi_{level}", torch.from_numpy(_periodize(phi_fourier, level)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        if (h, w) != (self.height, self.width):
            raise ValueError(f"images: expected {self.height}x{self.width}, got {h}x{w}")
        x = functional.pad(images.reshape(n * c, 1, h, w), self._pad, mode="reflect")
        spectrum = torch.fft.fft2(x.to(torch.float32))  # (B, 1, rows, cols)
        order0 = self._low_pass(spectrum, level=0)
        order1: list[torch.Tensor] = []
        order2: list[torch.Tensor] = []
        for j1 in range(self.scales):
            u1 = spectrum * self._psi(j1, 0)  # (B, L, rows, cols)
            u1 = torch.fft.fft2(torch.fft.ifft2(_subsample(u1, 2**j1)).abs())
            order1.append(self._low_pass(u1, level=j1))
            by_j2 = []
            for j2 in range(j1 + 1, self.scales):
                # Every (theta1, theta2) pair: (B, L, 1, ...) x (L, ...) -> (B, L, L, ...).
                u2 = u1.unsqueeze(2) * self._psi(j2, j1)
                u2 = torch.fft.fft2(torch.fft.ifft2(_subsample(u2, 2 ** (j2 - j1))).abs())
                by_j2.append(self._low_pass(u2, level=j2))
            # Kymatio's order within order 2: j1, theta1, j2, theta2.
            order2.extend(block[:, t1] for t1 in range(self.angles) for block in by_j2)
        out = torch.cat([order0, *order1, *order2], dim=1)
        return out.reshape(n, -1, *out.shape[-2:])

    def _psi(self, j: int, level: int) -> torch.Tensor:
        return getattr(self, f"psi_{j}_{level}")

    def _low_pass(self, spectrum: torch.Tensor, *, level: int) -> torch.Tensor:
        filtered = _subsample(spectrum * getattr(self, f"phi_{level}"), 2 ** (self.scales - level))
        return torch.fft.ifft2(filtered).real[..., 1:-1, 1:-1]


def _subsample(spectrum: torch.Tensor, k: int) -> torch.Tensor:
    """Subsampling by ``k`` in space is periodisation (folding) in frequency."""
    if k == 1:
        return spectrum
    rows, cols = spectrum.shape[-2] // k, spectrum.shape[-1] // k
    # k * k slice additions: much faster than a mean over two strided complex axes.
    out = spectrum[..., :rows, :cols].clone()
    for i in range(k):
        for j in range(k):
            if i or j:
                out += spectrum[..., i * rows : (i + 1) * rows, j * cols : (j + 1) * cols]
    return out / (k * k)


def _periodize(fourier: np.ndarray, level: int) -> np.ndarray:
    """Crop a filter for maps subsampled by ``2**level``: zero the frequencies the
    subsampling aliases, then fold."""
    if level == 0:
        return fourier.astype(np.float32)
    rows, cols = fourier.shape
    k = 2**level
    masked = fourier.copy()
    start_r, len_r = int(rows * 2 ** (-level - 1)), int(rows * (1 - 2**-level))
    start_c, len_c = int(cols * 2 ** (-level - 1)), int(cols * (1 - 2**-level))
    masked[start_r : start_r + len_r, :] = 0
    masked[:, start_c : start_c + len_c] = 0
    return masked.reshape(k, rows // k, k, cols // k).sum(axis=(0, 2)).astype(np.float32)


def _morlet_fourier(rows: int, cols: int, *, j: int, theta: int, angles: int) -> np.ndarray:
    """Real part of the Fourier transform of the Morlet wavelet of scale ``j``, angle
    index ``theta``: a Gabor filter minus the Gaussian that makes its mean exactly zero."""
    sigma = 0.8 * 2**j
    angle = (int(angles - angles / 2 - 1) - theta) * math.pi / angles
    xi = 3.0 / 4.0 * math.pi / 2**j
    slant = 4.0 / angles
    wave = _gabor(rows, cols, sigma=sigma, theta=angle, xi=xi, slant=slant)
    envelope = _gabor(rows, cols, sigma=sigma, theta=angle, xi=0.0, slant=slant)
    morlet = wave - (wave.sum() / envelope.sum()) * envelope
    return np.fft.fft2(morlet).real


def _gabor(
    rows: int, cols: int, *, sigma: float, theta: float, xi: float, slant: float
) -> np.ndarray:
    """A Gabor filter on a ``rows x cols`` torus (summed over 5x5 periods), in space."""
    cos, sin = math.cos(theta), math.sin(theta)
    rotation = np.array([[cos, -sin], [sin, cos]])
    curvature = rotation @ np.diag([1.0, slant * slant]) @ rotation.T / (2 * sigma * sigma)
    out = np.zeros((rows, cols), np.complex128)
    for ex in range(-2, 3):
        for ey in range(-2, 3):
            xx, yy = np.mgrid[ex * rows : (ex + 1) * rows, ey * cols : (ey + 1) * cols]
            quadratic = (
                curvature[0, 0] * xx * xx
                + (curvature[0, 1] + curvature[1, 0]) * xx * yy
                + curvature[1, 1] * yy * yy
            )
            out += np.exp(-quadratic + 1j * xi * (xx * cos + yy * sin))
    return out / (2 * math.pi * sigma * sigma / slant)
