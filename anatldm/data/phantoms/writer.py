"""The phantoms' public API: one subject (:func:`generate_phantom`) and a NIfTI data set
(:func:`write_phantom_dataset`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anatldm.atomic import StagedFolder
from anatldm.data.nifti import save_nifti
from anatldm.data.orientation import display_to_ras
from anatldm.data.phantoms.breast_mri import (
    BREAST_FOV_MM,
    BREAST_MRI_CLASSES,
    BREAST_SLICE_MM_AT_48,
    _breast_mri,
)
from anatldm.data.phantoms.ct_abdomen import (
    CT_ABDOMEN_CLASSES,
    CT_FOV_MM,
    CT_SLICE_MM_AT_48,
    _ct_abdomen,
)
from anatldm.data.phantoms.geometry import _make_grid, _quantise
from anatldm.errors import DataInputError, read_json

__all__ = ['PHANTOM_CLASSES', 'PHANTOM_PRESETS', 'PhantomSubject', 'generate_phantom', 'write_phantom_dataset']

logger = logging.getLogger(__name__)


PHANTOM_CLASSES: dict[str, tuple[str, ...]] = {
    "ct_abdomen": CT_ABDOMEN_CLASSES,
    "breast_mri": BREAST_MRI_CLASSES,
}
#: intensity preset (see ``anatldm.data.volumes``) that normalises each family
PHANTOM_PRESETS: dict[str, str] = {"ct_abdomen": "ct", "breast_mri": "mri"}


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
        names = read_json(root / "classes.json", DataInputError)
    except DataInputError:
        return False
    if names != list(PHANTOM_CLASSES[family]):
        return False
    stems = (_subject_stem(family, i) for i in range(num_subjects))
    return all((root / part / f"{stem}.nii.gz").is_file()
               for stem in stems for part in ("images", "labels"))


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
    # a concurrent writer of the same data set (another DDP rank) may finish first: its copy is kept
    with StagedFolder(root, complete=lambda folder: _is_complete(folder, family, num_subjects)) as staging:
        (staging / "images").mkdir()
        (staging / "labels").mkdir()
        for index in range(num_subjects):
            subject = generate_phantom(family, _subject_seed(seed, index), size, num_slices)
            stem = _subject_stem(family, index)
            save_nifti(subject.image, subject.affine, staging / "images" / f"{stem}.nii.gz")
            save_nifti(subject.label, subject.affine, staging / "labels" / f"{stem}.nii.gz")
        (staging / "classes.json").write_text(json.dumps(list(PHANTOM_CLASSES[family])) + "\n", encoding="utf-8")
    logger.info("wrote %d %s phantoms to %s", num_subjects, family, root)
    return root
