"""Procedural anatomical phantoms: seeded 3D subjects (image + label map) at any resolution.

Two families, both built the same way:

1. a display-space grid ``(num_slices, H, W)`` in millimetres (slice 0 most inferior, row 0
   anterior, column 0 the patient's right: the radiological convention of
   :mod:`anatldm.data.orientation`), warped by a smooth random elastic deformation;
2. implicit shapes (ellipses, superellipses, thresholded smooth noise) evaluated on the warped
   coordinates paint a map of *tissues*, later tissues over earlier ones; anatomical rules
   (two kidneys, liver opposite the spleen, spine in the posterior midline) hold by
   construction;
3. look-up tables turn tissues into class labels and into intensities (with per-tissue
   texture), followed by blur, noise and, for MRI, a coil bias field;
4. :func:`~anatldm.data.orientation.display_to_ras` turns the stack into a RAS+ volume.

Everything is vectorised (numpy / scipy); a 128x128x48 subject takes a fraction of a second
on one core.

Same seed, same subject on every machine: numpy's transcendental functions (``exp``, ``sin``,
``power``, ...) and BLAS products pick SIMD code paths by CPU, whose results differ in the
last bit. In float32 that is ~1e-7 relative: enough to move a voxel across a shape's boundary
or to change every image voxel's bits. Hence every field is float64 (differences ~1e-16, so a
label decision flips with negligible probability) and the final intensities are snapped to a
coarse grid by :func:`_quantise`, which absorbs such differences. (Rounding right before a
threshold would not help: it only moves the threshold to the nearest rounding midpoint.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from anatldm.data.orientation import display_to_ras

__all__ = [
    "BREAST_MRI_CLASSES",
    "CT_ABDOMEN_CLASSES",
    "PHANTOM_CLASSES",
    "PHANTOM_PRESETS",
    "PhantomSubject",
    "generate_phantom",
    "write_phantom_dataset",
]

logger = logging.getLogger(__name__)

CT_ABDOMEN_CLASSES = ("background", "liver", "spleen", "kidney", "bone", "lung")
BREAST_MRI_CLASSES = ("background", "breast", "fgt", "vessel")
PHANTOM_CLASSES: dict[str, tuple[str, ...]] = {
    "ct_abdomen": CT_ABDOMEN_CLASSES,
    "breast_mri": BREAST_MRI_CLASSES,
}
#: intensity preset (see ``anatldm.data.volumes``) that normalises each family
PHANTOM_PRESETS: dict[str, str] = {"ct_abdomen": "ct", "breast_mri": "mri"}

CT_FOV_MM = 400.0  # in-plane field of view, any matrix size
CT_SLICE_MM_AT_48 = 5.0  # slice thickness for 48 slices: a 240 mm cranio-caudal range
BREAST_FOV_MM = 340.0
BREAST_SLICE_MM_AT_48 = 3.5  # a 168 mm range
INTENSITY_STEP = 1 / 64  # grid of the written intensities (HU for CT)


def _quantise(x: np.ndarray, step: float = INTENSITY_STEP) -> np.ndarray:
    """``x`` rounded to the nearest multiple of ``step`` (a power of two: exact arithmetic).

    Float64 results of the same computation differ across CPUs by ~1e-16 relative (SIMD
    ``exp``/``sin``/BLAS code paths); rounding to a grid far coarser than that makes them
    bit-identical except when a value lies within ~1e-16 of a rounding midpoint.
    """
    return np.round(np.asarray(x, dtype=np.float64) / step) * step


@dataclass(frozen=True)
class PhantomSubject:
    """One phantom subject in canonical RAS+ voxel order.

    Attributes:
        image: ``(X, Y, Z)`` float32 on a grid of :data:`INTENSITY_STEP`; Hounsfield units for
            CT, arbitrary positive units for MRI.
        label: ``(X, Y, Z)`` uint8, indices into ``class_names``.
        spacing: voxel size in mm along ``(x, y, z)``.
        family: phantom family, a key of :data:`PHANTOM_CLASSES`.
        class_names: names of the label values, background first.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    family: str
    class_names: tuple[str, ...]

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world (RAS+, mm) matrix: ``diag(spacing, 1)``."""
        return np.diag([*self.spacing, 1.0])


# ----------------------------------------------------------------------------------------------
# Shared machinery: grid, smooth random fields, shapes, rendering
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Abdominal CT
# ----------------------------------------------------------------------------------------------


class _CT(IntEnum):
    """Tissues of the abdominal CT phantom (paint order is decided by the painters)."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    VISCERAL_FAT = 4
    LIVER = 5
    LIVER_VESSEL = 6
    GALLBLADDER = 7
    SPLEEN = 8
    KIDNEY_CORTEX = 9
    KIDNEY_MEDULLA = 10
    RENAL_SINUS = 11
    BONE_CORTEX = 12
    BONE_MARROW = 13
    SPINAL_CANAL = 14
    DISC = 15
    AORTA = 16
    VEIN = 17
    BOWEL_WALL = 18
    BOWEL_CONTENT = 19
    GAS = 20
    STOOL = 21
    STOMACH_CONTENT = 22
    PANCREAS = 23
    LUNG = 24
    LUNG_VESSEL = 25
    TABLE = 26
    TABLE_CORE = 27
    CALCIFICATION = 28


