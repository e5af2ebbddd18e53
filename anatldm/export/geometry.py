"""Geometry and intensity of exported slices (no Lightning).

A generated or real slice is a 2D display image ``(H, W)`` (radiological orientation, see
:mod:`anatldm.data.orientation`). It is written as a **single-slice RAS+ volume**: the slice
goes back to the canonical RAS+ array of the training volumes (``display_to_ras`` along the
training data's ``slice_axis``), and the affine is diagonal with the training data's in-plane
target spacing (``data.spacing`` ``[rows, columns]``; 1 mm when the data kept its native spacing).
:class:`NiftiSliceWriter` is the one writer of such files: ``anatldm predict``'s
:class:`~anatldm.callbacks.SampleWriter` and :class:`~anatldm.export.DatasetWriter` both use it.

The out-of-plane spacing is nnU-Net v2's own 2D convention: nnU-Net reads a 2D image as a
one-slice 3D image whose out-of-plane spacing is 999 times the largest in-plane spacing
(``SimpleITKIO`` and ``NaturalImage2DIO``), so that it plans a 2D network and never resamples
or convolves across slices. Writing that spacing into the NIfTI header gives nnU-Net exactly
what it would build from a 2D file, while keeping NIfTI's geometry and float CT values in HU
(a PNG keeps neither).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anatldm.data.nifti import save_nifti
from anatldm.data.orientation import display_to_ras

__all__ = ["NNUNET_2D_SPACING_FACTOR", "NiftiSliceWriter", "in_plane_spacing", "intensity_description",
           "slice_affine", "slice_to_volume", "to_raw_intensity"]

#: nnU-Net v2's out-of-plane spacing of a 2D image, as a multiple of its largest in-plane spacing
NNUNET_2D_SPACING_FACTOR = 999.0


def to_raw_intensity(images: np.ndarray, normalization: dict) -> np.ndarray:
    """Undo the ``ct`` preset (back to HU); other presets stay in [-1, 1]."""
    if normalization.get("preset") == "ct" and normalization.get("ct_window"):
        width, level = normalization["ct_window"]
        low = level - width / 2
        return ((images + 1) / 2 * width + low).astype(np.float32)
    return images.astype(np.float32)


def intensity_description(normalization: dict) -> str:
    """One sentence on the unit of the written image values."""
    if normalization.get("preset") == "ct" and normalization.get("ct_window"):
        width, level = normalization["ct_window"]
        return (f"CT in Hounsfield units, inside the training window W{width:g}/L{level:g} "
                f"([{level - width / 2:g}, {level + width / 2:g}] HU; values outside it were clipped in training)")
    if normalization.get("preset") == "mri":
        low, high = normalization.get("mri_percentiles") or (0.5, 99.5)
        return (f"MRI in the training scale [-1, 1]: each training volume's {low:g}th and {high:g}th intensity "
                f"percentiles were mapped to -1 and 1 (no absolute unit)")
    return "the training scale [-1, 1] (intensity preset 'none': the raw values were only rescaled)"


def in_plane_spacing(normalization: dict) -> tuple[float, float]:
    """``(rows, columns)`` spacing in mm of the training slices (1 mm when not resampled)."""
    spacing = normalization.get("spacing") or [1.0, 1.0]
    return float(spacing[0]), float(spacing[1])


def slice_affine(normalization: dict) -> np.ndarray:
    """The 4 x 4 RAS+ affine of a single-slice volume of the training data's geometry.

    Display columns run along the earlier in-plane RAS axis, display rows along the later one
    (:func:`anatldm.data.orientation.ras_to_display`); the slice axis gets nnU-Net's 2D spacing.
    """
    rows, columns = in_plane_spacing(normalization)
    slice_axis = int(normalization.get("slice_axis", 2))
    first, second = (axis for axis in range(3) if axis != slice_axis)
    diagonal = [0.0, 0.0, 0.0, 1.0]
    diagonal[first], diagonal[second] = columns, rows
    diagonal[slice_axis] = NNUNET_2D_SPACING_FACTOR * max(rows, columns)
    return np.diag(diagonal)


def slice_to_volume(image: np.ndarray, normalization: dict) -> np.ndarray:
    """A display slice ``(H, W)`` as a single-slice RAS+ volume (e.g. ``(W, H, 1)`` for axial)."""
    if image.ndim != 2:
        raise ValueError(f"expected a (H, W) slice, got shape {image.shape}")
    return display_to_ras(image[None], int(normalization.get("slice_axis", 2)))


class NiftiSliceWriter:
    """Writes display slices ``(H, W)`` as single-slice RAS+ NIfTI files in the training data's geometry.

    The slice goes back along the training data's ``slice_axis`` (:func:`slice_to_volume`) and
    gets :func:`slice_affine`, so a viewer shows it as the training volumes are shown.

    Args:
        normalization: the pipeline's ``normalization`` (``slice_axis``, ``spacing``; as stored by
            the data module with the exported model).
    """

    def __init__(self, normalization: dict) -> None:
        self.normalization = dict(normalization)
        self.affine = slice_affine(self.normalization)  # (4, 4)

    def volume(self, image: np.ndarray) -> np.ndarray:
        """The single-slice RAS+ volume of display slice ``image`` ``(H, W)``."""
        return slice_to_volume(image, self.normalization)

    def write(self, image: np.ndarray, path: str | Path) -> Path:
        """Write display slice ``image`` ``(H, W)`` (values in the dtype to store) to ``path``, atomically."""
        return save_nifti(self.volume(image), self.affine, path)
