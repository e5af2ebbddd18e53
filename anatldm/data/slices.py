"""The 2D slice cache: 3D subjects are decoded once, training reads memory-mapped arrays.

A cache is a folder ``<cache_dir>/slices-<key>/`` where ``key`` hashes the preprocessing
settings and the identity (path, size, modification time) of every source file, so changing
either builds a new cache and an unchanged data set reuses the old one. It holds

- ``images.npy``   ``(N, H, W) float32`` slices in [-1, 1],
- ``masks.npy``    ``(N, H, W) uint8`` class-index label maps,
- ``subjects.npy`` ``(N,) int32`` index of each slice's subject in ``meta.json``,
- ``positions.npy`` ``(N,) int32`` slice position along the slice axis,
- ``meta.json``    settings, subject names and fixed splits, class names, per-class counts and
  ``content_hash``, a digest of the four arrays (see :func:`content_hash`).

It is written into a temporary sibling folder and renamed into place in one step, so a crash
or a bad file never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from anatldm.atomic import StagedFolder
from anatldm.data.volumes import VolumePair, VolumePreprocessor
from anatldm.errors import ConfigError, DataInputError, read_json_object

__all__ = ["SliceCache", "SliceDataset", "build_slice_cache", "cache_key", "content_hash"]

logger = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: intensities on a 2**-12 grid, content_hash in meta.json
#: fixed dtype (little-endian) of each cached array, as hashed by :func:`content_hash`
CACHE_DTYPES = {"images": "<f4", "masks": "|u1", "subjects": "<i4", "positions": "<i4"}


def _file_identity(path: Path) -> list:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def cache_key(pairs: Sequence[VolumePair], settings: dict, class_names: Sequence[str]) -> str:
    """Hash of everything the cache content depends on."""
    identity = {
        "version": CACHE_VERSION,
        "settings": settings,
        "class_names": list(class_names),
        "sources": [[p.subject, _file_identity(p.image), _file_identity(p.label)] for p in pairs],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """First 16 hex digits of a SHA-256 over the cache's arrays: what the slices *are*.

    Each of ``images``, ``masks``, ``subjects`` and ``positions`` (in that order) contributes
    its name, its shape and its C-order bytes in the fixed dtype of :data:`CACHE_DTYPES`, so the
    digest depends on the content alone (not on file paths, times or the ``.npy`` header) and
    two machines agree on it exactly when they built the same data.
    """
    digest = hashlib.sha256()
    for name, dtype in CACHE_DTYPES.items():
        array = np.ascontiguousarray(arrays[name], dtype=dtype)
        digest.update(f"{name}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


class SliceCache:
    """Read-only view of a built cache; arrays are memory-mapped, so workers share pages."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "meta.json").is_file():
            raise DataInputError(f"{self.path}: not a slice cache (meta.json missing)")
        self.meta = read_json_object(self.path / "meta.json", DataInputError)
        self.images = np.load(self.path / "images.npy", mmap_mode="r")  # (N, H, W)
        self.masks = np.load(self.path / "masks.npy", mmap_mode="r")  # (N, H, W)
        self.subjects = np.load(self.path / "subjects.npy")  # (N,)
        self.positions = np.load(self.path / "positions.npy")  # (N,)
        self.subject_names: list[str] = list(self.meta["subjects"])
        self.class_names: list[str] = list(self.meta["class_names"])

    @property
    def content_hash(self) -> str:
        """16 hex digits identifying the slices' content (see :func:`content_hash`)."""
        return str(self.meta["content_hash"])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def slice_indices(self, subject_names: Sequence[str]) -> np.ndarray:
        """Indices of all slices that belong to the given subjects."""
        wanted = [i for i, name in enumerate(self.subject_names) if name in set(subject_names)]
        return np.flatnonzero(np.isin(self.subjects, wanted))


def build_slice_cache(
    pairs: Sequence[VolumePair],
    preprocessor: VolumePreprocessor,
    class_names: Sequence[str],
    cache_dir: str | Path,
) -> Path:
    """Build the cache for ``pairs`` unless an identical one exists; return its folder."""
    if not pairs:
        raise DataInputError("no subjects to build a slice cache from")
    if len(class_names) != preprocessor.num_classes:
        raise ConfigError(f"{len(class_names)} class names for {preprocessor.num_classes} classes")
    cache_dir = Path(cache_dir)
    key = cache_key(pairs, preprocessor.settings, class_names)
    final = cache_dir / f"slices-{key}"
    if (final / "meta.json").is_file():
        logger.info("reusing slice cache %s", final)
        return final
    # another process (a DDP rank) may finish the same cache first: then its copy is kept
    with StagedFolder(final, complete=lambda folder: (folder / "meta.json").is_file()) as staging:
        _write_cache(staging, pairs, preprocessor, class_names, key)
    logger.info("wrote slice cache %s", final)
    return final


def _write_cache(folder: Path, pairs: Sequence[VolumePair], preprocessor: VolumePreprocessor,
                 class_names: Sequence[str], key: str) -> None:
    images, masks, subjects, positions, kept = [], [], [], [], []
    for index, pair in enumerate(pairs):
        subject_images, subject_masks, subject_positions = preprocessor(pair)
        images.append(subject_images)
        masks.append(subject_masks)
        positions.append(subject_positions)
        subjects.append(np.full(len(subject_positions), index, dtype=np.int32))
        kept.append(len(subject_positions))
        logger.debug("%s: kept %d slices", pair.subject, len(subject_positions))
    masks_all = np.concatenate(masks)  # (N, H, W)
    if masks_all.shape[0] == 0:
        raise DataInputError(f"no slice passes min_foreground={preprocessor.min_foreground} "
                             f"in {len(pairs)} subject(s); lower data.min_foreground")
    arrays = {"images": np.concatenate(images), "masks": masks_all, "subjects": np.concatenate(subjects),
              "positions": np.concatenate(positions)}
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array.astype(CACHE_DTYPES[name], copy=False))
    present = [(masks_all == c).any(axis=(1, 2)) for c in range(len(class_names))]
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "settings": preprocessor.settings,
        "class_names": list(class_names),
        "subjects": [p.subject for p in pairs],
        "fixed_splits": [p.split for p in pairs],
        "slices_per_subject": kept,
        "slices_with_class": {n: int(p.sum()) for n, p in zip(class_names, present, strict=True)},
        "num_slices": int(masks_all.shape[0]),
        "content_hash": content_hash(arrays),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


class SliceDataset:
    """Map-style dataset over chosen slices of a :class:`SliceCache`.

    Items are ``{"image": (1, H, W) float32, "mask": (H, W) int64, "subject": str,
    "position": int}``. ``transform`` (e.g. torchio augmentation) receives and returns the
    ``(image, mask)`` pair.
    """

    def __init__(self, cache: SliceCache, indices: np.ndarray, transform=None) -> None:
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict:
        index = int(self.indices[item])
        image = torch.from_numpy(np.array(self.cache.images[index]))[None]  # (1, H, W)
        mask = torch.from_numpy(np.array(self.cache.masks[index])).long()  # (H, W)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        subject = self.cache.subject_names[int(self.cache.subjects[index])]
        return {"image": image, "mask": mask, "subject": subject,
                "position": int(self.cache.positions[index])}