@dataclass(frozen=True)
class _Torso:
    """Per-subject sizes (mm) of the abdominal phantom."""

    half_width: float  # body, lateral
    half_depth: float  # body, anterior half; the back is flatter
    fat: float  # subcutaneous fat, anterior
    muscle: float  # abdominal wall
    canal_y: float  # centre of the spinal canal
    liver: float  # organ size factors
    spleen: float
    kidney: float
    stomach: float
    contrast: float  # 0 = unenhanced, 1 = portal venous phase
    oral_contrast: bool  # positive oral contrast in the small bowel

    @property
    def cavity_width(self) -> float:
        """Lateral half-width inside the abdominal wall."""
        return self.half_width - self.fat - self.muscle

    @property
    def cavity_depth(self) -> float:
        """Anterior half-depth inside the abdominal wall."""
        return self.half_depth - 1.2 * self.fat - self.muscle


def _sample_torso(rng: np.random.Generator) -> _Torso:
    """Random body habitus, organ sizes and contrast phase of one subject."""
    half_width = rng.uniform(135, 175)
    half_depth = rng.uniform(95, 125)
    fat = rng.uniform(0.04, 0.17) * half_width
    contrast = float(rng.uniform(0.7, 1.0)) if rng.random() < 0.6 else 0.0
    return _Torso(
        half_width=half_width, half_depth=half_depth, fat=fat, muscle=rng.uniform(7, 12),
        canal_y=0.95 * half_depth - 0.5 * fat - rng.uniform(46, 56),
        liver=rng.uniform(0.85, 1.15), spleen=rng.uniform(0.75, 1.25), kidney=rng.uniform(0.85, 1.1),
        stomach=rng.uniform(0.75, 1.2), contrast=contrast, oral_contrast=bool(rng.random() < 0.3),
    )


def _ct_hu_table(rng: np.random.Generator, body: _Torso) -> tuple[np.ndarray, ...]:
    """Per-subject HU look-up tables (mean, fine sd, coarse sd, label) of :class:`_CT`."""
    c = body.contrast

    def j(sd: float) -> float:  # small per-subject jitter
        return float(rng.normal(0, sd))

    bowel = 230.0 + j(40) if body.oral_contrast else 12.0 + j(5)
    return _tissue_table({
        _CT.AIR: (-1000, 0, 0, 0), _CT.SKIN: (45, 8, 0, 0), _CT.FAT: (-105 + j(8), 8, 4, 0),
        _CT.MUSCLE: (52 + j(5), 6, 3, 0), _CT.VISCERAL_FAT: (-100 + j(8), 6, 10, 0),
        _CT.LIVER: (60 + 45 * c + j(6), 4, 3, 1), _CT.LIVER_VESSEL: (38 + 125 * c, 4, 0, 1),
        _CT.GALLBLADDER: (8 + j(4), 3, 0, 0), _CT.SPLEEN: (48 + 60 * c + j(5), 4, 3, 2),
        _CT.KIDNEY_CORTEX: (34 + 150 * c + j(5), 5, 0, 3), _CT.KIDNEY_MEDULLA: (28 + 95 * c, 5, 0, 3),
        _CT.RENAL_SINUS: (-80, 15, 10, 3), _CT.BONE_CORTEX: (760 + j(60), 50, 0, 4),
        _CT.BONE_MARROW: (230 + j(40), 35, 25, 4), _CT.SPINAL_CANAL: (18, 4, 0, 0),
        _CT.DISC: (85, 8, 0, 0), _CT.AORTA: (42 + 150 * c + j(5), 3, 0, 0),
        _CT.VEIN: (40 + 120 * c + j(5), 3, 0, 0), _CT.BOWEL_WALL: (42 + 45 * c, 6, 0, 0),
        _CT.BOWEL_CONTENT: (bowel, 10, 8, 0), _CT.GAS: (-1000, 0, 0, 0),
        _CT.STOOL: (-90, 60, 110, 0), _CT.STOMACH_CONTENT: (22 + j(6), 6, 8, 0),
        _CT.PANCREAS: (38 + 70 * c + j(5), 12, 15, 0), _CT.LUNG: (-865 + j(15), 15, 10, 5),
        _CT.LUNG_VESSEL: (-350, 60, 0, 5), _CT.TABLE: (250, 30, 0, 0),
        _CT.TABLE_CORE: (-850, 15, 0, 0), _CT.CALCIFICATION: (600, 80, 0, 0),
    })


