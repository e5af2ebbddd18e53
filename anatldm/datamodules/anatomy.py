"""``AnatomyDataModule``: labelled 2D slices from phantoms or a folder of real volumes."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from anatldm.data import phantoms
from anatldm.data.augmentation import SliceAugmentation
from anatldm.data.phantoms import PHANTOM_CLASSES, PHANTOM_PRESETS, write_phantom_dataset
from anatldm.data.slices import SliceCache, SliceDataset, build_slice_cache
from anatldm.data.volumes import (
    IntensityPreset,
    VolumePair,
    VolumePreprocessor,
    find_volume_pairs,
    read_manifest,
)
from anatldm.datamodules.samplers import EpochShuffle, ShardSampler
from anatldm.errors import ConfigError, DataInputError, read_json

__all__ = ["AnatomyDataModule"]

logger = logging.getLogger(__name__)
PhantomFamily = Literal["ct_abdomen", "breast_mri"]
_SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


class AnatomyDataModule(LightningDataModule):
    """Labelled 2D slices from built-in phantoms or a folder/manifest of real 3D volumes.

    Both sources take one path: 3D subjects on disk -> validated, normalised slices in a
    cache built once in :meth:`prepare_data` -> memory-mapped datasets split by subject.
    Batches are ``{"image": (B, 1, H, W) float32 in [-1, 1], "mask": (B, H, W) int64,
    "subject": list[str], "position": (B,) int64}``.

    Args:
        source: ``"phantom"`` (generated, no download) or ``"folder"`` (``root`` or ``manifest``).
        root: folder with ``images/`` and ``labels/`` of matching stems (``source: folder``).
        manifest: CSV (``image,label[,split]``) or JSON manifest, instead of ``root``.
        phantom_family: ``"ct_abdomen"`` or ``"breast_mri"`` (``source: phantom``).
        num_subjects: number of phantom subjects.
        num_slices: slices per phantom subject.
        phantom_seed: seed of the phantom generator.
        image_size: side of the square output slices, or ``[H, W]``.
        preset: intensity preset ``"ct"``, ``"mri"`` or ``"none"``; phantoms pick theirs.
        ct_window: ``[width, level]`` of the CT window in HU.
        mri_percentiles: percentiles mapped to -1 and 1 by the MRI preset.
        spacing: in-plane target spacing in mm ``[rows, columns]``; ``None`` keeps the native one.
        slice_axis: 2 axial, 1 coronal, 0 sagittal (axes of the RAS+ canonical volume).
        min_foreground: keep slices with at least this fraction of labelled pixels.
        class_names: names of the classes, background first (folder data; else read from
            ``root/classes.json``); phantoms name their own.
        label_map: raw label value -> class index, for data sets with other label values.
        split_fractions: ``[train, val, test]`` fractions of subjects (a manifest's ``split``
            column overrides them for the subjects it names).
        split_seed: seed of the subject-level split.
        train_subjects: keep only this many of the training split's subjects (a seeded choice,
            ``split_seed``), for low-data experiments; validation and test splits are unchanged,
            and the dropped subjects go to no split. ``None``: all.
        cache_dir: where phantoms and slice caches are written.
        batch_size: samples per batch.
        num_workers: data loader worker processes.
        augment: torchio augmentation on the training split.
    """

    def __init__(
        self,
        source: Literal["phantom", "folder"] = "phantom",
        root: str | None = None,
        manifest: str | None = None,
        phantom_family: PhantomFamily = "ct_abdomen",
        num_subjects: int = 24,
        num_slices: int = 48,
        phantom_seed: int = 0,
        image_size: int | tuple[int, int] = 64,
        preset: IntensityPreset | None = None,
        ct_window: tuple[float, float] = (400.0, 40.0),
        mri_percentiles: tuple[float, float] = (0.5, 99.5),
        spacing: tuple[float, float] | None = None,
        slice_axis: Literal[0, 1, 2] = 2,
        min_foreground: float = 0.01,
        class_names: list[str] | None = None,
        label_map: dict[int, int] | None = None,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        split_seed: int = 0,
        train_subjects: int | None = None,
        cache_dir: str = ".cache/anatldm",
        batch_size: int = 16,
        num_workers: int = 2,
        augment: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if source == "folder" and (root is None) == (manifest is None):
            raise DataInputError("data.source 'folder' needs exactly one of data.root or data.manifest")
        if num_subjects < 1 or num_slices < 1:
            raise ConfigError(f"data.num_subjects and data.num_slices must be positive, got {num_subjects}, "
                              f"{num_slices}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be positive, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        if len(split_fractions) != 3 or min(split_fractions) < 0 or split_fractions[0] <= 0 \
                or abs(sum(split_fractions) - 1) > 1e-6:
            raise ConfigError(f"data.split_fractions must be three non-negative numbers summing to 1 "
                             f"with a positive train fraction, got {split_fractions}")
        if train_subjects is not None and train_subjects < 1:
            raise ConfigError(f"data.train_subjects must be a positive number of subjects (or null: all), "
                              f"got {train_subjects}")
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.class_names = self._resolve_class_names()
        self.num_classes = len(self.class_names)
        self.preprocessor = VolumePreprocessor(
            num_classes=self.num_classes,
            image_size=self.image_size,
            preset=self._resolve_preset(),
            ct_window=ct_window,
            mri_percentiles=mri_percentiles,
            spacing=spacing,
            slice_axis=slice_axis,
            min_foreground=min_foreground,
            label_map=label_map,
        )
        self.cache: SliceCache | None = None
        self.datasets: dict[str, SliceDataset] = {}
        self._split_sizes: dict[str, int] = {}  # subjects per split

    # -- what the models need to know -------------------------------------------------------
    @property
    def normalization(self) -> dict:
        """How raw intensities were mapped to [-1, 1]; stored with exported models."""
        settings = self.preprocessor.settings
        return {key: settings[key] for key in ("preset", "ct_window", "mri_percentiles", "spacing",
                                               "slice_axis", "image_size")}

    @property
    def content_hash(self) -> str:
        """16 hex digits identifying the cached slices (the same on every machine for the same
        config); available after :meth:`setup`."""
        if self.cache is None:
            raise RuntimeError("AnatomyDataModule.content_hash is known after setup()")
        return self.cache.content_hash

    # -- Lightning hooks ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write phantoms (if asked) and build the slice cache; rank 0 only."""
        build_slice_cache(self._pairs(), self.preprocessor, self.class_names, self.hparams.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """Build (or reuse) the cache and the splits once; check the splits ``stage`` needs.

        ``fit`` needs a validation slice unless ``split_fractions[1]`` is 0 (validation off),
        ``validate`` a validation slice and ``test`` a test slice; an empty one is a
        :class:`DataInputError` naming the split.
        """
        if self.cache is None:
            pairs = self._pairs()
            path = build_slice_cache(pairs, self.preprocessor, self.class_names, self.hparams.cache_dir)
            self.cache = SliceCache(path)
            transform = SliceAugmentation() if self.hparams.augment else None
            for split, subjects in self.split_subjects(pairs).items():
                indices = self.cache.slice_indices(subjects)
                self.datasets[split] = SliceDataset(self.cache, indices, transform if split == "train" else None)
                self._split_sizes[split] = len(subjects)
                logger.info("%s: %d subjects, %d slices", split, len(subjects), len(indices))
            if len(self.datasets["train"]) == 0:
                raise DataInputError("the training split has no slice; add subjects or lower data.min_foreground")
        needed = {"fit": ["val"] if self.hparams.split_fractions[1] > 0 else [], "validate": ["val"],
                  "test": ["test"]}.get(stage, [])
        for split in needed:
            if len(self.datasets[split]) == 0:
                raise DataInputError(
                    f"the {_SPLIT_NAMES[split]} split has no slice (data.split_fractions="
                    f"{list(self.hparams.split_fractions)}, {len(self.cache.subject_names)} subjects, "
                    f"{self._split_sizes[split]} in this split): add subjects or lower data.min_foreground"
                    + ("; or set data.split_fractions[1] to 0 to train without validation"
                       if stage == "fit" else ""))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, drop_last=len(self.datasets["train"]) > self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", sharded=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", sharded=True)

    # -- helpers -----------------------------------------------------------------------------
    def split_subjects(self, pairs: list[VolumePair]) -> dict[str, list[str]]:
        """Subject-level split: fixed where the manifest says so, seeded fractions elsewhere."""
        fixed = {split: [p.subject for p in pairs if p.split == split] for split in ("train", "val", "test")}
        free = np.array([p.subject for p in pairs if p.split is None], dtype=object)
        free = free[np.random.default_rng(self.hparams.split_seed).permutation(len(free))]
        fractions = self.hparams.split_fractions
        n_val = int(round(fractions[1] * len(free)))
        n_test = int(round(fractions[2] * len(free)))
        if len(free) >= 3:  # every requested split gets at least one subject
            n_val, n_test = max(n_val, int(fractions[1] > 0)), max(n_test, int(fractions[2] > 0))
        n_train = len(free) - n_val - n_test
        train = fixed["train"] + sorted(free[:n_train].tolist())
        wanted = self.hparams.train_subjects
        if wanted is not None:
            if wanted > len(train):
                raise DataInputError(f"data.train_subjects: {wanted} subjects asked, the training split has "
                                     f"{len(train)}")
            chosen = np.random.default_rng(self.hparams.split_seed).permutation(len(train))[:wanted]
            train = sorted(train[i] for i in chosen)
        return {
            "train": train,
            "val": fixed["val"] + sorted(free[n_train:n_train + n_val].tolist()),
            "test": fixed["test"] + sorted(free[n_train + n_val:].tolist()),
        }

    def _pairs(self) -> list[VolumePair]:
        hp = self.hparams
        if hp.source == "phantom":
            return find_volume_pairs(self._phantom_root())
        return find_volume_pairs(hp.root) if hp.root is not None else read_manifest(hp.manifest)

    def _phantom_root(self) -> Path:
        hp = self.hparams
        height, width = self.image_size
        generator = _phantom_generator_version()  # a new generator: new data
        name = (f"{hp.phantom_family}-n{hp.num_subjects}-{height}x{width}x{hp.num_slices}-seed{hp.phantom_seed}"
                f"-gen{generator}")
        root = Path(hp.cache_dir) / "phantoms" / name
        if not (root / "classes.json").is_file():
            write_phantom_dataset(root, hp.phantom_family, hp.num_subjects, size=self.image_size,
                                  num_slices=hp.num_slices, seed=hp.phantom_seed)
        return root

    def _resolve_class_names(self) -> list[str]:
        hp = self.hparams
        if hp.source == "phantom":
            return list(PHANTOM_CLASSES[hp.phantom_family])
        if hp.root is not None and not Path(hp.root).is_dir():
            raise DataInputError(f"data.root: {hp.root}: folder not found")
        if hp.class_names is not None:
            names, source = list(hp.class_names), "data.class_names"
        else:
            classes_file = Path(hp.root or Path(hp.manifest).parent) / "classes.json"
            if not classes_file.is_file():
                raise DataInputError(f"data.class_names is not set and {classes_file} does not exist; "
                                     f"name the classes, background first")
            source = str(classes_file)
            names = read_json(classes_file, DataInputError)
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise DataInputError(f"{classes_file}: expected a JSON list of class names, got {names!r}")
        if len(names) < 2 or len(set(names)) != len(names):
            raise DataInputError(f"{source}: class names must be at least two distinct names (background first), "
                                 f"got {names}")
        return names

    def _resolve_preset(self) -> str:
        hp = self.hparams
        if hp.preset is not None:
            return hp.preset
        if hp.source == "phantom":
            return PHANTOM_PRESETS[hp.phantom_family]
        raise DataInputError("data.preset is required for folder data: 'ct', 'mri' or 'none'")

    def _loader(self, split: str, shuffle: bool = False, drop_last: bool = False,
                sharded: bool = False) -> DataLoader:
        """``sharded``: under DDP every rank reads its own slices, none twice (no padding)."""
        hp = self.hparams
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything
        trainer = getattr(self, "trainer", None)
        sampler = EpochShuffle(self.datasets[split], seed=seed) if shuffle else None
        if sharded and trainer is not None and trainer.world_size > 1:
            sampler = ShardSampler(self.datasets[split], trainer.world_size, trainer.global_rank)
        # the loader's own generator draws its worker seed, so creating an iterator leaves the
        # global RNG (and with it a resumed run's augmentation) untouched
        return DataLoader(self.datasets[split], batch_size=hp.batch_size, sampler=sampler,
                          generator=torch.Generator().manual_seed(seed) if shuffle else None,
                          drop_last=drop_last, num_workers=hp.num_workers,
                          persistent_workers=hp.num_workers > 0, pin_memory=torch.cuda.is_available())


def _phantom_generator_version() -> str:
    """The first 8 hex digits of a SHA-256 over every module of :mod:`anatldm.data.phantoms`
    (names and bytes, in name order): a changed generator writes its data to a new folder."""
    digest = hashlib.sha256()
    for path in sorted(Path(phantoms.__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]
