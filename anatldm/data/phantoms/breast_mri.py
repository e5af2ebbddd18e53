"""The breast MRI phantom family: thorax, breasts, chest wall, fibroglandular tissue and vessels."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np
from scipy import ndimage

from anatldm.data.phantoms.geometry import (
    _dome,
    _ellipse,
    _Grid,
    _render,
    _smooth_field,
    _span,
    _texture,
    _tissue_table,
    _warped_coordinates,
)

__all__ = ['BREAST_MRI_CLASSES']


BREAST_MRI_CLASSES = ("background", "breast", "fgt", "vessel")
BREAST_FOV_MM = 340.0
BREAST_SLICE_MM_AT_48 = 3.5  # a 168 mm range


class _MR(IntEnum):
    """Tissues of the breast MRI phantom."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    BONE = 4
    CARTILAGE = 5
    LUNG = 6
    HEART = 7
    BLOOD = 8
    BREAST_SKIN = 9
    BREAST_FAT = 10
    FGT = 11
    VESSEL = 12


@dataclass(frozen=True)
class _Breast:
    """One breast (mm; levels as fractions of the cranio-caudal range)."""

    centre_x: float  # + = image right
    half_width: float  # at the base, mid-level
    depth: float  # how far it hangs in front of the chest wall (patient prone)
    base_y: float  # where the middle of the base meets the chest wall
    level: float  # level of the nipple
    half_levels: float  # cranio-caudal half-extent


@dataclass(frozen=True)
class _Chest:
    """Per-subject sizes (mm) of the breast MRI phantom."""

    front_y: float  # anterior chest surface in the midline
    half_width: float  # thorax
    half_depth: float
    fat: float  # subcutaneous fat over the chest wall
    pectoral: float  # pectoralis major thickness at its thickest
    breasts: tuple[_Breast, _Breast]  # image left (patient's right), image right
    density: float  # fraction of breast tissue that is fibroglandular
    enhancement: float  # FGT intensity (background parenchymal enhancement)


def _chest_front(x: np.ndarray | float, chest: _Chest) -> np.ndarray | float:
    """y of the thorax's anterior surface at ``x`` (superellipse of exponent 2.4)."""
    nx = np.minimum(np.abs(x) / chest.half_width, 1.0)
    return chest.front_y + chest.half_depth * (1 - (1 - nx**2.4) ** (1 / 2.4))


def _sample_chest(rng: np.random.Generator) -> _Chest:
    """Random chest, breast size and shape, density and enhancement of one subject."""
    chest = _Chest(front_y=rng.uniform(0, 25), half_width=rng.uniform(140, 165),
                   half_depth=rng.uniform(110, 140), fat=rng.uniform(4, 12), pectoral=rng.uniform(8, 16),
                   breasts=(), density=0.0, enhancement=rng.uniform(0.4, 0.65))
    size = rng.uniform(0.6, 1.0)  # breast size, shared by both sides
    half_width = rng.uniform(62, 80) * (0.6 + 0.4 * size)
    depth = rng.uniform(1.1, 1.7) * half_width * (0.5 + 0.5 * size) / 0.8
    level, half_levels = rng.uniform(0.45, 0.55), rng.uniform(0.5, 0.6)
    breasts = []
    for side in (-1, 1):  # mild asymmetry between the two sides
        centre_x = side * rng.uniform(72, 92)
        breasts.append(_Breast(
            centre_x=centre_x, half_width=min(half_width * rng.uniform(0.93, 1.07), abs(centre_x) - 20),
            depth=min(depth * rng.uniform(0.9, 1.1), 150 + chest.front_y),
            base_y=float(_chest_front(centre_x, chest)) + chest.fat,
            level=level + rng.uniform(-0.02, 0.02), half_levels=half_levels))
    density = rng.choice([rng.uniform(0.03, 0.1), rng.uniform(0.1, 0.25), rng.uniform(0.25, 0.45),
                          rng.uniform(0.45, 0.65)])  # the four BI-RADS density categories
    return replace(chest, breasts=tuple(breasts), density=float(density))


def _mr_thorax(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, chest: _Chest) -> np.ndarray:
    """Paint skin and subcutaneous fat of the thorax; return the depth below its skin (mm)."""
    cy = chest.front_y + chest.half_depth
    nx, ny = np.abs(x) / chest.half_width, np.abs(y - cy) / chest.half_depth
    rho = (nx**2.4 + ny**2.4) ** (1 / 2.4)
    depth = np.sqrt(x * x + (y - cy) ** 2) * (1 / np.maximum(rho, 1e-3) - 1)  # (Z, H, W)
    tissue[depth >= 0] = _MR.SKIN
    tissue[depth >= 1.5] = _MR.FAT
    return depth