def _ct_body_wall(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray,
                  body: _Torso) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint skin, subcutaneous fat, muscle wall and intra-abdominal fat.

    The outline is a superellipse, round in front and flatter at the back (supine patient).
    Layer thicknesses are measured along the ray from the body centre and vary with the angle:
    thick fat in front, thin at the back, the rectus muscles thick near the anterior midline,
    a thicker wall around the rib cage.

    Returns:
        ``depth`` below the skin, and the depths where the fat and the wall end (mm, all
        ``(Z, H, W)``).
    """
    r = np.sqrt(x * x + y * y) + 1e-3  # (Z, H, W) mm from the body centre
    back = y > 0
    nx = np.abs(x) / body.half_width
    ny = np.abs(y) / np.where(back, 0.95 * body.half_depth, body.half_depth)
    rho = np.where(back, (nx**3 + ny**3) ** (1 / 3), np.sqrt(nx * nx + ny * ny))
    depth = r * (1 / np.maximum(rho, 1e-3) - 1)  # mm inside the skin (negative outside)
    front = np.clip(-y / r, 0, 1)
    fat = body.fat * (1 + 0.35 * front - 0.55 * np.clip(y / r, 0, 1))
    rib_cage = np.clip((t - 0.45) * 20, 0, 1)  # (Z, 1, 1)
    wall = fat + body.muscle * (1 + 1.2 * front**6) + 11 * rib_cage
    tissue[depth >= 0] = _CT.SKIN
    tissue[depth >= 2.0] = _CT.FAT
    tissue[depth >= fat] = _CT.MUSCLE
    tissue[depth >= wall] = _CT.VISCERAL_FAT
    return depth, fat, wall


def _ct_table(tissue: np.ndarray, body: _Torso, grid: _Grid) -> None:
    """The CT table under the patient's back: two thin shells around a foam core, in air."""
    below = (grid.y - (0.95 * body.half_depth + 4 - grid.x**2 / 900))[0]  # (H, W) curved cradle
    inside = np.abs(grid.x[0]) < 190  # (1, W)
    core = (below > 3) & (below < 30) & inside
    shell = (((below >= 0) & (below <= 3)) | ((below >= 30) & (below <= 33))) & inside
    air = tissue == _CT.AIR
    tissue[air & core] = _CT.TABLE_CORE
    tissue[air & shell] = _CT.TABLE


@dataclass(frozen=True)
class _Spine:
    """Where the lumbar/thoracic spine sits at each level (mm, ``(Z, 1, 1)`` arrays)."""

    half_width: np.ndarray  # vertebral body, lateral
    half_depth: np.ndarray  # vertebral body, antero-posterior
    body_y: np.ndarray  # vertebral body centre
    canal_y: float  # spinal canal centre
    canal_r: float  # spinal canal radius

    @property
    def front(self) -> np.ndarray:
        """Anterior surface of the vertebral body."""
        return self.body_y - self.half_depth


def _spine_geometry(t: np.ndarray, body: _Torso) -> _Spine:
    """Vertebral body size and position per level; lumbar bodies are larger."""
    canal_r = 8.5
    half_w = 19 + 5 * (1 - t)  # (Z, 1, 1)
    half_d = 14 + 3 * (1 - t)
    return _Spine(half_width=half_w, half_depth=half_d, body_y=body.canal_y - canal_r - half_d + 1,
                  canal_y=body.canal_y, canal_r=canal_r)


def _ct_spine(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, grid: _Grid, spine: _Spine,
              rng: np.random.Generator) -> None:
    """Vertebral body (cortex, marrow, discs), spinal canal and posterior elements."""
    t, canal_r = grid.t, spine.canal_r
    period, phase = rng.uniform(32, 38), rng.uniform(0, 38)
    disc = ((grid.z - phase) % period) < rng.uniform(6, 9)  # (Z, 1, 1)
    canal = _ellipse(x, y, 0, spine.canal_y, 1.15 * canal_r, canal_r)
    ring = np.sqrt(canal) * canal_r  # (Z, H, W) ~mm from the canal centre
    arch = (ring < canal_r + 6) & (y > spine.canal_y - 5)
    spinous = (np.abs(x) < 3.5 + 0.06 * (y - spine.canal_y)) & (y > spine.canal_y) & (
        y < spine.canal_y + canal_r + 32)
    length = 22 + 12 * (t < 0.6)  # (Z, 1, 1) lumbar transverse processes are longer
    taper = np.clip(1 - np.abs(x) / length, 0, 1)
    transverse = (np.abs(y - spine.canal_y + 6 - 0.25 * np.abs(x)) < 1.5 + 3 * taper) & (taper > 0)
    transverse &= ((grid.z - phase) % period > 0.35 * period)  # (Z, 1, 1) at pedicle levels only
    posterior = arch | spinous | transverse
    tissue[posterior] = _CT.BONE_CORTEX
    lamina = (ring > canal_r + 2) & (ring < canal_r + 4.5) & (y > spine.canal_y)
    tissue[posterior & lamina] = _CT.BONE_MARROW
    vertebra = _ellipse(x, y, 0, spine.body_y, spine.half_width, spine.half_depth)
    tissue[vertebra < 1] = _CT.BONE_CORTEX
    tissue[vertebra < (1 - 2.8 / spine.half_depth) ** 2] = _CT.BONE_MARROW
    tissue[(vertebra < 1) & disc] = _CT.DISC
    tissue[canal < 1] = _CT.SPINAL_CANAL


