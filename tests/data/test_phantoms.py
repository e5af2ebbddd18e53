"""Phantoms: determinism, geometry, anatomical invariants and atomic data set writing."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from anatldm.data.orientation import ras_to_display
from anatldm.data.phantoms import (
    BREAST_MRI_CLASSES,
    CT_ABDOMEN_CLASSES,
    PHANTOM_CLASSES,
    PHANTOM_PRESETS,
    generate_phantom,
    write_phantom_dataset,
)

SIZE, SLICES = (64, 64), 16
SEEDS = (0, 1, 2)
FAMILIES = tuple(PHANTOM_CLASSES)


@pytest.fixture(scope="module")
def subjects():
    """A few tiny subjects of each family, generated once: ``{(family, seed): subject}``."""
    return {(family, seed): generate_phantom(family, seed, SIZE, SLICES)
            for family in FAMILIES for seed in SEEDS}


def _display(subject) -> np.ndarray:
    """Label map as display slices ``(Z, H, W)``: row 0 anterior, column 0 patient's right."""
    return ras_to_display(subject.label)


def _centroid(mask: np.ndarray) -> np.ndarray:
    """Mean (slice, row, column) of a mask's voxels."""
    return np.argwhere(mask).mean(axis=0)


def test_families_presets_and_classes_agree():
    assert PHANTOM_CLASSES == {"ct_abdomen": CT_ABDOMEN_CLASSES, "breast_mri": BREAST_MRI_CLASSES}
    assert set(PHANTOM_PRESETS) == set(PHANTOM_CLASSES)
    assert all(names[0] == "background" for names in PHANTOM_CLASSES.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_is_bit_identical_and_other_seed_differs(family, subjects):
    again = generate_phantom(family, 0, SIZE, SLICES)
    first = subjects[(family, 0)]
    np.testing.assert_array_equal(again.image, first.image)
    np.testing.assert_array_equal(again.label, first.label)
    assert not np.array_equal(subjects[(family, 1)].image, first.image)


@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_dtypes_spacing_and_labels(family, subjects):
    subject = subjects[(family, 0)]
    height, width = SIZE
    assert subject.image.shape == subject.label.shape == (width, height, SLICES)  # RAS (X, Y, Z)
    assert subject.image.dtype == np.float32 and subject.label.dtype == np.uint8
    assert np.isfinite(subject.image).all()
    assert subject.family == family and subject.class_names == PHANTOM_CLASSES[family]
    assert subject.label.max() < len(subject.class_names)
    assert set(np.unique(subject.label)) == set(range(len(subject.class_names)))  # all present
    np.testing.assert_allclose(subject.affine, np.diag([*subject.spacing, 1.0]))
    if family == "breast_mri":
        assert subject.image.min() >= 0  # magnitude image


def test_spacing_follows_a_fixed_field_of_view():
    small = generate_phantom("ct_abdomen", 0, (32, 48), 8)
    assert small.image.shape == (48, 32, 8)
    np.testing.assert_allclose(small.spacing, (400 / 48, 400 / 32, 240 / 8))


def test_ct_intensities_are_hounsfield_units(subjects):
    subject = subjects[("ct_abdomen", 0)]
    image, label = subject.image, subject.label
    assert image.min() < -900  # air
    assert np.median(image[label == 4]) > 200  # bone
    assert -950 < np.median(image[label == 5]) < -600  # lung
    assert 20 < np.median(image[label == 1]) < 200  # liver


@pytest.mark.parametrize("seed", SEEDS)
def test_ct_two_kidneys_one_each_side_on_every_kidney_slice(seed, subjects):
    labels = _display(subjects[("ct_abdomen", seed)])
    kidney_slices = [z for z in range(SLICES) if (labels[z] == 3).any()]
    assert kidney_slices
    midline = SIZE[1] / 2
    for z in kidney_slices:
        components, count = ndimage.label(labels[z] == 3)
        assert count == 2, f"slice {z}: {count} kidney components"
        columns = sorted(_centroid(components == i)[1] for i in (1, 2))
        assert columns[0] < midline < columns[1]


@pytest.mark.parametrize("seed", SEEDS)
def test_ct_liver_left_of_spleen_spine_posterior_midline_lungs_cranial(seed, subjects):
    labels = _display(subjects[("ct_abdomen", seed)])
    height, width = SIZE
    liver, spleen = _centroid(labels == 1), _centroid(labels == 2)
    assert liver[2] < width / 2 < spleen[2]  # image left = patient's right
    bone = _centroid(labels == 4)
    assert bone[1] > height / 2  # posterior half
    assert abs(bone[2] - width / 2) < 0.1 * width
    lung_slices = np.flatnonzero((labels == 5).any(axis=(1, 2)))
    assert lung_slices.min() >= SLICES // 2  # only in the cranial half
    kidney_slices = np.flatnonzero((labels == 3).any(axis=(1, 2)))
    assert kidney_slices.max() < lung_slices.min()  # no kidney at the lung bases


@pytest.mark.parametrize("seed", SEEDS)
def test_breast_two_breasts_at_mid_level_and_fgt_inside(seed, subjects):
    labels = _display(subjects[("breast_mri", seed)])
    height, width = SIZE
    mid = labels[SLICES // 2]
    components, count = ndimage.label(mid > 0)
    assert count == 2
    columns = sorted(_centroid(components == i)[1] for i in (1, 2))
    assert columns[0] < width / 2 < columns[1]
    assert _centroid(mid > 0)[0] < height / 2  # breasts hang in front (prone)
    fgt, breast = labels == 2, labels > 0
    assert fgt.any()
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    outer_rim = breast & ~ndimage.binary_erosion(breast, structure=in_plane)
    assert (fgt & outer_rim).sum() <= 0.05 * fgt.sum()  # FGT lies inside, not at the skin


def test_breast_is_smaller_at_the_top_and_bottom_levels(subjects):
    area = (_display(subjects[("breast_mri", 0)]) > 0).sum(axis=(1, 2))
    assert area[0] < area[SLICES // 2] and area[-1] < area[SLICES // 2]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"family": "ct_chest"}, "ct_chest.*known: ct_abdomen, breast_mri"),
    ({"size": (0, 64)}, "size"),
    ({"size": (64,)}, "size"),
    ({"num_slices": -3}, "num_slices"),
    ({"seed": -1}, "seed"),
])
def test_generate_phantom_rejects_bad_arguments(kwargs, match):
    arguments = {"family": "ct_abdomen", "seed": 0, "size": (16, 16), "num_slices": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_phantom(**arguments)


def test_write_phantom_dataset_is_complete_readable_and_atomic(tmp_path):
    root = tmp_path / "phantoms" / "ct"
    written = write_phantom_dataset(root, "ct_abdomen", num_subjects=2, size=(32, 32), num_slices=4,
                                    seed=3)
    assert written == root
    assert sorted(p.name for p in tmp_path.joinpath("phantoms").iterdir()) == ["ct"]  # no temp dir
    assert json.loads((root / "classes.json").read_text(encoding="utf-8")) == list(CT_ABDOMEN_CLASSES)
    for index in range(2):
        image = nib.load(root / "images" / f"ct_abdomen_{index:04d}.nii.gz")
        label = nib.load(root / "labels" / f"ct_abdomen_{index:04d}.nii.gz")
        assert image.shape == label.shape == (32, 32, 4)
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(image.affine, np.diag([12.5, 12.5, 60.0, 1.0]))
        np.testing.assert_allclose(label.affine, image.affine)
    first = nib.load(root / "images" / "ct_abdomen_0000.nii.gz").get_fdata()
    second = nib.load(root / "images" / "ct_abdomen_0001.nii.gz").get_fdata()
    assert not np.array_equal(first, second)  # each subject has its own seed
    mtime = (root / "classes.json").stat().st_mtime_ns
    write_phantom_dataset(root, "ct_abdomen", num_subjects=2, size=(32, 32), num_slices=4, seed=3)
    assert (root / "classes.json").stat().st_mtime_ns == mtime  # complete: left alone


def test_write_phantom_dataset_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    import anatldm.data.phantoms.writer as phantoms  # the module that writes the files

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(phantoms, "save_nifti", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_phantom_dataset(tmp_path / "ds", "breast_mri", num_subjects=1, size=(16, 16), num_slices=2)
    assert list(tmp_path.iterdir()) == []


def test_write_phantom_dataset_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a complete ct_abdomen phantom data set"):
        write_phantom_dataset(tmp_path / "ds", "ct_abdomen", num_subjects=1, size=(16, 16), num_slices=2)
    with pytest.raises(ValueError, match="unknown phantom family 'mri'"):
        write_phantom_dataset(tmp_path / "other", "mri", num_subjects=1)
