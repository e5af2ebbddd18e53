"""Labelled 3D volumes on disk: discovery, validation and preprocessing into 2D slices.

A data set is either a folder with ``images/`` and ``labels/`` holding files of the same stem,
or a manifest (CSV with columns ``image,label[,split]``, or a JSON list of such objects) whose
paths are relative to the manifest. Any format torchio reads works: NIfTI, NRRD, MHA/MHD and
DICOM series (one folder per series). Every problem with a file is reported as a
:class:`~anatldm.errors.DataInputError` naming the file.
"""

from __future__ import annotations

import csv
import locale
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import torch
import torchio as tio
from torchio.data.io import read_image

from anatldm.data.orientation import ras_to_display
from anatldm.errors import ConfigError, DataInputError, read_json

__all__ = [
    "VOLUME_SUFFIXES",
    "IntensityPreset",
    "VolumePair",
    "VolumePreprocessor",
    "find_volume_pairs",
    "read_manifest",
    "volume_stem",
]

logger = logging.getLogger(__name__)

#: file name endings read as volumes (longest first so ``.nii.gz`` wins over ``.gz``)
VOLUME_SUFFIXES = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")
SPLITS = ("train", "val", "test")
#: grid of the normalised intensities in the slice cache (12 bits over [-1, 1]: 0.05 HU in a 400 HU window)
INTENSITY_STEP = 2.0**-12
IntensityPreset = Literal["ct", "mri", "none"]


@dataclass(frozen=True)
class VolumePair:
    """One subject: an image volume, its label map and an optional fixed split."""

    subject: str
    image: Path
    label: Path
    split: str | None = None


def volume_stem(path: Path) -> str | None:
    """Subject name of a volume file or DICOM series folder, ``None`` if it is neither."""
    if path.is_dir():
        return path.name
    for suffix in VOLUME_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _volumes_in(folder: Path) -> dict[str, Path]:
    volumes: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        stem = volume_stem(path)
        if stem is None:
            continue
        if stem in volumes:
            raise DataInputError(f"{folder}: two volumes share the stem '{stem}': "
                                 f"{volumes[stem].name} and {path.name}")
        volumes[stem] = path
    return volumes


def find_volume_pairs(root: str | Path) -> list[VolumePair]:
    """Pair ``root/images/<stem>.*`` with ``root/labels/<stem>.*``.

    Raises:
        DataInputError: if a folder is missing or empty, or an image or label has no partner.
    """
    root = Path(root)
    image_dir, label_dir = root / "images", root / "labels"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DataInputError(f"{folder}: folder not found (expected {root}/images and "
                                 f"{root}/labels with files of the same stem)")
    images, labels = _volumes_in(image_dir), _volumes_in(label_dir)
    if not images:
        raise DataInputError(f"{image_dir}: no volumes found (readable: "
                             f"{', '.join(VOLUME_SUFFIXES)} or DICOM series folders)")
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise DataInputError(f"{images[unlabelled[0]]}: image without label "
                             f"(no {label_dir}/{unlabelled[0]}.*; {len(unlabelled)} such image(s))")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DataInputError(f"{labels[orphans[0]]}: label without image "
                             f"(no {image_dir}/{orphans[0]}.*; {len(orphans)} such label(s))")
    return [VolumePair(stem, images[stem], labels[stem]) for stem in sorted(images)]