def _ct_back_muscles(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray,
                     spine: _Spine, deep: np.ndarray) -> None:
    """Paraspinal muscles behind the spine, psoas beside it and quadratus lumborum (lower)."""
    for side in (-1, 1):
        para = _ellipse(x, y, side * 32, spine.canal_y + 14, 27, 25) < 1
        tissue[para & deep] = _CT.MUSCLE
        psoas_r = 4 + 20 * np.clip((0.62 - t) / 0.62, 0, 1)  # (Z, 1, 1) grows caudally
        psoas = _ellipse(x, y, side * (spine.half_width + psoas_r - 4), spine.body_y + 3,
                         psoas_r, psoas_r * 0.9)
        tissue[(psoas < 1) & (t < 0.62)] = _CT.MUSCLE
        quadratus_s = np.clip((0.58 - t) / 0.3, 0, 1)  # (Z, 1, 1)
        quadratus = _ellipse(x, y, side * (spine.half_width + 40), spine.canal_y - 2,
                             16 * quadratus_s + 1e-3, 9 * quadratus_s + 1e-3, side * 0.35)
        tissue[quadratus < 1] = _CT.MUSCLE


def _ct_vessels(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray, spine: _Spine,
                rng: np.random.Generator) -> tuple[float, float]:
    """Aorta (iliac bifurcation, wall calcifications), IVC and superior mesenteric vessels.

    Returns the aorta's centre ``(x, y)`` (y averaged over the levels).
    """
    radius = rng.uniform(9, 12.5)
    ax, ay = float(0.55 * spine.half_width.mean()), spine.front - radius - 2
    bifurcation = rng.uniform(0.03, 0.12)
    split = np.clip((bifurcation - t) / 0.08, 0, 1) * 20  # (Z, 1, 1) iliac separation
    r_here = np.where(t < bifurcation, 0.7 * radius, radius)
    aorta = np.minimum(_ellipse(x, y, ax - split, ay, r_here, r_here),
                       _ellipse(x, y, ax + split, ay, r_here, r_here))
    crura = (aorta > (1 + 2 / radius) ** 2) & (aorta < (1 + 7 / radius) ** 2) & (y > ay - 0.3 * radius)
    tissue[crura & (t > 0.62)] = _CT.MUSCLE  # diaphragmatic crura around the aorta
    tissue[aorta < 1] = _CT.AORTA
    if rng.random() < 0.4:  # plaques: short arcs of the wall at random levels
        angle = np.arctan2(y - ay, x - ax)
        at_level = rng.random(t.shape) < 0.5  # (Z, 1, 1)
        arc = np.cos(angle - rng.uniform(-math.pi, math.pi)) > 0.85
        tissue[(aorta < 1) & (aorta > 0.65) & arc & at_level] = _CT.CALCIFICATION
    ivc = _ellipse(x, y, -0.9 * spine.half_width - 6, spine.front - 8, 13, 8.5)
    tissue[ivc < 1] = _CT.VEIN
    mesenteric = (t > 0.3) & (t < 0.56)  # (Z, 1, 1)
    sma_y = ay - radius - 12
    tissue[(_ellipse(x, y, ax - 2, sma_y, 8, 8) < 1) & mesenteric] = _CT.VISCERAL_FAT
    tissue[(_ellipse(x, y, ax - 2, sma_y, 3.5, 3.5) < 1) & mesenteric] = _CT.AORTA
    tissue[(_ellipse(x, y, ax - 15, sma_y - 2, 5.5, 5.5) < 1) & mesenteric] = _CT.VEIN
    return ax, float(ay.mean())


def _ct_kidneys(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, grid: _Grid, body: _Torso,
                spine: _Spine, rng: np.random.Generator) -> None:
    """Two kidneys beside the spine, at the same levels, each in its own rim of fat.

    Each is an ellipsoid whose axial long axis runs from anterolateral to posteromedial, with
    cortex, medulla and a renal sinus of fat opening anteromedially at mid-levels. The
    cross-section is kept at half size or more up to the poles so that both kidneys show on
    every slice where one does (the label includes the sinus: one blob per kidney).
    """
    t = grid.t
    centre_t = rng.uniform(0.36, 0.44)
    half_t = 55 * body.kidney / grid.range_mm
    levels = _span(t, centre_t - half_t, centre_t + half_t)
    scale = _dome(t, centre_t, half_t, floor=0.5)[levels]  # (z, 1, 1)
    x, y, t = x[levels], y[levels], t[levels]
    lateral = float(np.clip(0.5 * body.cavity_width + 8, 58, 85))
    long_r, short_r = 30 * body.kidney * scale, 21 * body.kidney * scale
    sinus_levels = np.abs(t - centre_t) < 0.55 * half_t
    kidney_y = float(spine.body_y.mean()) + 10
    for side in (-1, 1):
        cx = side * (lateral + rng.uniform(-4, 4))
        cy = kidney_y + rng.uniform(-5, 5)
        angle = -side * rng.uniform(0.45, 0.8)  # long axis: anterolateral -> posteromedial
        rim = _ellipse(x, y, cx, cy, long_r + 3, short_r + 3, angle) < 1
        kidney = _ellipse(x, y, cx, cy, long_r, short_r, angle)
        hilum = np.array([-side, -1.0]) / math.sqrt(2)  # anteromedial
        sinus = _ellipse(x, y, cx + 0.6 * short_r * hilum[0], cy + 0.6 * short_r * hilum[1],
                         0.5 * long_r, 0.42 * short_r, angle) < 1
        slab = tissue[levels]
        slab[rim] = _CT.VISCERAL_FAT
        slab[kidney < 1] = _CT.KIDNEY_CORTEX
        slab[kidney < 0.5] = _CT.KIDNEY_MEDULLA
        slab[(kidney < 1) & sinus & sinus_levels] = _CT.RENAL_SINUS


