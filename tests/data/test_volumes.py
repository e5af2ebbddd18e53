from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from anatldm.data.volumes import VolumePair, VolumePreprocessor, find_volume_pairs, read_manifest
from anatldm.errors import ConfigError, DataInputError
from tests.conftest import labelled_volume, write_nifti


def preprocessor(**kwargs) -> VolumePreprocessor:
    settings = {"num_classes": 3, "image_size": (16, 16), "preset": "ct"}
    return VolumePreprocessor(**{**settings, **kwargs})


def test_find_pairs_matches_stems(volume_folder: Path) -> None:
    pairs = find_volume_pairs(volume_folder)
    assert [p.subject for p in pairs] == ["case0", "case1", "case2", "case3"]
    assert all(p.image.parent.name == "images" and p.label.parent.name == "labels" for p in pairs)


def test_preprocess_shapes_range_and_orientation(volume_folder: Path) -> None:
    pair = find_volume_pairs(volume_folder)[0]
    images, masks, positions = preprocessor()(pair)
    assert images.shape == masks.shape == (6, 16, 16)
    assert images.dtype == np.float32 and masks.dtype == np.uint8
    assert images.min() >= -1 and images.max() <= 1
    assert positions.tolist() == list(range(6))
    # the square sits at low x, low y (patient's left, posterior): image right, bottom
    rows, cols = np.nonzero(masks[3] == 2)
    assert rows.min() > 8 and cols.min() > 8
    # the CT window maps the disc (~150 HU) above the background (~-100 HU)
    assert images[3][masks[3] == 1].mean() > images[3][masks[3] == 0].mean() + 0.5


def test_min_foreground_drops_empty_slices(volume_folder: Path) -> None:
    images, masks, positions = preprocessor(min_foreground=0.05)(find_volume_pairs(volume_folder)[0])
    assert 0 not in positions and 5 not in positions
    assert ((masks > 0).mean(axis=(1, 2)) >= 0.05).all()


def test_resampling_changes_grid(volume_folder: Path) -> None:
    pair = find_volume_pairs(volume_folder)[0]
    images, _, _ = preprocessor(spacing=(3.0, 3.0), image_size=(32, 32))(pair)
    # 20 x 1.5 mm -> 10 columns at 3 mm, padded with -1 to 32
    assert (images[0] > -1).any(axis=0).sum() == 10


def test_mri_preset_and_label_map(tmp_path: Path) -> None:
    image, label = labelled_volume(0)
    write_nifti(tmp_path / "images" / "a.nii.gz", image + 500)
    write_nifti(tmp_path / "labels" / "a.nii.gz", (label * 10).astype(np.uint8))
    pair = find_volume_pairs(tmp_path)[0]
    images, masks, _ = preprocessor(preset="mri", label_map={0: 0, 10: 1, 20: 2})(pair)
    assert images.min() == pytest.approx(-1) and images.max() == pytest.approx(1)
    assert set(np.unique(masks)) == {0, 1, 2}


def test_manifest_csv_with_split(volume_folder: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,label,split\n"
                        f"{volume_folder}/images/case0.nii.gz,{volume_folder}/labels/case0.nii.gz,test\n"
                        "dataset/images/case1.nii.gz,dataset/labels/case1.nii.gz,\n")
    pairs = read_manifest(manifest)
    assert [(p.subject, p.split) for p in pairs] == [("case0", "test"), ("case1", None)]


def test_manifest_json(volume_folder: Path) -> None:
    manifest = volume_folder / "m.json"
    manifest.write_text(json.dumps([{"image": "images/case2.nii.gz", "label": "labels/case2.nii.gz"}]))
    assert read_manifest(manifest)[0].subject == "case2"


# -- bad input: one clear error naming the file ---------------------------------------------

def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DataInputError, match="no volumes found"):
        find_volume_pairs(tmp_path)


def test_missing_subfolder(tmp_path: Path) -> None:
    with pytest.raises(DataInputError, match="images: folder not found"):
        find_volume_pairs(tmp_path)


def test_image_without_label(volume_folder: Path) -> None:
    (volume_folder / "labels" / "case2.nii.gz").unlink()
    with pytest.raises(DataInputError, match=r"case2\.nii\.gz: image without label"):
        find_volume_pairs(volume_folder)


def test_label_without_image(volume_folder: Path) -> None:
    (volume_folder / "images" / "case1.nii.gz").unlink()
    with pytest.raises(DataInputError, match=r"case1\.nii\.gz: label without image"):
        find_volume_pairs(volume_folder)


def _pair(tmp_path: Path, image: np.ndarray, label: np.ndarray, label_affine=None) -> VolumePair:
    return VolumePair("x", write_nifti(tmp_path / "images" / "x.nii.gz", image),
                      write_nifti(tmp_path / "labels" / "x.nii.gz", label, label_affine))


def test_shape_mismatch(tmp_path: Path) -> None:
    image, label = labelled_volume(0)
    pair = _pair(tmp_path, image, label[:-2])
    with pytest.raises(DataInputError, match=r"labels/x\.nii\.gz: shape \(18, 18, 6\) does not match"):
        preprocessor()(pair)


def test_orientation_mismatch(tmp_path: Path) -> None:
    image, label = labelled_volume(0)
    flipped = np.diag([-1.5, 1.5, 3.0, 1.0])
    pair = _pair(tmp_path, image, label, label_affine=flipped)
    with pytest.raises(DataInputError, match=r"x\.nii\.gz: orientation/spacing/origin differ .*LAS.*RAS"):
        preprocessor()(pair)


