from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anatldm.cli import main
from anatldm.data.slices import content_hash
from anatldm.datamodules import AnatomyDataModule
from anatldm.errors import ConfigError, DataInputError


def folder_module(root: Path, tmp_path: Path, **kwargs) -> AnatomyDataModule:
    settings = dict(source="folder", root=str(root), preset="ct", image_size=16, batch_size=4,
                    num_workers=0, cache_dir=str(tmp_path / "cache"), min_foreground=0.0)
    return AnatomyDataModule(**{**settings, **kwargs})


def test_folder_batches(volume_folder: Path, tmp_path: Path) -> None:
    dm = folder_module(volume_folder, tmp_path, augment=True)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.class_names == ["background", "disc", "square"] and dm.num_classes == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 16, 16) and batch["mask"].dtype == torch.int64
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert int(batch["mask"].max()) < 3
    assert dm.normalization["preset"] == "ct"


def test_split_is_by_subject_and_seeded(volume_folder: Path, tmp_path: Path) -> None:
    dm = folder_module(volume_folder, tmp_path, split_fractions=(0.5, 0.25, 0.25))
    dm.setup()
    subjects = {s: set(dm.cache.subjects[d.indices]) for s, d in dm.datasets.items()}
    assert [len(v) for v in subjects.values()] == [2, 1, 1]
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"])
    again = folder_module(volume_folder, tmp_path, split_fractions=(0.5, 0.25, 0.25))
    again.setup()
    other = folder_module(volume_folder, tmp_path, split_fractions=(0.5, 0.25, 0.25), split_seed=3)
    other.setup()
    assert again.split_subjects(again._pairs()) == dm.split_subjects(dm._pairs())
    assert other.split_subjects(other._pairs()) != dm.split_subjects(dm._pairs())


def test_train_subjects_keeps_a_seeded_subset_and_the_other_splits(volume_folder: Path, tmp_path: Path) -> None:
    full = folder_module(volume_folder, tmp_path, split_fractions=(0.5, 0.25, 0.25))
    low = folder_module(volume_folder, tmp_path, split_fractions=(0.5, 0.25, 0.25), train_subjects=1)
    full.setup()
    low.setup()
    full_split, low_split = full.split_subjects(full._pairs()), low.split_subjects(low._pairs())
    assert len(low_split["train"]) == 1 and set(low_split["train"]) < set(full_split["train"])
    assert low_split["val"] == full_split["val"] and low_split["test"] == full_split["test"]
    names = low.cache.subject_names
    assert {names[i] for i in low.cache.subjects[low.datasets["train"].indices]} == set(low_split["train"])
    with pytest.raises(DataInputError, match="data.train_subjects: 3 subjects asked, the training split has 2"):
        folder_module(volume_folder, tmp_path, split_fractions=(0.5, 0.25, 0.25), train_subjects=3).setup()
    with pytest.raises(ConfigError, match="data.train_subjects must be a positive"):
        folder_module(volume_folder, tmp_path, train_subjects=0)


def test_manifest_split_column_is_obeyed(volume_folder: Path, tmp_path: Path) -> None:
    manifest = volume_folder / "manifest.csv"
    rows = [f"images/case{i}.nii.gz,labels/case{i}.nii.gz,{s}" for i, s in enumerate(["train", "train", "val", "test"])]
    manifest.write_text("image,label,split\n" + "\n".join(rows) + "\n")
    dm = AnatomyDataModule(source="folder", manifest=str(manifest), preset="ct", image_size=16,
                           num_workers=0, cache_dir=str(tmp_path / "c"), min_foreground=0.0)
    dm.setup()
    assert dm.split_subjects(dm._pairs()) == {"train": ["case0", "case1"], "val": ["case2"], "test": ["case3"]}


def test_folder_needs_preset_and_root(volume_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataInputError, match="data.preset is required"):
        folder_module(volume_folder, tmp_path, preset=None)
    with pytest.raises(DataInputError, match="exactly one of data.root or data.manifest"):
        AnatomyDataModule(source="folder")