def _ct_liver(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, grid: _Grid, body: _Torso,
              cavity: np.ndarray, rng: np.random.Generator) -> None:
    """Liver on the image left (patient's right) with hepatic vessels and the gallbladder.

    The part of the abdominal cavity left of a gently lobulated parabola that bulges towards
    the image right in front: the medial surface is convex, and it moves right with the level,
    so the left lobe reaches across the midline in front at upper levels while only the tip of
    the right lobe remains low down.
    """
    levels = _span(grid.t, rng.uniform(0.24, 0.3), 1.0)
    sub = _sub_grid(grid, levels)
    x, y, t, cavity = x[levels], y[levels], sub.t, cavity[levels]
    width, depth = body.cavity_width, body.cavity_depth
    knots = np.array([0.25, 0.35, 0.5, 0.65, 0.8, 1.0])
    reach = np.array([-0.75, -0.6, -0.35, -0.1, 0.2, 0.3]) + 0.25 * (body.liver - 1)
    medial = width * np.interp(t, knots, reach)  # (z, 1, 1) most medial x
    bulge, curve = rng.uniform(-0.6, -0.4), rng.uniform(0.6, 0.8) * width
    lobulation = 8 * _smooth_field(rng, sub, (30, 25, 25))  # (z, H, W) mm
    liver = cavity & (x < medial - curve * np.square(y / depth - bulge) + lobulation)
    vessels = np.abs(_smooth_field(rng, sub, (14, 9, 9)))
    slab = tissue[levels]
    slab[liver] = _CT.LIVER
    slab[liver & (vessels < 0.12)] = _CT.LIVER_VESSEL
    if rng.random() < 0.85:  # gallbladder, in its fossa on the liver's inferior surface
        gb_t = rng.uniform(0.46, 0.56)
        gb_s = _dome(t, gb_t, 0.09)  # (z, 1, 1)
        gb_x = width * float(np.interp(gb_t, knots, reach)) - 12
        gallbladder = _ellipse(x, y, gb_x, bulge * depth, 14 * gb_s + 1e-3, 24 * gb_s + 1e-3, -0.5) < 1
        slab[gallbladder & cavity] = _CT.GALLBLADDER


def _ct_stomach(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, grid: _Grid, body: _Torso,
                cavity: np.ndarray, rng: np.random.Generator) -> None:
    """Stomach at upper levels on the image right: wall, food/fluid and an air-fluid level.

    The patient lies supine, so gas rises to the anterior (top) part of the lumen.
    """
    half = 0.3
    levels = _span(grid.t, 0.82 - half, 1.0)
    x, y, t, cavity = x[levels], y[levels], grid.t[levels], cavity[levels]
    scale = _dome(t, 0.82, half) * body.stomach  # (z, 1, 1)
    width, depth = body.cavity_width, body.cavity_depth
    cy = -0.15 * depth + 0.5 * depth * (t - 0.6)  # (z, 1, 1) the fundus lies further back
    ax, ay = 0.38 * width * scale + 1e-3, 0.38 * depth * scale + 1e-3
    stomach = _ellipse(x, y, 0.42 * width, cy, ax, ay, -0.4)
    inside = (stomach < 1) & cavity
    folds = 0.5 + _smooth_field(rng, _sub_grid(grid, levels), (6, 5, 5))  # rugae: uneven wall
    wall = (4.0 + 3 * folds) / np.minimum(ax, ay)  # (z, H, W) fraction of the radius
    gas_level = cy - ay * rng.uniform(-0.1, 0.7) - 12 * (t - 0.82)  # (z, 1, 1)
    slab = tissue[levels]
    slab[inside] = _CT.BOWEL_WALL
    lumen = inside & (stomach < (1 - wall) ** 2)
    slab[lumen] = _CT.STOMACH_CONTENT
    slab[lumen & (y < gas_level)] = _CT.GAS


