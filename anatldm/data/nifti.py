"""Writing NIfTI volumes: one function for phantoms, generated samples and exported data sets."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from anatldm.atomic import write_atomic

__all__ = ["save_nifti"]


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write ``array`` with voxel-to-world ``affine`` (RAS+, mm) to ``path`` (``.nii.gz``), atomically.

    The affine is stored as both the qform and the sform with code 1 (scanner-anatomical), so
    ITK (nnU-Net, SimpleITK) and nibabel readers see the same geometry.

    Args:
        array: the voxels, in the dtype to store.
        affine: 4 x 4 voxel-to-world matrix.
        path: target file; written under a temporary name and renamed.
    """
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return write_atomic(path, lambda partial: nib.save(image, partial), suffix=".nii.gz")