def read_manifest(path: str | Path) -> list[VolumePair]:
    """Read a CSV (``image,label[,split]`` header) or JSON list manifest.

    Relative paths are taken relative to the manifest's folder. The optional ``split`` column
    fixes each subject's split (``train``, ``val`` or ``test``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataInputError(f"{path}: manifest not found")
    if path.suffix.lower() == ".json":
        rows = read_json(path, DataInputError)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataInputError(f"{path}: a JSON manifest must be a list of objects")
    else:
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except (UnicodeDecodeError, csv.Error) as err:
            raise DataInputError(f"{path}: cannot parse manifest ({err})") from None
    if not rows:
        raise DataInputError(f"{path}: manifest lists no subjects")
    pairs, seen = [], set()
    for line, row in enumerate(rows, start=2):
        missing = {"image", "label"} - set(row)
        if missing:
            raise DataInputError(f"{path}: entry {line - 1} lacks column(s) {sorted(missing)}")
        image, label = ((path.parent / str(row[key])).resolve() for key in ("image", "label"))
        for file in (image, label):
            if not file.exists():
                raise DataInputError(f"{path}: entry {line - 1} names {file}, which does not exist")
        split = (row.get("split") or None) and str(row["split"]).strip().lower()
        if split is not None and split not in SPLITS:
            raise DataInputError(f"{path}: entry {line - 1} has split '{row['split']}'; "
                                 f"expected one of {SPLITS}")
        subject = volume_stem(image) or image.name
        if subject in seen:
            raise DataInputError(f"{path}: subject '{subject}' is listed twice")
        seen.add(subject)
        pairs.append(VolumePair(subject, image, label, split))
    return pairs


def strict_reader(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """torchio reader that refuses truncated NIfTI files.

    SimpleITK (torchio's first choice) silently zero-fills a truncated ``.nii.gz``; nibabel
    raises, so NIfTI goes through nibabel and every other format through torchio's reader.
    """
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        current = locale.setlocale(locale.LC_ALL)
        try:
            return read_image(path)
        finally:  # GDCM (DICOM series) switches the process to the C locale: restore it
            locale.setlocale(locale.LC_ALL, current)
    nifti = nib.load(str(path), mmap=False)
    data = np.asanyarray(nifti.dataobj)  # raises on a truncated file
    if data.ndim == 3:
        data = data[None]  # (1, X, Y, Z)
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0)  # (C, X, Y, Z)
    else:
        raise DataInputError(f"{path}: {data.ndim}D NIfTI; expected one 3D volume per file")
    dtype = np.int32 if np.issubdtype(data.dtype, np.integer) else np.float32  # nibabel refuses int64
    return torch.from_numpy(np.ascontiguousarray(data, dtype=dtype)), nifti.affine


def _read(image: tio.Image, path: Path) -> torch.Tensor:
    """Decode a torchio image, turning every reader failure into one clear error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return image.data
    except DataInputError:
        raise
    except Exception as err:  # readers raise many types: corrupt, truncated, unknown format
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataInputError(f"{path}: corrupt, truncated or unreadable volume ({reason})") from None


class VolumePreprocessor:
    """Validate one labelled volume and turn it into normalised 2D display slices.

    Steps: read with torchio; check one channel, matching grids, finite intensities and
    integer labels in range; reorient to RAS+ (``ToCanonical``); resample in-plane to
    ``spacing``; map intensities to ``[-1, 1]`` with the ``ct`` (HU window) or ``mri``
    (percentile) preset; cut slices along ``slice_axis``; centre crop/pad to ``image_size``;
    keep slices whose label foreground fraction is at least ``min_foreground``.

    Args:
        num_classes: number of classes including background; labels must lie in
            ``[0, num_classes)`` after ``label_map``.
        image_size: ``(H, W)`` of the output slices.
        preset: intensity normalisation, ``"ct"``, ``"mri"`` or ``"none"`` (already in [-1, 1]).
        ct_window: ``(width, level)`` of the HU window for the ``ct`` preset.
        mri_percentiles: lower and upper percentiles for the ``mri`` preset.
        spacing: in-plane target spacing in mm (rows, columns of the slice), or ``None``.
        slice_axis: RAS axis to slice along: 2 axial, 1 coronal, 0 sagittal.
        min_foreground: minimum fraction of labelled pixels for a slice to be kept.
        label_map: raw label value -> class index; values not listed are an error.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: tuple[int, int],
        preset: IntensityPreset = "ct",
        ct_window: tuple[float, float] = (400.0, 40.0),
        mri_percentiles: tuple[float, float] = (0.5, 99.5),
        spacing: tuple[float, float] | None = None,
        slice_axis: int = 2,
        min_foreground: float = 0.0,
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"need at least 2 classes (background + one), got {num_classes}")
        if preset not in ("ct", "mri", "none"):
            raise ConfigError(f"data.preset: unknown intensity preset '{preset}'; expected 'ct', 'mri' or 'none'")
        if len(image_size) != 2 or min(image_size) < 1:
            raise ConfigError(f"data.image_size must be two positive integers, got {image_size}")
        if slice_axis not in (0, 1, 2):
            raise ConfigError(f"data.slice_axis must be 0, 1 or 2, got {slice_axis}")
        if ct_window[0] <= 0:
            raise ConfigError(f"data.ct_window width must be positive, got {ct_window}")
        if not 0 <= mri_percentiles[0] < mri_percentiles[1] <= 100:
            raise ConfigError(f"data.mri_percentiles must satisfy 0 <= low < high <= 100, got {mri_percentiles}")
        if spacing is not None and min(spacing) <= 0:
            raise ConfigError(f"data.spacing must be positive, got {spacing}")
        if not 0.0 <= min_foreground < 1.0:
            raise ConfigError(f"data.min_foreground must lie in [0, 1), got {min_foreground}")
        if label_map is not None:
            bad = {k: v for k, v in label_map.items() if not 0 <= int(v) < num_classes}
            if bad:
                raise ConfigError(f"data.label_map sends {bad} outside [0, {num_classes})")
        self.num_classes = num_classes
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.preset = preset
        self.ct_window = (float(ct_window[0]), float(ct_window[1]))
        self.mri_percentiles = (float(mri_percentiles[0]), float(mri_percentiles[1]))
        self.spacing = None if spacing is None else (float(spacing[0]), float(spacing[1]))
        self.slice_axis = slice_axis
        self.min_foreground = float(min_foreground)
        self.label_map = None if label_map is None else {int(k): int(v) for k, v in label_map.items()}

    @property
    def settings(self) -> dict:
        """Every setting that changes the output: the slice cache is keyed by it."""
        return {
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "preset": self.preset,
            "ct_window": list(self.ct_window) if self.preset == "ct" else None,
            "mri_percentiles": list(self.mri_percentiles) if self.preset == "mri" else None,
            "spacing": None if self.spacing is None else list(self.spacing),
            "slice_axis": self.slice_axis,
            "min_foreground": self.min_foreground,
            "label_map": None if self.label_map is None else sorted(self.label_map.items()),
        }

    def __call__(self, pair: VolumePair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Preprocess one subject.

        Returns:
            ``images (N, H, W) float32`` in [-1, 1], ``masks (N, H, W) uint8`` and the
            ``positions (N,) int32`` of the kept slices along the slice axis.
        """
        subject = tio.ToCanonical(copy=False)(self._load(pair))  # the subject is ours: no copies
        subject = tio.Compose(self._resampling(subject) + self._intensity_transforms(), copy=False)(subject)
        image = ras_to_display(subject["image"].data[0].numpy(), self.slice_axis)  # (N, h, w)
        label = ras_to_display(subject["label"].data[0].numpy(), self.slice_axis)  # (N, h, w)
        image = _quantise(_center_crop_or_pad(image, self.image_size, fill=-1.0).astype(np.float32))
        label = _center_crop_or_pad(label, self.image_size, fill=0).astype(np.uint8)
        foreground = (label > 0).mean(axis=(1, 2))  # (N,) integer counts / n: the same on every CPU
        keep = np.flatnonzero(foreground >= self.min_foreground)
        return image[keep], label[keep], keep.astype(np.int32)

    def _load(self, pair: VolumePair) -> tio.Subject:
        image = tio.ScalarImage(pair.image, reader=strict_reader)
        label = tio.LabelMap(pair.label, reader=strict_reader)
        image_data, label_data = _read(image, pair.image), _read(label, pair.label)
        for path, data in ((pair.image, image_data), (pair.label, label_data)):
            if data.shape[0] != 1:
                raise DataInputError(f"{path}: 4D volume with {data.shape[0]} channels or time "
                                     f"points; expected one 3D volume per file")
        if image.spatial_shape != label.spatial_shape:
            raise DataInputError(f"{pair.label}: shape {tuple(label.spatial_shape)} does not match "
                                 f"its image {pair.image} of shape {tuple(image.spatial_shape)}")
        if not np.allclose(image.affine, label.affine, rtol=1e-3, atol=1e-2):
            raise DataInputError(
                f"{pair.label}: orientation/spacing/origin differ from its image {pair.image} "
                f"(label {''.join(label.orientation)} {np.round(label.spacing, 3).tolist()}, "
                f"image {''.join(image.orientation)} {np.round(image.spacing, 3).tolist()})")
        finite = torch.isfinite(image_data)
        if not bool(finite.all()):
            raise DataInputError(f"{pair.image}: {int((~finite).sum())} NaN or infinite voxel(s)")
        label.set_data(self._class_indices(label_data, pair.label).to(torch.int32))  # int64: nibabel refuses
        return tio.Subject(image=image, label=label)

    def _class_indices(self, data: torch.Tensor, path: Path) -> torch.Tensor:
        """Check that labels are integers in range and apply ``label_map``."""
        if data.is_floating_point():
            if not bool(torch.isfinite(data).all()) or not bool((data == data.round()).all()):
                raise DataInputError(f"{path}: label map has non-integer values; expected integer class labels")
        data = data.round().to(torch.int64)
        values = np.unique(data.numpy()).tolist()  # numpy: torch.unique is ~20x slower on CPU
        if self.label_map is not None:
            unknown = [v for v in values if v not in self.label_map]
            if unknown:
                raise DataInputError(f"{path}: label value(s) {unknown} not in label_map "
                                     f"(known: {sorted(self.label_map)})")
            lookup = torch.zeros(max(values) - min(values) + 1, dtype=torch.int64)
            for raw, index in self.label_map.items():
                if min(values) <= raw <= max(values):
                    lookup[raw - min(values)] = index
            return lookup[data - min(values)]
        bad = [v for v in values if not 0 <= v < self.num_classes]
        if bad:
            raise DataInputError(f"{path}: label value(s) {bad} out of range [0, {self.num_classes}) "
                                 f"for {self.num_classes} classes (use label_map to remap)")
        return data

    def _resampling(self, subject: tio.Subject) -> list[tio.Transform]:
        """In-plane resampling of a canonical subject to ``spacing`` (none if unset)."""
        if self.spacing is None:
            return []
        target = list(subject["image"].spacing)
        plane = [axis for axis in range(3) if axis != self.slice_axis]  # RAS axes of the plane
        # display rows follow the later RAS axis of the plane, columns the earlier one
        target[plane[1]], target[plane[0]] = self.spacing
        return [tio.Resample(tuple(target))]

    def _intensity_transforms(self) -> list[tio.Transform]:
        if self.preset == "ct":
            width, level = self.ct_window
            low, high = level - width / 2, level + width / 2
            return [tio.Clamp(low, high), tio.RescaleIntensity((-1, 1), in_min_max=(low, high))]
        if self.preset == "mri":
            return [tio.RescaleIntensity((-1, 1), percentiles=self.mri_percentiles), tio.Clamp(-1, 1)]
        return [tio.Clamp(-1, 1)]


def _quantise(image: np.ndarray) -> np.ndarray:
    """``image`` rounded to multiples of :data:`INTENSITY_STEP` (a power of two: exact).

    The normalisation's float32 arithmetic (a percentile, a resampling) may differ in the last
    bit across CPUs; on this grid such differences vanish, so the slice cache, and its content
    hash, are the same on every machine.
    """
    return np.round(image / INTENSITY_STEP) * np.float32(INTENSITY_STEP)


def _center_crop_or_pad(stack: np.ndarray, size: Sequence[int], fill: float) -> np.ndarray:
    """Centre-crop or pad the last two axes of ``stack`` (N, h, w) to ``size``."""
    out = np.full((stack.shape[0], *size), fill, dtype=stack.dtype)
    src, dst = [], []
    for have, want in zip(stack.shape[1:], size, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[:, dst[0], dst[1]] = stack[:, src[0], src[1]]
    return out