def _ct_spleen(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, grid: _Grid, body: _Torso,
               cavity: np.ndarray, rng: np.random.Generator) -> None:
    """Spleen: a crescent against the posterolateral wall on the image right, upper levels."""
    centre_t, half_t = rng.uniform(0.7, 0.8), 60 * body.spleen / grid.range_mm
    levels = _span(grid.t, centre_t - half_t, centre_t + half_t)
    x, y, cavity = x[levels], y[levels], cavity[levels]
    scale = _dome(grid.t[levels], centre_t, half_t, floor=0.3) * body.spleen  # (z, 1, 1)
    width, depth = body.cavity_width, 0.9 * body.half_depth - body.muscle
    phi = rng.uniform(0.45, 0.8)  # angle of the wall point behind the spleen (posterior > 0)
    wall_x, wall_y = width * math.cos(phi), depth * math.sin(phi)
    tangent = math.atan2(depth * math.cos(phi), -width * math.sin(phi))
    spleen = _ellipse(x, y, 0.8 * wall_x, 0.8 * wall_y, 60 * scale, 24 * scale + 2, tangent) < 1
    hollow = _ellipse(x, y, 0.4 * wall_x, 0.4 * wall_y, 0.3 * width, 0.3 * width) < 1
    tissue[levels][spleen & ~hollow & cavity] = _CT.SPLEEN


def _ct_pancreas(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray, body: _Torso,
                 aorta: tuple[float, float], rng: np.random.Generator) -> None:
    """Pancreas from the splenic hilum across the aorta to the head, splenic vein behind it."""
    levels = _span(t, 0.44, 0.62)
    x, y, t = x[levels], y[levels], t[levels]
    ax, ay = aorta
    width = body.cavity_width
    path = np.array([[0.55 * width, ay + 5], [ax, ay - 22], [-0.22 * width, ay - 8]])
    path += rng.normal(0, 5, size=path.shape)
    radius = 10 * _dome(t, 0.53, 0.09, floor=0.6) * rng.uniform(0.8, 1.2)  # (z, 1, 1)
    distance = _segment_distance(x, y, path)
    vein = _segment_distance(x, y, path[:2] + np.array([0.0, 11.0]))
    slab = tissue[levels]
    slab[distance < radius] = _CT.PANCREAS
    slab[(vein < 3.5) & (radius > 0)] = _CT.VEIN  # radius is 0 outside the pancreas' levels


def _ct_bowel(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, grid: _Grid, body: _Torso,
              cavity: np.ndarray, spine: _Spine, rng: np.random.Generator) -> None:
    """Small-bowel loops in the lower abdomen and the colon around them.

    Loops are bands around the zero level of a smooth random field: meandering tubes
    of even calibre in every slice, with a wall and fluid (or oral contrast) inside, some
    collapsed, a few gas pockets. They fill the peritoneal cavity in front of the
    retroperitoneum, densely at low levels and not at all above the kidneys.
    """
    levels = _span(grid.t, 0.0, 0.7)
    sub = _sub_grid(grid, levels)
    x, y, t, cavity = x[levels], y[levels], sub.t, cavity[levels]
    width, depth = body.cavity_width, body.cavity_depth
    region = cavity & (y < spine.front[levels] + 0.3 * np.abs(x) - 8) & (np.abs(x) < width - 12)
    calibre = 0.55 * np.clip((0.66 - t) / 0.2, 0, 1)  # (z, 1, 1) no loops cranially
    tube = np.abs(_smooth_field(rng, sub, (10, 22, 22)))
    collapsed = _smooth_field(rng, sub, (20, 30, 30)) > rng.uniform(0.0, 1.0)
    gas = _smooth_field(rng, sub, (8, 8, 8)) > rng.uniform(1.2, 2.0)
    slab = tissue[levels]
    slab[region & (tube < calibre)] = _CT.BOWEL_WALL
    lumen = region & (tube < 0.55 * calibre) & ~collapsed
    slab[lumen] = _CT.BOWEL_CONTENT
    slab[lumen & gas] = _CT.GAS
    # colon: ascending (image left), descending (image right), transverse (in front)
    r_colon = rng.uniform(15, 22)
    stool_gas = _smooth_field(rng, sub, (8, 5, 5)) > rng.uniform(0.0, 0.8)
    wobble = 6 * np.sin(t * rng.uniform(8, 14) + rng.uniform(0, 6))  # (z, 1, 1)
    transverse = _dome(t, rng.uniform(0.48, 0.56), 0.07)  # (z, 1, 1)
    segments = (  # (levels, centre x, centre y, semi-axis x, semi-axis y)
        (t < rng.uniform(0.48, 0.58), -(width - r_colon - 4) + wobble, -0.15 * depth, r_colon,
         0.9 * r_colon),
        (t < rng.uniform(0.62, 0.72), width - 0.8 * r_colon - 4, 0.1 * depth + wobble, 0.8 * r_colon,
         0.8 * r_colon),
        (transverse > 0, wobble, -0.72 * depth + r_colon, 0.6 * width * transverse + 1,
         0.8 * r_colon * transverse + 1),
    )
    for present, cx, cy, ax, ay in segments:
        colon = _ellipse(x, y, cx, cy, ax, ay)
        inside = (colon < 1) & present & cavity
        slab[inside] = _CT.BOWEL_WALL
        content = inside & (colon < np.square(np.clip(1 - 3 / np.minimum(ax, ay), 0, 1)))  # 3 mm wall
        slab[content] = _CT.STOOL
        slab[content & stool_gas] = _CT.GAS


