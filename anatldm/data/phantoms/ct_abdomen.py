"""The abdominal CT phantom family: torso, organs, spine, vessels, bowel, lungs and ribs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from anatldm.data.phantoms.geometry import (
    _dome,
    _ellipse,
    _Grid,
    _render,
    _segment_distance,
    _smooth_field,
    _span,
    _sub_grid,
    _texture,
    _tissue_table,
    _warped_coordinates,
)

__all__ = ['CT_ABDOMEN_CLASSES']


CT_ABDOMEN_CLASSES = ("background", "liver", "spleen", "kidney", "bone", "lung")
CT_FOV_MM = 400.0  # in-plane field of view, any matrix size
CT_SLICE_MM_AT_48 = 5.0  # slice thickness for 48 slices: a 240 mm cranio-caudal range


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
