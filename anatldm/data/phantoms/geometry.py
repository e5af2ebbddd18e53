"""The phantoms' shared geometry toolkit: the display-space grid, smooth random fields and
elastic warps, implicit shapes, tissue rendering and the intensity grid (:func:`_quantise`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

__all__ = ["INTENSITY_STEP"]


#: grid of the written intensities (HU for CT)
INTENSITY_STEP = 1 / 64


def _quantise(x: np.ndarray, step: float = INTENSITY_STEP) -> np.ndarray:
    """``x`` rounded to the nearest multiple of ``step`` (a power of two: exact arithmetic).

    Float64 results of the same computation differ across CPUs by ~1e-16 relative (SIMD
    ``exp``/``sin``/BLAS code paths); rounding to a grid far coarser than that makes them
    bit-identical except when a value lies within ~1e-16 of a rounding midpoint.
    """
    return np.round(np.asarray(x, dtype=np.float64) / step) * step


@dataclass(frozen=True)
class _Grid:
    """Voxel centres of a display-space stack ``(Z, H, W)`` in mm (broadcastable axes)."""

    x: np.ndarray  # (1, 1, W) + = image right = patient's left, 0 at the centre
    y: np.ndarray  # (1, H, 1) + = image down = posterior, 0 at the centre
    z: np.ndarray  # (Z, 1, 1) height above the caudal end of the range
    t: np.ndarray  # (Z, 1, 1) level in (0, 1): 0 = most inferior, 1 = most superior
    spacing: tuple[float, float, float]  # (x, y, z) mm, RAS order

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.shape[0], self.y.shape[1], self.x.shape[2])

    @property
    def range_mm(self) -> float:
        """Cranio-caudal extent covered by the slices."""
        return self.spacing[2] * self.z.shape[0]


def _make_grid(size: tuple[int, int], num_slices: int, fov_mm: float, slice_mm_at_48: float) -> _Grid:
    """A grid with a fixed field of view and cranio-caudal range, whatever the matrix size."""
    height, width = size
    dx, dy = fov_mm / width, fov_mm / height
    dz = slice_mm_at_48 * 48 / num_slices
    x = ((np.arange(width) + 0.5) * dx - fov_mm / 2)
    y = ((np.arange(height) + 0.5) * dy - fov_mm / 2)
    t = ((np.arange(num_slices) + 0.5) / num_slices)
    return _Grid(x=x.reshape(1, 1, -1), y=y.reshape(1, -1, 1), z=(t * dz * num_slices).reshape(-1, 1, 1),
                 t=t.reshape(-1, 1, 1), spacing=(dx, dy, dz))


def _rbf_matrix(coords: np.ndarray, corr_mm: float) -> np.ndarray:
    """``(n, k)`` Gaussian-kernel weights from ``k`` control points, rows of unit L2 norm.

    With i.i.d. standard normal control values, ``weights @ values`` is a smooth field of
    unit variance everywhere.
    """
    lo, hi = float(coords.min()) - 2 * corr_mm, float(coords.max()) + 2 * corr_mm
    ctrl = np.linspace(lo, hi, max(int(math.ceil((hi - lo) / corr_mm)) + 1, 2))
    weights = np.exp(-0.5 * ((coords[:, None] - ctrl[None, :]) / corr_mm) ** 2)
    return weights / np.linalg.norm(weights, axis=1, keepdims=True)


def _smooth_field(rng: np.random.Generator, grid: _Grid,
                  corr_mm: tuple[float, float, float]) -> np.ndarray:
    """Smooth Gaussian random field ``(Z, H, W)`` of unit variance.

    ``corr_mm`` is the kernel width along ``(z, y, x)``. Separable: three small matrix products
    instead of a 3D convolution, so coarse fields cost almost nothing.
    """
    if 0 in grid.shape:  # no levels in this part of the body
        return np.zeros(grid.shape)
    axes = (grid.z, grid.y, grid.x)
    wz, wy, wx = (_rbf_matrix(a.ravel(), c) for a, c in zip(axes, corr_mm, strict=True))
    ctrl = rng.standard_normal((wz.shape[1], wy.shape[1], wx.shape[1]))
    field = ctrl @ wx.T  # (kz, ky, W)
    field = wy @ field  # (kz, H, W)
    return (wz @ field.reshape(wz.shape[1], -1)).reshape(grid.shape)  # (Z, H, W)


def _texture(rng: np.random.Generator, shape: tuple[int, ...],
             sigma_px: tuple[float, ...]) -> np.ndarray:
    """Fine correlated noise ``shape`` of unit standard deviation (Gaussian-filtered)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, truncate=3.0)
    return noise / max(float(noise.std()), 1e-6) if noise.size else noise