def _ct_lungs(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, grid: _Grid, spine: _Spine,
              layers: tuple[np.ndarray, np.ndarray, np.ndarray], rng: np.random.Generator) -> None:
    """Lung bases: crescents inside the rib cage, above the diaphragm.

    The costophrenic recesses reach lowest at the back, so the lungs first appear as thin
    posterior crescents along the wall and thicken and spread laterally at the most cranial
    levels; never in front, never below level 0.74.
    """
    levels = _span(grid.t, 0.74, 1.0)
    depth, _, wall = (a[levels] for a in layers)
    x, y, t = x[levels], y[levels], grid.t[levels]
    r = np.sqrt(x * x + y * y) + 1e-3
    onset = rng.uniform(0.9, 0.95) - 0.14 * np.clip(y / r, 0, 1) + 0.3 * np.clip(-y / r, 0, 1)
    onset = onset - 0.02 * (x < 0)  # the right hemidiaphragm is higher
    thickness = rng.uniform(220, 300) * (t - onset)  # (z, H, W) mm of lung inside the wall
    paravertebral = (np.abs(x) < spine.half_width[levels] + 8) & (y > 0)
    lung = (depth >= wall) & (depth - wall < thickness) & ~paravertebral
    vessel = _texture(rng, x.shape, (0.3, 0.7, 0.7)) > 2.0
    slab = tissue[levels]
    slab[lung] = _CT.LUNG
    slab[lung & vessel] = _CT.LUNG_VESSEL


def _ct_ribs(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, grid: _Grid, body: _Torso,
             layers: tuple[np.ndarray, np.ndarray, np.ndarray], rng: np.random.Generator) -> None:
    """Rib cross-sections in the body wall at upper levels: small bright ovals.

    Ribs sit at roughly regular arc-length intervals along the wall, a few missing, each of its
    own size; they descend anteriorly, so the pattern slides forward with height, and the rib
    cage reaches lower at the back and sides than in front.
    """
    levels = _span(grid.t, 0.34, 1.0)
    depth, _, wall = (a[levels] for a in layers)
    x, y, z, t = x[levels], y[levels], grid.z[levels], grid.t[levels]
    sin = y / (np.sqrt(x * x + y * y) + 1e-3)
    arc = np.arctan2(y, np.abs(x)) * 0.5 * (body.half_width + body.half_depth)  # mm along the wall
    period = rng.uniform(38, 48)
    phase = rng.uniform(0, period) + rng.uniform(0, 10) * (x > 0)
    position = arc + rng.uniform(1.2, 2.0) * z - phase  # (z, H, W) mm along the rib pattern
    number = np.floor(position / period)
    index = number.astype(np.int64) % 64  # which rib (a short cycle of random ribs)
    keep, size = rng.random(64) < 0.8, rng.uniform(4.0, 9.0, size=64)
    jitter = rng.uniform(-0.2, 0.2, size=64) * period
    along = position - (number + 0.5) * period - jitter[index]
    across = depth - (wall - 7)
    rib = np.square(along / size[index]) + np.square(across / 3.8)
    spine_or_sternum = ((np.abs(x) < 55) & (y > 0)) | ((np.abs(x) < 35) & (y < 0))
    present = keep[index] & (t > 0.5 - 0.18 * sin) & ~spine_or_sternum
    slab = tissue[levels]
    slab[(rib < 1) & present] = _CT.BONE_CORTEX
    slab[(rib < 0.3) & present] = _CT.BONE_MARROW