def test_folder_without_class_names(volume_folder: Path, tmp_path: Path) -> None:
    (volume_folder / "classes.json").unlink()
    with pytest.raises(DataInputError, match="data.class_names is not set"):
        folder_module(volume_folder, tmp_path)
    dm = folder_module(volume_folder, tmp_path, class_names=["bg", "a", "b"])
    assert dm.num_classes == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "data.batch_size must be positive"),
    ({"split_fractions": (0.5, 0.5, 0.5)}, "data.split_fractions"),
    ({"min_foreground": 1.5}, "data.min_foreground must lie in"),
    ({"ct_window": (-1.0, 40.0)}, "data.ct_window width must be positive"),
])
def test_bad_settings(volume_folder: Path, tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        folder_module(volume_folder, tmp_path, **kwargs)


@pytest.mark.parametrize("family, classes", [("ct_abdomen", 6), ("breast_mri", 4)])
def test_phantom_source(tmp_path: Path, family: str, classes: int) -> None:
    dm = AnatomyDataModule(source="phantom", phantom_family=family, num_subjects=3, num_slices=8,
                           image_size=32, batch_size=2, num_workers=0, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == classes and dm.normalization["preset"] in ("ct", "mri")
    assert sorted(len(v) for v in dm.split_subjects(dm._pairs()).values()) == [1, 1, 1]
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32) and batch["mask"].max() < classes
    # phantoms take the real-data path: NIfTI pairs on disk, then the slice cache
    assert len(list((tmp_path / "phantoms").glob("*/images/*.nii.gz"))) == 3


def phantom_module(cache_dir: Path, family: str = "ct_abdomen") -> AnatomyDataModule:
    return AnatomyDataModule(source="phantom", phantom_family=family, num_subjects=2, num_slices=4, image_size=32,
                             min_foreground=0.0, split_fractions=(0.5, 0.5, 0.0), batch_size=2, num_workers=0,
                             cache_dir=str(cache_dir))


#: content hash of each tiny phantom data set below. The same on every machine: if it changes,
#: the generator, the preprocessing or a library changed the data, and the new value belongs in
#: the commit that says why.
PINNED_HASHES = {"ct_abdomen": "880e084c93a9607b", "breast_mri": "39427af0ac5ac359"}


@pytest.mark.parametrize("family", sorted(PINNED_HASHES))
def test_phantom_content_hash_is_pinned(tmp_path: Path, family: str) -> None:
    dm = phantom_module(tmp_path, family)
    dm.setup("fit")
    assert dm.content_hash == PINNED_HASHES[family]


def test_content_hash_depends_on_content_alone(tmp_path: Path) -> None:
    first, second = phantom_module(tmp_path / "a"), phantom_module(tmp_path / "b")
    first.setup("fit")
    second.setup("fit")
    assert first.cache.path != second.cache.path
    assert first.content_hash == second.content_hash == first.cache.content_hash
    assert len(first.content_hash) == 16 and int(first.content_hash, 16) >= 0
    cache = first.cache  # the digest of the arrays on disk is the one recorded when they were built
    assert content_hash({"images": cache.images, "masks": cache.masks, "subjects": cache.subjects,
                         "positions": cache.positions}) == first.content_hash
    images = np.asarray(cache.images)
    assert np.array_equal(images, np.round(images * 4096) / 4096)  # intensities on the 2**-12 grid
    altered = {"images": images.copy(), "masks": cache.masks, "subjects": cache.subjects,
               "positions": cache.positions}
    altered["images"][0, 0, 0] += 2.0**-12
    assert content_hash(altered) != first.content_hash
    with pytest.raises(RuntimeError, match="after setup"):
        _ = phantom_module(tmp_path / "c").content_hash


def one_subject(volume_folder: Path) -> Path:
    for part in ("images", "labels"):
        for index in (1, 2, 3):
            (volume_folder / part / f"case{index}.nii.gz").unlink()
    return volume_folder


def test_empty_validation_or_test_split_is_an_error(volume_folder: Path, tmp_path: Path) -> None:
    root = one_subject(volume_folder)
    dm = folder_module(root, tmp_path)  # default fractions (0.7, 0.15, 0.15): val and test are empty
    with pytest.raises(DataInputError, match=r"the validation split has no slice \(data.split_fractions="
                                             r"\[0.7, 0.15, 0.15\], 1 subjects, 0 in this split\)"):
        dm.setup("fit")
    with pytest.raises(DataInputError, match="the validation split has no slice"):
        dm.setup("validate")
    with pytest.raises(DataInputError, match="the test split has no slice"):
        dm.setup("test")
    dm.setup("predict")  # predicting needs no split


def test_zero_validation_fraction_trains_without_validation(volume_folder: Path, tmp_path: Path) -> None:
    dm = folder_module(one_subject(volume_folder), tmp_path, split_fractions=(0.85, 0.0, 0.15))
    dm.setup("fit")
    assert len(dm.datasets["train"]) > 0 and len(dm.datasets["val"]) == 0
    with pytest.raises(DataInputError, match="the test split has no slice"):
        dm.setup("test")


@pytest.mark.parametrize(("class_path", "new"), [
    ("anatldm.data.AnatomyDataModule", "anatldm.datamodules.AnatomyDataModule"),
    ("anatldm.data.datamodule.AnatomyDataModule", "anatldm.datamodules.anatomy"),
    ("anatldm.data.SampleSeeds", "anatldm.datamodules.SampleSeeds"),
])
def test_old_class_path_names_the_new_one(class_path: str, new: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    """The data modules moved from ``anatldm.data`` (Lightning-free now): a YAML of the old
    layout fails with one line that names the new path."""
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": "SegmenterTask"}, "data": {"class_path": class_path}}))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1
    assert f"moved to {new}" in error, error
