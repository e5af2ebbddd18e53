"""A tiny synthetic abdominal "anatomy" for the metric tests: label maps, images and an encoder.

Axial-like 32x32 slices (rows: anterior at the top). Every slice has a liver (image-left), a
spleen (image-right) and a vertebral bone ring (one hole); caudal slices add two kidneys, cranial
slices (40 %) two lung bases instead, so kidney and lung are never seen together. Sizes and
positions vary per slice; organs never overlap, so the rules hold by construction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CLASS_NAMES = ["background", "liver", "spleen", "kidney", "bone", "lung"]
LIVER, SPLEEN, KIDNEY, BONE, LUNG = 1, 2, 3, 4, 5
INTENSITY = {0: -0.3, LIVER: 0.3, SPLEEN: 0.45, KIDNEY: 0.6, BONE: 0.95, LUNG: -0.85}


def _ellipses(rows: np.ndarray, cols: np.ndarray, centre_r, centre_c, radius_r, radius_c) -> np.ndarray:
    """(N, H, W) bool: per-sample ellipses with (N,) parameters."""
    r = (rows[None] - centre_r[:, None, None]) / radius_r[:, None, None]
    c = (cols[None] - centre_c[:, None, None]) / radius_c[:, None, None]
    return r ** 2 + c ** 2 <= 1.0


def synthetic_masks(num: int, seed: int, size: int = 32) -> np.ndarray:
    """``(num, size, size)`` int64 label maps (classes of ``CLASS_NAMES``)."""
    rng = np.random.default_rng(seed)
    scale = size / 32.0
    grid = (np.arange(size) + 0.5) / scale
    rows, cols = np.meshgrid(grid, grid, indexing="ij")  # in 32-pixel units

    def u(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, num)

    masks = np.zeros((num, size, size), dtype=np.int64)
    cranial = rng.random(num) < 0.4
    masks[_ellipses(rows, cols, u(12, 14), u(8, 10), u(3.5, 4.5), u(3.5, 4.5))] = LIVER
    radius = u(2.2, 3.0)
    masks[_ellipses(rows, cols, u(11, 13), u(23, 25), radius, radius)] = SPLEEN
    centre_r, centre_c = u(26, 27), u(15.5, 16.5)
    ring = (_ellipses(rows, cols, centre_r, centre_c, *(2 * [u(3.0, 3.6)]))
            & ~_ellipses(rows, cols, centre_r, centre_c, *(2 * [u(1.2, 1.6)])))
    masks[ring] = BONE
    for low, high in ((8, 9), (23, 24)):
        radius = u(1.8, 2.4)
        kidney = _ellipses(rows, cols, u(21, 22), u(low, high), radius, radius)
        masks[kidney & ~cranial[:, None, None]] = KIDNEY
    for low, high in ((8, 10), (22, 24)):
        lung = _ellipses(rows, cols, u(3, 4), u(low, high), u(1.5, 2.0), u(3.0, 4.0))
        masks[lung & cranial[:, None, None]] = LUNG
    return masks


def synthetic_images(masks: np.ndarray, seed: int, noise: float = 0.05) -> torch.Tensor:
    """``(N, 1, H, W)`` float images in [-1, 1]: class intensities, texture and noise."""
    rng = np.random.default_rng(seed)
    lookup = np.array([INTENSITY[c] for c in range(len(CLASS_NAMES))])
    images = lookup[masks] + noise * rng.standard_normal(masks.shape)
    images += 0.05 * np.sin(np.arange(masks.shape[2]) * rng.uniform(0.5, 1.5, (masks.shape[0], 1, 1)))
    return torch.from_numpy(np.clip(images, -1, 1)).float().unsqueeze(1)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, 1, H, W)`` images (reflect padding)."""
    radius = max(1, int(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    taps = taps / taps.sum()
    padded = nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = nn.functional.conv2d(padded, taps.view(1, 1, 1, -1))
    return nn.functional.conv2d(out, taps.view(1, 1, -1, 1))


def random_encoder(seed: int = 0, width: int = 32) -> nn.Module:
    """A small fixed random conv encoder: ``(N, 1, H, W)`` -> ``(N, width, H / 4, W / 4)``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
    ).eval()