def _ct_abdomen(rng: np.random.Generator, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Abdominal CT phantom in display space: HU image and labels, each ``(Z, H, W)``."""
    body = _sample_torso(rng)
    x, y = _warped_coordinates(rng, grid, amplitude_mm=5.0, corr_mm=45.0, max_rotation_deg=4.0,
                               max_shift_mm=8.0)
    tissue = np.zeros(grid.shape, dtype=np.uint8)  # (Z, H, W) _CT values
    layers = _ct_body_wall(tissue, x, y, grid.t, body)
    depth, fat, wall = layers
    cavity, deep = depth >= wall, depth >= fat
    _ct_table(tissue, body, grid)
    spine = _spine_geometry(grid.t, body)
    _ct_bowel(tissue, x, y, grid, body, cavity, spine, rng)
    _ct_liver(tissue, x, y, grid, body, cavity, rng)
    _ct_stomach(tissue, x, y, grid, body, cavity, rng)
    _ct_spleen(tissue, x, y, grid, body, cavity, rng)
    _ct_lungs(tissue, x, y, grid, spine, layers, rng)
    _ct_back_muscles(tissue, x, y, grid.t, spine, deep)
    aorta = _ct_vessels(tissue, x, y, grid.t, spine, rng)
    _ct_pancreas(tissue, x, y, grid.t, body, aorta, rng)
    _ct_spine(tissue, x, y, grid, spine, rng)
    _ct_ribs(tissue, x, y, grid, body, layers, rng)
    _ct_kidneys(tissue, x, y, grid, body, spine, rng)
    means, fine_sd, coarse_sd, labels = _ct_hu_table(rng, body)
    fine = _texture(rng, grid.shape, (0.4, 0.8, 0.8))
    coarse = _texture(rng, grid.shape, (0.8, 2.5, 2.5))
    image = _render(tissue, means, fine_sd, coarse_sd, fine, coarse)
    blur = rng.uniform(0.5, 0.8)
    image = ndimage.gaussian_filter(image, (0, blur, blur), truncate=3.0)
    image += rng.uniform(10, 20) * _texture(rng, grid.shape, (0, 0.6, 0.6))
    return image, labels[tissue]


# ----------------------------------------------------------------------------------------------
# Breast MRI
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_args(family: str, size: tuple[int, int], num_slices: int) -> tuple[int, int]:
    if family not in PHANTOM_CLASSES:
        raise ValueError(f"unknown phantom family {family!r}; known: {', '.join(PHANTOM_CLASSES)}")
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"size must be (height, width), got {size!r}")
    _check_int("num_slices", num_slices, 1)
    return _check_int("size[0] (height)", size[0], 1), _check_int("size[1] (width)", size[1], 1)


def generate_phantom(family: str, seed: int, size: tuple[int, int] = (128, 128),
                     num_slices: int = 48) -> PhantomSubject:
    """Generate one phantom subject.

    Args:
        family: ``"ct_abdomen"`` or ``"breast_mri"``.
        seed: non-negative integer; the same seed gives a bit-identical subject, on any CPU.
        size: in-plane matrix ``(height, width)``; the field of view is fixed, so this sets
            the in-plane spacing.
        num_slices: axial slices over a fixed cranio-caudal range.

    Raises:
        ValueError: unknown family, non-positive sizes or a negative seed.
    """
    height, width = _check_args(family, size, num_slices)
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    if family == "ct_abdomen":
        grid = _make_grid((height, width), num_slices, CT_FOV_MM, CT_SLICE_MM_AT_48)
        image, label = _ct_abdomen(rng, grid)
    else:
        grid = _make_grid((height, width), num_slices, BREAST_FOV_MM, BREAST_SLICE_MM_AT_48)
        image, label = _breast_mri(rng, grid)
    return PhantomSubject(
        image=display_to_ras(_quantise(image).astype(np.float32), slice_axis=2),
        label=display_to_ras(label.astype(np.uint8), slice_axis=2),
        spacing=tuple(float(s) for s in grid.spacing),
        family=family,
        class_names=PHANTOM_CLASSES[family],
    )


def _subject_seed(seed: int, index: int) -> int:
    """Independent seed of subject ``index`` of a data set generated with ``seed``."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1)[0])


def _subject_stem(family: str, index: int) -> str:
    return f"{family}_{index:04d}"


def _is_complete(root: Path, family: str, num_subjects: int) -> bool:
    """Whether ``root`` holds the class list and every image/label of the data set."""
    try:
        names = json.loads((root / "classes.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if names != list(PHANTOM_CLASSES[family]):
        return False
    stems = (_subject_stem(family, i) for i in range(num_subjects))
    return all((root / part / f"{stem}.nii.gz").is_file()
               for stem in stems for part in ("images", "labels"))


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def write_phantom_dataset(root: str | Path, family: str, num_subjects: int,
                          size: tuple[int, int] = (128, 128), num_slices: int = 48,
                          seed: int = 0) -> Path:
    """Write ``num_subjects`` phantoms as NIfTI: ``root/images``, ``root/labels``, ``classes.json``.

    Files are ``<family>_<i:04d>.nii.gz`` (image float32, label uint8, RAS+ affine from the
    spacing); ``classes.json`` is the JSON list of class names. Subject ``i`` uses a seed
    derived from ``(seed, i)``. The data set is written into a temporary sibling folder and
    renamed to ``root`` at the end, so ``root`` is either absent or complete. If ``root``
    already holds a complete data set of this family it is left as it is.

    Raises:
        ValueError: bad arguments, or ``root`` exists, is not empty and is not such a data set.
    """
    _check_args(family, size, num_slices)
    _check_int("num_subjects", num_subjects, 1)
    _check_int("seed", seed, 0)
    root = Path(root)
    if _is_complete(root, family, num_subjects):
        logger.info("phantom data set %s already complete", root)
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root} exists and is not a complete {family} phantom data set of "
                         f"{num_subjects} subjects; remove it or choose another root")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        (staging / "images").mkdir(parents=True)
        (staging / "labels").mkdir()
        for index in range(num_subjects):
            subject = generate_phantom(family, _subject_seed(seed, index), size, num_slices)
            stem = _subject_stem(family, index)
            _save_nifti(subject.image, subject.affine, staging / "images" / f"{stem}.nii.gz")
            _save_nifti(subject.label, subject.affine, staging / "labels" / f"{stem}.nii.gz")
        (staging / "classes.json").write_text(json.dumps(list(PHANTOM_CLASSES[family])) + "\n", encoding="utf-8")
        try:
            os.replace(staging, root)
        except OSError:
            if not _is_complete(root, family, num_subjects):  # not a concurrent writer's copy
                raise
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %d %s phantoms to %s", num_subjects, family, root)
    return root