def test_corrupt_file(tmp_path: Path) -> None:
    image, label = labelled_volume(0)
    pair = _pair(tmp_path, image, label)
    pair.image.write_bytes(b"not a volume")
    with pytest.raises(DataInputError, match=r"images/x\.nii\.gz: corrupt, truncated or unreadable"):
        preprocessor()(pair)


def test_truncated_file(tmp_path: Path) -> None:
    image, label = labelled_volume(0)
    pair = _pair(tmp_path, image, label)
    raw = gzip.decompress(pair.label.read_bytes())
    pair.label.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(DataInputError, match=r"labels/x\.nii\.gz: corrupt, truncated or unreadable"):
        preprocessor()(pair)


def test_non_integer_labels(tmp_path: Path) -> None:
    image, label = labelled_volume(0)
    pair = _pair(tmp_path, image, label.astype(np.float32) * 0.5)
    with pytest.raises(DataInputError, match=r"labels/x\.nii\.gz: label map has non-integer values"):
        preprocessor()(pair)


def test_out_of_range_labels(tmp_path: Path) -> None:
    image, label = labelled_volume(0)
    label[0, 0, 0] = 7
    pair = _pair(tmp_path, image, label)
    with pytest.raises(DataInputError, match=r"x\.nii\.gz: label value\(s\) \[7\] out of range \[0, 3\)"):
        preprocessor()(pair)


def test_label_not_in_label_map(tmp_path: Path) -> None:
    image, label = labelled_volume(0)
    pair = _pair(tmp_path, image, label)
    with pytest.raises(DataInputError, match=r"label value\(s\) \[2\] not in label_map"):
        preprocessor(label_map={0: 0, 1: 1})(pair)


def test_nan_voxels(tmp_path: Path) -> None:
    image, label = labelled_volume(0)
    image[2, 2, 2] = np.nan
    pair = _pair(tmp_path, image, label)
    with pytest.raises(DataInputError, match=r"images/x\.nii\.gz: 1 NaN or infinite voxel"):
        preprocessor()(pair)


def test_4d_image(tmp_path: Path) -> None:
    image, label = labelled_volume(0)
    pair = _pair(tmp_path, np.stack([image, image], axis=-1), label)
    with pytest.raises(DataInputError, match=r"images/x\.nii\.gz: 4D volume with 2 channels"):
        preprocessor()(pair)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="data.preset: unknown intensity preset 'pet'"):
        preprocessor(preset="pet")


def test_manifest_missing_file(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\nnope.nii.gz,nope_label.nii.gz\n")
    with pytest.raises(DataInputError, match=r"m\.csv: entry 1 names .*nope\.nii\.gz, which does not exist"):
        read_manifest(manifest)


def test_dicom_series_folder(tmp_path: Path) -> None:
    """A DICOM series folder is an image like any other file (read by torchio through SimpleITK)."""
    import SimpleITK as sitk

    image, label = labelled_volume(0)
    volume = sitk.GetImageFromArray(np.ascontiguousarray(image.transpose(2, 1, 0)).astype(np.int16))  # (z, y, x)
    volume.SetSpacing((1.5, 1.5, 3.0))
    series = tmp_path / "images" / "patient1"
    series.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume.GetDepth()):
        piece = volume[:, :, z]
        for tag, value in (("0010|0020", "patient1"), ("0020|000d", "1.2.3"), ("0020|000e", "1.2.3.4"),
                           ("0008|0060", "CT"), ("0020|0013", str(z + 1)),
                           ("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, z))))),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|0030", "1.5\\1.5"), ("0018|0050", "3.0")):
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"slice{z:03d}.dcm"))
        writer.Execute(piece)
    label_image = sitk.GetImageFromArray(np.ascontiguousarray(label.transpose(2, 1, 0)))
    label_image.CopyInformation(sitk.ReadImage(sorted(str(p) for p in series.iterdir())))
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(label_image, str(tmp_path / "labels" / "patient1.nii.gz"))
    pairs = find_volume_pairs(tmp_path)
    assert [(p.subject, p.image.is_dir()) for p in pairs] == [("patient1", True)]
    images, masks, _ = preprocessor()(pairs[0])
    assert images.shape == (6, 16, 16) and set(np.unique(masks)) == {0, 1, 2}


def test_non_ras_volumes_are_reoriented(tmp_path: Path) -> None:
    """An LPS pair (as DICOM-derived NIfTI often is) gives the same slices as its RAS twin."""
    image, label = labelled_volume(0)
    ras = _pair(tmp_path / "ras", image, label)
    lps_affine = np.diag([-1.5, -1.5, 3.0, 1.0])
    lps_affine[:3, 3] = [19 * 1.5, 17 * 1.5, 0]
    lps = VolumePair("lps", write_nifti(tmp_path / "lps" / "images" / "x.nii.gz", image[::-1, ::-1].copy(), lps_affine),
                     write_nifti(tmp_path / "lps" / "labels" / "x.nii.gz", label[::-1, ::-1].copy(), lps_affine))
    reference, reoriented = preprocessor()(ras), preprocessor()(lps)
    np.testing.assert_allclose(reoriented[0], reference[0], atol=1e-5)
    np.testing.assert_array_equal(reoriented[1], reference[1])
