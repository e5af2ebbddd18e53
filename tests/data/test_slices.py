from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from anatldm.data.slices import SliceCache, SliceDataset, build_slice_cache
from anatldm.data.volumes import VolumePreprocessor, find_volume_pairs
from anatldm.errors import DataInputError
from tests.conftest import labelled_volume, write_nifti

CLASSES = ["background", "disc", "square"]


def preprocessor(**kwargs) -> VolumePreprocessor:
    return VolumePreprocessor(**{"num_classes": 3, "image_size": (16, 16), "preset": "ct", **kwargs})


def test_cache_contents(volume_folder: Path, tmp_path: Path) -> None:
    pairs = find_volume_pairs(volume_folder)
    cache = SliceCache(build_slice_cache(pairs, preprocessor(), CLASSES, tmp_path / "cache"))
    assert len(cache) == 4 * 6
    assert cache.images.shape == (24, 16, 16) and cache.masks.dtype == np.uint8
    assert cache.subject_names == [p.subject for p in pairs]
    assert np.bincount(cache.subjects).tolist() == [6, 6, 6, 6]
    assert cache.meta["slices_with_class"] == {"background": 24, "disc": 16, "square": 16}
    item = SliceDataset(cache, cache.slice_indices(["case2"]))[0]
    assert item["image"].shape == (1, 16, 16) and item["mask"].shape == (16, 16)
    assert item["subject"] == "case2" and item["mask"].dtype.is_floating_point is False


def test_cache_reused_when_settings_match(volume_folder: Path, tmp_path: Path) -> None:
    pairs = find_volume_pairs(volume_folder)
    first = build_slice_cache(pairs, preprocessor(), CLASSES, tmp_path)
    stamp = (first / "images.npy").stat().st_mtime_ns
    second = build_slice_cache(pairs, preprocessor(), CLASSES, tmp_path)
    assert second == first and (second / "images.npy").stat().st_mtime_ns == stamp


def test_cache_rebuilt_when_settings_or_files_change(volume_folder: Path, tmp_path: Path) -> None:
    pairs = find_volume_pairs(volume_folder)
    first = build_slice_cache(pairs, preprocessor(), CLASSES, tmp_path)
    other_window = build_slice_cache(pairs, preprocessor(ct_window=(1500, -600)), CLASSES, tmp_path)
    assert other_window != first
    image, label = labelled_volume(9)
    write_nifti(volume_folder / "images" / "case0.nii.gz", image)
    os.utime(volume_folder / "images" / "case0.nii.gz", ns=(1, 1))
    changed = build_slice_cache(find_volume_pairs(volume_folder), preprocessor(), CLASSES, tmp_path)
    assert changed not in (first, other_window)
    assert not np.array_equal(SliceCache(changed).images, SliceCache(first).images)


def test_bad_subject_leaves_no_cache(volume_folder: Path, tmp_path: Path) -> None:
    (volume_folder / "labels" / "case3.nii.gz").write_bytes(b"broken")
    pairs = find_volume_pairs(volume_folder)
    with pytest.raises(DataInputError, match="case3.nii.gz: corrupt"):
        build_slice_cache(pairs, preprocessor(), CLASSES, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_no_slice_kept_is_an_error(volume_folder: Path, tmp_path: Path) -> None:
    pairs = find_volume_pairs(volume_folder)
    with pytest.raises(DataInputError, match="no slice passes min_foreground=0.99"):
        build_slice_cache(pairs, preprocessor(min_foreground=0.99), CLASSES, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
