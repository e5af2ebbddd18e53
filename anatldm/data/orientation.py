"""Conversion between RAS+ voxel arrays and radiological 2D display slices.

Every volume in anatldm is a canonical RAS+ array ``(X, Y, Z)`` as in nibabel: +x points to
the patient's Right, +y Anterior, +z Superior (torchio's ``ToCanonical`` gives this). A 2D
slice is shown in the radiological convention of every PACS viewer: an axial slice has the
patient's right on the image left and anterior at the top; a coronal slice has superior at the
top and the patient's right on the left; a sagittal slice has superior at the top and anterior
on the left.
"""

from __future__ import annotations

import numpy as np

__all__ = ["display_to_ras", "ras_to_display"]


def ras_to_display(volume: np.ndarray, slice_axis: int = 2) -> np.ndarray:
    """Turn a RAS+ volume ``(X, Y, Z)`` into a stack of display slices ``(N, H, W)``.

    Args:
        volume: array with three spatial axes in RAS+ order.
        slice_axis: 2 for axial, 1 for coronal, 0 for sagittal slices.

    Returns:
        A view of shape ``(N, H, W)``: ``N`` slices along ``slice_axis`` (inferior to
        superior, posterior to anterior or right to left), each in display orientation.
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    stack = np.moveaxis(volume, slice_axis, 0)  # (N, a, b) with a < b in RAS order
    stack = np.swapaxes(stack, 1, 2)  # (N, b, a): rows follow the later RAS axis
    return stack[:, ::-1, ::-1]  # top = anterior/superior, left = right/anterior


def display_to_ras(stack: np.ndarray, slice_axis: int = 2) -> np.ndarray:
    """Inverse of :func:`ras_to_display`: ``(N, H, W)`` display slices to a RAS+ volume."""
    if stack.ndim != 3:
        raise ValueError(f"expected a (N, H, W) stack, got shape {stack.shape}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    stack = stack[:, ::-1, ::-1]
    stack = np.swapaxes(stack, 1, 2)
    return np.ascontiguousarray(np.moveaxis(stack, 0, slice_axis))