def _mr_breast(tissue: np.ndarray, envelope: np.ndarray, x: np.ndarray, y: np.ndarray, grid: _Grid,
               breast: _Breast, margin_mm: float) -> None:
    """Paint one prone, pendulous breast (skin, fat, nipple) and its FGT envelope.

    The breast hangs in front of the chest wall: a base tapering into the chest (it also fills
    the subcutaneous layer it sits on, so the breast stays one piece on a curved chest) under
    a superellipse dome, slightly narrower towards the nipple, smaller at its cranial and caudal
    levels. ``envelope`` (0..1) receives where fibroglandular tissue may be: a cone behind the
    nipple, away from the skin and the chest wall.
    """
    scale = _dome(grid.t, breast.level, breast.half_levels)  # (Z, 1, 1)
    levels = _span(scale, 0.05, 1.0)
    rows = _span(grid.y, breast.base_y - breast.depth - 40, breast.base_y + 60)  # 40 mm > any warp
    scale, x, y = scale[levels], x[levels, rows], y[levels, rows]
    depth = breast.depth * scale  # (z, 1, 1)
    base = 0.2  # height of the base, fraction of the depth
    dome_y = breast.base_y - base * depth  # (z, 1, 1) where the dome starts
    v = np.clip((dome_y - y) / ((1 - base) * depth), 0, None)  # (z, H, W) 0 on the base, 1 at the nipple
    under = np.clip((y - dome_y) / (breast.base_y + 20 - dome_y), 0, 1)  # (z, H, W) 0..1 down the base
    half_width = breast.half_width * np.sqrt(scale) * (1 - 0.12 * np.clip(v, 0, 1) - 0.35 * under)
    u = (x - breast.centre_x) / half_width
    rho = (np.abs(u) ** 2.4 + v**2.4) ** (1 / 2.4)
    radius = np.hypot(x - breast.centre_x, np.minimum(y - dome_y, 0)) / np.maximum(rho, 1e-3)
    below_skin = radius * (1 - rho)  # (z, H, W) ~mm inside the skin
    inside = (rho < 1) & (y < breast.base_y + 20)
    slab = tissue[levels, rows]
    slab[inside] = _MR.BREAST_SKIN
    slab[inside & (below_skin > 1.8)] = _MR.BREAST_FAT
    apex = breast.base_y - depth  # (z, 1, 1)
    nipple = (_ellipse(x, y, breast.centre_x, apex, 9, 7) < 1) & (y < apex + 2)
    slab[nipple & (np.abs(grid.t[levels] - breast.level) < 0.05)] = _MR.BREAST_SKIN
    cone = np.clip(1 - np.square(u / (0.9 - 0.5 * np.clip(v, 0, 1))), 0, 1)
    off_wall = np.clip((breast.base_y - y) / (0.25 * depth) - 0.3, 0, 1)
    away = off_wall * np.clip((below_skin - margin_mm) / 8, 0, 1)
    envelope[levels, rows] = np.maximum(envelope[levels, rows], np.where(inside, cone * away, 0))


def _mr_chest_wall(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, grid: _Grid, chest: _Chest,
                   depth: np.ndarray, rng: np.random.Generator) -> None:
    """Pectoralis major, ribs and costal cartilages, sternum, lungs, heart and great vessels."""
    t = grid.t
    pectoral = chest.fat + chest.pectoral * np.exp(-np.square((np.abs(x) - 80) / 50))
    ribs_end = pectoral + 11
    tissue[depth >= chest.fat] = _MR.MUSCLE
    tissue[depth >= ribs_end] = _MR.LUNG
    cy = chest.front_y + chest.half_depth
    arc = np.arctan2(y - cy, np.abs(x)) * chest.half_width  # mm along the wall
    period = rng.uniform(30, 38)
    along = (arc + rng.uniform(1.0, 1.6) * grid.z + rng.uniform(0, period)) % period - period / 2
    rib = np.square(along / rng.uniform(7, 10)) + np.square((depth - pectoral - 5.5) / 4.0) < 1
    tissue[rib & (np.abs(x) >= 45)] = _MR.BONE
    tissue[rib & (np.abs(x) < 45)] = _MR.CARTILAGE
    front = chest.front_y + chest.fat
    tissue[_ellipse(x, y, 0, front + 7, 15, 6.5) < 1] = _MR.BONE  # sternum
    heart_s = _dome(t, rng.uniform(0.1, 0.3), 0.75)  # (Z, 1, 1) the heart fills the lower levels
    heart_x, heart_y = rng.uniform(10, 30), front + 30 + 45 * heart_s
    mediastinum = _ellipse(x, y, 0, front + 40, 30, 35) < 1
    tissue[mediastinum & (depth >= ribs_end)] = _MR.FAT
    heart = _ellipse(x, y, heart_x, heart_y, 58 * heart_s + 1e-3, 46 * heart_s + 1e-3, -0.5)
    tissue[heart < 1.2] = _MR.FAT  # epicardial fat
    tissue[heart < 1] = _MR.HEART
    left_ventricle = _ellipse(x, y, heart_x + 16 * heart_s, heart_y + 10 * heart_s, 22 * heart_s + 1e-3,
                              20 * heart_s + 1e-3)
    right_ventricle = _ellipse(x, y, heart_x - 14 * heart_s, heart_y - 16 * heart_s, 30 * heart_s + 1e-3,
                               13 * heart_s + 1e-3, -0.5)
    tissue[(left_ventricle < 1) | (right_ventricle < 1)] = _MR.BLOOD
    great = _ellipse(x, y, 8, front + 55, 16, 16) < 1  # ascending aorta above the heart
    tissue[great & (t > 0.7)] = _MR.BLOOD
    for side in (-1, 1):  # internal mammary vessels beside the sternum
        tissue[_ellipse(x, y, side * 28, front + 16, 2.8, 2.8) < 1] = _MR.BLOOD


