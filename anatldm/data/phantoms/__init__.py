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
coarse grid by :func:`~anatldm.data.phantoms.geometry._quantise`, which absorbs such differences. (Rounding right before a
threshold would not help: it only moves the threshold to the nearest rounding midpoint.)

Modules: :mod:`~anatldm.data.phantoms.geometry` (the shared toolkit),
:mod:`~anatldm.data.phantoms.ct_abdomen` and :mod:`~anatldm.data.phantoms.breast_mri` (the two
families) and :mod:`~anatldm.data.phantoms.writer` (one subject, and a NIfTI data set).
"""

from anatldm.data.phantoms.breast_mri import BREAST_MRI_CLASSES
from anatldm.data.phantoms.ct_abdomen import CT_ABDOMEN_CLASSES
from anatldm.data.phantoms.geometry import INTENSITY_STEP  # noqa: F401 (a module attribute, as before)
from anatldm.data.phantoms.writer import (
    PHANTOM_CLASSES,
    PHANTOM_PRESETS,
    PhantomSubject,
    generate_phantom,
    write_phantom_dataset,
)

__all__ = [
    "BREAST_MRI_CLASSES",
    "CT_ABDOMEN_CLASSES",
    "PHANTOM_CLASSES",
    "PHANTOM_PRESETS",
    "PhantomSubject",
    "generate_phantom",
    "write_phantom_dataset",
]