def _warped_coordinates(rng: np.random.Generator, grid: _Grid, amplitude_mm: float, corr_mm: float,
                        max_rotation_deg: float, max_shift_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """In-plane anatomical coordinates ``(X, Y)``, each ``(Z, H, W)``, of every voxel.

    A small random rotation and shift plus a smooth elastic displacement (clipped to three
    times its amplitude). Only in-plane: the level ``t`` of a voxel is never changed, so which
    organs a slice shows depends on its level alone.
    """
    angle = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    shift = rng.uniform(-max_shift_mm, max_shift_mm, size=2)
    corr = (2 * corr_mm, corr_mm, corr_mm)
    limit = 3 * amplitude_mm
    dx = np.clip(amplitude_mm * _smooth_field(rng, grid, corr), -limit, limit)
    dy = np.clip(amplitude_mm * _smooth_field(rng, grid, corr), -limit, limit)
    cos, sin = math.cos(angle), math.sin(angle)
    big_x = cos * grid.x + sin * grid.y + dx + shift[0]  # (Z, H, W)
    big_y = -sin * grid.x + cos * grid.y + dy + shift[1]  # (Z, H, W)
    return big_x, big_y


def _ellipse(x: np.ndarray, y: np.ndarray, cx, cy, ax, ay, angle: float = 0.0) -> np.ndarray:
    """Squared normalised radius of points in a rotated ellipse (< 1 inside).

    ``angle`` (radians) turns the ``ax`` axis from image-right towards image-down.
    """
    dx, dy = x - cx, y - cy
    if angle:
        cos, sin = math.cos(angle), math.sin(angle)
        dx, dy = cos * dx + sin * dy, cos * dy - sin * dx
    return (dx / ax) ** 2 + (dy / ay) ** 2


def _span(values: np.ndarray, lo: float, hi: float) -> slice:
    """Slice from the first to the last index whose value lies in ``[lo, hi]`` (empty if none).

    Used on the levels ``t`` or the rows ``y`` to paint a structure only where it can be.
    """
    inside = np.flatnonzero((values.ravel() >= lo) & (values.ravel() <= hi))
    return slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)


def _sub_grid(grid: _Grid, levels: slice) -> _Grid:
    """The grid restricted to some levels."""
    return _Grid(grid.x, grid.y, grid.z[levels], grid.t[levels], grid.spacing)


def _dome(t: np.ndarray, centre: float, half: float, floor: float = 0.0) -> np.ndarray:
    """Cross-section scale ``(Z, 1, 1)`` of an ellipsoid along the levels (0 outside it).

    ``floor`` keeps blunt ends: every level inside the ellipsoid gets at least that scale.
    """
    inside = np.abs(t - centre) < half
    scale = np.sqrt(np.clip(1 - ((t - centre) / half) ** 2, 0, 1))
    return np.where(inside, np.maximum(scale, floor), 0.0)


def _segment_distance(x: np.ndarray, y: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from every point to a polyline given by ``points`` ``(P, 2)`` (mm)."""
    best = None
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:], strict=True):
        vx, vy = bx - ax, by - ay
        along = np.clip(((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy), 0, 1)
        dist = np.hypot(x - ax - along * vx, y - ay - along * vy)
        best = dist if best is None else np.minimum(best, dist)
    return best


def _render(tissue: np.ndarray, means: np.ndarray, fine_sd: np.ndarray, coarse_sd: np.ndarray,
            fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Intensity ``(Z, H, W)``: each tissue's mean plus its share of two texture fields."""
    return means[tissue] + fine_sd[tissue] * fine + coarse_sd[tissue] * coarse


def _tissue_table(rows: dict[IntEnum, tuple[float, float, float, int]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``{tissue: (mean, fine sd, coarse sd, label)}`` to four look-up arrays."""
    table = np.array([rows[key] for key in sorted(rows)], dtype=np.float64)  # (T, 4)
    return table[:, 0], table[:, 1], table[:, 2], table[:, 3].astype(np.uint8)