def _mr_fgt(tissue: np.ndarray, envelope: np.ndarray, grid: _Grid, chest: _Chest,
            rng: np.random.Generator) -> None:
    """Fibroglandular tissue: textured noise plus the envelope, thresholded at the density.

    The noise is stretched antero-posteriorly (ducts run towards the nipple); the threshold is
    the quantile that makes ``chest.density`` of the breast tissue fibroglandular.
    """
    dx, dy, dz = grid.spacing
    fat = tissue == _MR.BREAST_FAT  # (Z, H, W)
    if not fat.any():
        return
    occupied = np.flatnonzero(fat.any(axis=(0, 2)))
    rows = slice(int(occupied[0]), int(occupied[-1]) + 1)  # only the rows the breasts occupy
    fat, slab = fat[:, rows], tissue[:, rows]
    texture = _texture(rng, fat.shape, (3 / dz, 7 / dy, 3 / dx))
    score = 3 * envelope[:, rows] + texture
    threshold = np.quantile(score[fat], 1 - chest.density)
    slab[fat & (envelope[:, rows] > 0) & (score > threshold)] = _MR.FGT


def _mr_vessels(tissue: np.ndarray, grid: _Grid, chest: _Chest, rng: np.random.Generator) -> None:
    """Tortuous vessels running from the chest wall towards the nipple, inside the breasts.

    Each is a random smooth curve (heading and slope follow smoothed random walks), drawn as
    dense points into a volume, blurred and thresholded; thicker near the chest wall.
    """
    dx, dy, dz = grid.spacing
    step = 0.5 * min(dx, dy, dz)
    starts, headings, lengths, levels = [], [], [], []
    for breast in chest.breasts:
        count = int(rng.integers(5, 11))
        x0 = breast.centre_x + breast.half_width * rng.uniform(-0.8, 0.8, count)
        y0 = breast.base_y - rng.uniform(5, 15, count)
        starts.append(np.stack([x0, y0], axis=1))
        headings.append(np.arctan2(breast.centre_x - x0, breast.depth) + rng.normal(0, 0.3, count))
        lengths.append(breast.depth * rng.uniform(0.5, 1.0, count))
        levels.append(breast.level + breast.half_levels * rng.uniform(-0.6, 0.6, count))
    start, heading = np.concatenate(starts), np.concatenate(headings)  # (N, 2), (N,)
    length, level = np.concatenate(lengths), np.concatenate(levels)  # (N,), (N,)
    steps = int(math.ceil(length.max() / step))
    walk = ndimage.gaussian_filter1d(rng.standard_normal((2, len(start), steps)), steps / 12, axis=2)
    walk /= walk.std(axis=2, keepdims=True) + 1e-6
    angle = heading[:, None] + 0.5 * walk[0]  # (N, S) 0 = towards the front
    slope = rng.uniform(-0.15, 0.15, (len(start), 1)) + 0.1 * walk[1]  # (N, S) mm of z per mm
    ds = (length / steps)[:, None]  # (N, 1) step of each curve
    x = start[:, :1] + np.cumsum(ds * np.sin(angle), axis=1)  # (N, S)
    y = start[:, 1:] - np.cumsum(ds * np.cos(angle), axis=1)
    z = (level * grid.range_mm)[:, None] + np.cumsum(ds * slope, axis=1)
    weight = np.broadcast_to(np.linspace(1.0, 0.55, steps), x.shape)
    col = np.rint((x - float(grid.x.min())) / dx).astype(np.int64)
    row = np.rint((y - float(grid.y.min())) / dy).astype(np.int64)
    lev = np.rint((z - float(grid.z.min())) / dz).astype(np.int64)
    depth, height, width = grid.shape
    ok = (col >= 0) & (col < width) & (row >= 0) & (row < height) & (lev >= 0) & (lev < depth)
    drawn = np.zeros(grid.shape)
    np.maximum.at(drawn, (lev[ok], row[ok], col[ok]), weight[ok])
    rows = slice(0, int(row[ok].max()) + 4) if ok.any() else slice(0, 0)
    blurred = ndimage.gaussian_filter(drawn[:, rows], (0.5, 0.8, 0.8), truncate=3.0)
    vessel = blurred > 0.12
    breast = np.isin(tissue[:, rows], (_MR.BREAST_FAT, _MR.FGT))
    tissue[:, rows][vessel & breast] = _MR.VESSEL


