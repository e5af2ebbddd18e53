"""The nnU-Net v2 / MONAI layout and its integrity check, on tiny hand-made cases (no model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from anatldm.errors import ConfigError, DataInputError
from anatldm.export import NNUNetDatasetBuilder, check_dataset
from anatldm.export.geometry import (
    NiftiSliceWriter,
    slice_affine,
    slice_to_volume,
    to_raw_intensity,
)
from anatldm.export.memorisation import audit_summary, memorisation_reference, wilson_interval

CLASSES = ["background", "liver", "spleen"]
CT = {"preset": "ct", "ct_window": [400.0, 40.0], "spacing": [0.8, 0.7], "slice_axis": 2}


def build(root: Path, cases: int = 3, **kwargs) -> Path:
    rng = np.random.default_rng(0)
    builder = NNUNetDatasetBuilder(root, 501, "Tiny", CLASSES, "CT", NiftiSliceWriter(CT), **kwargs)
    builder.start()
    for index in range(cases):
        image = to_raw_intensity(rng.uniform(-1, 1, (8, 6)), CT)
        label = rng.integers(0, len(CLASSES), (8, 6)).astype(np.uint8)
        builder.add_case(f"synth_{index:06d}", image, label, seed=index)
    return builder.finish(description="tiny")


def test_layout_dataset_json_and_geometry(tmp_path: Path) -> None:
    folder = build(tmp_path)
    assert folder.name == "Dataset501_Tiny" and not list(tmp_path.glob(".*"))  # staging renamed away
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2} and meta["numTraining"] == 3
    image = nib.load(folder / "imagesTr" / "synth_000000_0000.nii.gz")
    label = nib.load(folder / "labelsTr" / "synth_000000.nii.gz")
    assert image.shape == label.shape == (6, 8, 1)  # (X = columns, Y = rows, one slice)
    np.testing.assert_allclose(image.affine, label.affine)
    np.testing.assert_allclose(np.diag(image.affine)[:3], [0.7, 0.8, 999 * 0.8])  # nnU-Net's 2D convention
    assert label.get_data_dtype() == np.uint8 and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    values = np.asarray(image.dataobj)
    assert -160 <= values.min() and values.max() <= 240  # HU inside W400/L40
    assert check_dataset(folder)["cases"] == 3


def test_monai_reads_the_datalist(tmp_path: Path) -> None:
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    folder = build(tmp_path)
    entries = load_decathlon_datalist(str(folder / "datalist.json"), is_segmentation=True, data_list_key="training")
    assert len(entries) == 3 and all(Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in entries)
    assert entries[0]["source"] == "synthetic" and entries[0]["seed"] == 0
    loaded = LoadImaged(keys=["image", "label"], image_only=True)(entries[0])
    assert loaded["image"].shape == loaded["label"].shape == (6, 8, 1)


def _corrupt_label_shape(folder: Path) -> None:
    path = folder / "labelsTr" / "synth_000001.nii.gz"
    old = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros((5, 8, 1), np.uint8), old.affine), path)


def _corrupt_label_value(folder: Path) -> None:
    path = folder / "labelsTr" / "synth_000001.nii.gz"
    old = nib.load(path)
    data = np.asarray(old.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, old.affine), path)


def _corrupt_label_geometry(folder: Path) -> None:
    path = folder / "labelsTr" / "synth_000001.nii.gz"
    old = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(old.dataobj), np.diag([1.0, 1.0, 1.0, 1.0])), path)


def _float_label(folder: Path) -> None:
    path = folder / "labelsTr" / "synth_000001.nii.gz"
    old = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(old.dataobj).astype(np.float32), old.affine), path)


def _edit_json(**changes):
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "dataset.json").read_text())
        meta.update(changes)
        (folder / "dataset.json").write_text(json.dumps(meta))
    return edit


@pytest.mark.parametrize("corrupt, named", [
    (_corrupt_label_shape, "labelsTr/synth_000001.nii.gz"),
    (_corrupt_label_value, "labelsTr/synth_000001.nii.gz"),
    (lambda f: (f / "labelsTr" / "synth_000001.nii.gz").unlink(), "labelsTr/synth_000001.nii.gz"),
    (lambda f: (f / "imagesTr" / "synth_000002_0000.nii.gz").unlink(), "imagesTr/synth_000002_0000.nii.gz"),
    (_corrupt_label_geometry, "labelsTr/synth_000001.nii.gz"),
    (_float_label, "labelsTr/synth_000001.nii.gz"),
    (lambda f: (f / "imagesTr" / "synth_000000_0000.nii.gz").write_bytes(b"garbage"), "synth_000000_0000.nii.gz"),
    (_edit_json(numTraining=4), "dataset.json"),
    (_edit_json(labels={"liver": 1, "spleen": 2}), "dataset.json"),
    (lambda f: (f / "dataset.json").unlink(), "dataset.json"),
    (lambda f: (f / "datalist.json").write_text('{"training": []}'), "datalist.json"),
], ids=["label-shape", "label-value-out-of-range", "label-missing", "image-missing", "label-geometry",
        "label-float", "image-corrupt", "numTraining", "labels-without-background", "dataset-json-missing",
        "datalist-stale"])
def test_integrity_check_fails_on_a_corrupted_copy(tmp_path: Path, corrupt, named: str) -> None:
    copy = tmp_path / "copy" / "Dataset501_Tiny"
    shutil.copytree(build(tmp_path / "export"), copy)
    corrupt(copy)
    with pytest.raises(DataInputError, match=named.replace(".", r"\.")) as error:
        check_dataset(copy)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kwargs, key", [
    ({"dataset_id": 0}, "dataset_id"), ({"dataset_id": 1000}, "dataset_id"),
    ({"dataset_name": "my data"}, "dataset_name"), ({"dataset_name": "a/b"}, "dataset_name"),
    ({"dataset_name": "Liver.v2"}, "dataset_name"), ({"dataset_name": ""}, "dataset_name"),
])
def test_bad_ids_and_names(tmp_path: Path, kwargs: dict, key: str) -> None:
    args = {"dataset_id": 501, "dataset_name": "Tiny", **kwargs}
    with pytest.raises(ConfigError, match=key):
        NNUNetDatasetBuilder(tmp_path, args["dataset_id"], args["dataset_name"], CLASSES, "CT", NiftiSliceWriter(CT))
    assert not list(tmp_path.iterdir())


def test_non_empty_target_needs_overwrite_and_ids_are_unique(tmp_path: Path) -> None:
    build(tmp_path)
    with pytest.raises(ConfigError, match="not empty; set overwrite"):
        NNUNetDatasetBuilder(tmp_path, 501, "Tiny", CLASSES, "CT", NiftiSliceWriter(CT))
    with pytest.raises(ConfigError, match="Dataset501_Tiny with dataset id 501"):
        NNUNetDatasetBuilder(tmp_path, 501, "Other", CLASSES, "CT", NiftiSliceWriter(CT))
    assert check_dataset(build(tmp_path, cases=2, overwrite=True))["cases"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset501_Tiny"]


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    builder = NNUNetDatasetBuilder(tmp_path, 7, "Tiny", CLASSES, "MRI", NiftiSliceWriter({}))
    builder.start()
    builder.add_case("synth_000000", np.zeros((4, 4)), np.zeros((4, 4), np.uint8))
    builder.abort()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("slice_axis, shape", [(2, (6, 8, 1)), (1, (6, 1, 8)), (0, (1, 6, 8))])
def test_every_slice_axis_gives_a_single_slice_ras_volume(slice_axis: int, shape: tuple) -> None:
    normalization = {**CT, "slice_axis": slice_axis}
    volume = slice_to_volume(np.zeros((8, 6)), normalization)
    affine = slice_affine(normalization)
    assert volume.shape == shape
    assert affine[slice_axis, slice_axis] == pytest.approx(999 * 0.8)
    assert sorted(np.diag(affine)[:3].tolist())[:2] == [0.7, 0.8]


def test_wilson_interval() -> None:
    low, high = wilson_interval(0, 200)
    assert low == 0 and 0.015 < high < 0.02  # 1.9 % (Wilson, 95 %)
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(0.0552, abs=1e-3) and high == pytest.approx(0.1744, abs=1e-3)


def test_memorisation_audit_flags_copies_not_new_samples() -> None:
    rng = np.random.default_rng(0)
    training = rng.uniform(-1, 1, (40, 8, 8)).astype(np.float32)
    held_out = rng.uniform(-1, 1, (30, 8, 8)).astype(np.float32)
    reference = memorisation_reference(training, held_out, 0.01, [f"s:{i}" for i in range(40)])
    new = rng.uniform(-1, 1, (20, 8, 8)).astype(np.float32)
    copies = training[[3, 5]] + 0.001
    distance, nearest = reference.nearest(np.concatenate([new, copies]))
    summary = audit_summary(reference, distance, nearest, [f"c{i}" for i in range(22)], list(range(22)))
    flagged = {f["case"]: f["nearest_training_slice"] for f in summary["flagged"]}
    assert flagged["c20"] == "s:3" and flagged["c21"] == "s:5"  # the copies, with their training slice
    assert len(flagged) <= 3  # new samples: flagged by chance at about the quantile's rate
    low, high = summary["flagged_fraction_interval"]
    assert low < summary["flagged_fraction"] == len(flagged) / 22 < high


def test_nnunet_own_integrity_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nnU-Net's verify_dataset_integrity on an export (the optional extra ``nnunet``)."""
    pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (pip install 'anatldm[nnunet]')")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = build(tmp_path, cases=4)
    verify_dataset_integrity(str(folder), num_processes=1)