def _mr_intensities(rng: np.random.Generator, chest: _Chest) -> tuple[np.ndarray, ...]:
    """Per-subject look-up tables (mean, fine sd, coarse sd, label) of :class:`_MR`."""
    return _tissue_table({
        _MR.AIR: (0, 0, 0, 0), _MR.SKIN: (0.3, 0.03, 0.02, 0), _MR.FAT: (0.12, 0.015, 0.02, 0),
        _MR.MUSCLE: (rng.uniform(0.22, 0.3), 0.025, 0.02, 0), _MR.BONE: (0.07, 0.02, 0, 0),
        _MR.CARTILAGE: (0.2, 0.02, 0, 0), _MR.LUNG: (0.012, 0.005, 0, 0),
        _MR.HEART: (rng.uniform(0.3, 0.4), 0.04, 0.05, 0),
        _MR.BLOOD: (rng.uniform(0.55, 0.8), 0.05, 0.03, 0), _MR.BREAST_SKIN: (0.3, 0.03, 0.02, 1),
        _MR.BREAST_FAT: (rng.uniform(0.11, 0.16), 0.015, 0.025, 1),
        _MR.FGT: (chest.enhancement, 0.05, 0.06, 2), _MR.VESSEL: (rng.uniform(0.85, 1.2), 0.05, 0, 3),
    })


def _breast_mri(rng: np.random.Generator, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Breast MRI phantom in display space: intensity image and labels, each ``(Z, H, W)``."""
    chest = _sample_chest(rng)
    x, y = _warped_coordinates(rng, grid, amplitude_mm=3.5, corr_mm=40.0, max_rotation_deg=3.0,
                               max_shift_mm=5.0)
    tissue = np.zeros(grid.shape, dtype=np.uint8)  # (Z, H, W) _MR values
    envelope = np.zeros(grid.shape)  # (Z, H, W) where FGT may grow
    depth = _mr_thorax(tissue, x, y, chest)
    margin = max(4.0, 1.2 * max(grid.spacing[:2]))
    for breast in chest.breasts:
        _mr_breast(tissue, envelope, x, y, grid, breast, margin)
    _mr_chest_wall(tissue, x, y, grid, chest, depth, rng)
    envelope[tissue != _MR.BREAST_FAT] = 0
    _mr_fgt(tissue, envelope, grid, chest, rng)
    _mr_vessels(tissue, grid, chest, rng)
    means, fine_sd, coarse_sd, labels = _mr_intensities(rng, chest)
    fine = _texture(rng, grid.shape, (0.4, 0.8, 0.8))
    coarse = _texture(rng, grid.shape, (0.8, 2.5, 2.5))
    signal = _render(tissue, means, fine_sd, coarse_sd, fine, coarse)
    signal = ndimage.gaussian_filter(np.maximum(signal, 0), (0, 0.5, 0.5), truncate=3.0)
    half_fov = BREAST_FOV_MM / 2  # coil sensitivity: smooth, brighter in front (breast coil)
    tilt = -rng.uniform(0.15, 0.4) * grid.y / half_fov + rng.uniform(-0.1, 0.1) * grid.x / half_fov
    bias = np.exp(0.15 * _smooth_field(rng, grid, (120, 100, 100)) + tilt)  # (Z, H, W)
    signal *= bias
    sigma = rng.uniform(0.01, 0.025)
    noise = rng.standard_normal((2, *grid.shape)) * sigma
    image = np.sqrt(np.square(signal + noise[0]) + np.square(noise[1]))  # Rician magnitude
    return image * rng.uniform(200, 800), labels[tissue]
