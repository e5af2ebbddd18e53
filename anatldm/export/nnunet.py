"""nnU-Net v2 raw datasets and MONAI / Decathlon datalists of (image, label) slices (no Lightning).

Layout (``DatasetNNN_Name/``): ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``,
``dataset.json`` (nnU-Net v2: ``channel_names``, ``labels`` name -> int with background 0,
``numTraining``, ``file_ending``) and ``datalist.json`` (the Medical Segmentation Decathlon
layout ``{"training": [{"image", "label"}]}`` that ``monai.data.load_decathlon_datalist``
reads). Every case is a single-slice RAS+ volume (:mod:`anatldm.export.geometry`); image and
label share one affine, labels are unsigned integers.

:class:`NNUNetDatasetBuilder` writes into a hidden sibling folder and renames it into place at
the end, so a failed export leaves nothing half-written; :func:`check_dataset` verifies a
written dataset and raises one :class:`~anatldm.errors.DataInputError` naming the first bad file.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from anatldm.atomic import StagedFolder, write_text_atomic
from anatldm.errors import ConfigError, DataInputError, read_json_object
from anatldm.export.geometry import NiftiSliceWriter

__all__ = ["CHANNEL", "DATALIST", "DATASET_JSON", "FILE_ENDING", "NNUNetDatasetBuilder", "check_dataset",
           "check_dataset_id", "check_dataset_name", "dataset_folder_name", "label_dtype"]

logger = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
#: the single input channel's suffix: ``<case>_0000.nii.gz``
CHANNEL = "0000"
DATASET_JSON = "dataset.json"
DATALIST = "datalist.json"
#: what nnU-Net accepts in a dataset name: it builds folder names, paths and command-line arguments from it
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_CASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def check_dataset_id(dataset_id: int, key: str = "dataset_id") -> int:
    """nnU-Net dataset ids have three digits: 1-999 (``Dataset001`` .. ``Dataset999``)."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConfigError(f"{key}: nnU-Net dataset ids are integers 1-999, got {dataset_id!r}")
    return dataset_id


def check_dataset_name(name: str, key: str = "dataset_name") -> str:
    """ASCII letters, digits, ``_`` and ``-``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{key}: {name!r} is not a name nnU-Net accepts (ASCII letters, digits, '_' and '-', "
                          f"starting with a letter or digit; no spaces, dots or slashes)")
    return name


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{check_dataset_id(dataset_id):03d}_{check_dataset_name(name)}"


def label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.uint16


@dataclass
class _Case:
    case_id: str
    source: str  # "synthetic" or "real"
    info: dict = field(default_factory=dict)


class NNUNetDatasetBuilder:
    """Write an nnU-Net v2 raw dataset case by case, then put it in place in one rename.

    Args:
        output_dir: folder that receives ``Dataset<ID>_<name>/``.
        dataset_id: nnU-Net dataset id (1-999).
        dataset_name: the name after the id.
        class_names: label names, background first (label value = position).
        channel_name: nnU-Net channel name: ``"CT"`` selects nnU-Net's CT normalisation.
        slices: the writer of the cases' files (the training data's slice geometry).
        overwrite: replace an existing dataset of that folder name.
        key: the setting named in errors (e.g. ``DatasetWriter.output_dir``).
    """

    def __init__(self, output_dir: str | os.PathLike, dataset_id: int, dataset_name: str,
                 class_names: list[str], channel_name: str, slices: NiftiSliceWriter, overwrite: bool = False,
                 key: str = "output_dir") -> None:
        self.folder = Path(output_dir) / dataset_folder_name(dataset_id, dataset_name)
        self.dataset_id, self.dataset_name = dataset_id, dataset_name
        self.class_names = list(class_names)
        self.channel_name = channel_name
        self.slices = slices
        self.overwrite = overwrite
        self.key = key
        self._stage = StagedFolder(self.folder, replace=overwrite)
        self.cases: dict[str, _Case] = {}
        check_export_target(output_dir, dataset_id, dataset_name, overwrite, key)

    # -- writing ----------------------------------------------------------------------------
    @property
    def staging(self) -> Path:
        """The hidden folder the dataset is written into (renamed into place by :meth:`finish`)."""
        return self._stage.staging

    def start(self) -> None:
        """Create the (empty) staging folder; old ones of killed runs are removed."""
        check_export_target(self.folder.parent, self.dataset_id, self.dataset_name, self.overwrite, self.key)
        self._stage = StagedFolder(self.folder, replace=self.overwrite)
        self._stage.remove_stale()
        (self._stage.open() / "imagesTr").mkdir()
        (self.staging / "labelsTr").mkdir()
        self.cases = {}

    def add_case(self, case_id: str, image: np.ndarray, label: np.ndarray, source: str = "synthetic",
                 **info) -> None:
        """One case: ``image`` and ``label`` are display slices ``(H, W)`` of one shape."""
        if not _CASE.match(case_id) or case_id in self.cases:
            raise ValueError(f"case id {case_id!r} is not a new identifier of letters, digits, '_' and '-'")
        if image.shape != label.shape:
            raise ValueError(f"case {case_id}: image {image.shape} and label {label.shape} differ")
        if label.min() < 0 or label.max() >= len(self.class_names):
            raise ValueError(f"case {case_id}: label values {label.min()}..{label.max()} outside "
                             f"0..{len(self.class_names) - 1}")
        self.slices.write(np.asarray(image, dtype=np.float32), self.image_path(case_id, self.staging))
        self.slices.write(np.asarray(label).astype(label_dtype(len(self.class_names))),
                          self.label_path(case_id, self.staging))
        self.cases[case_id] = _Case(case_id, source, info)

    def remove_case(self, case_id: str) -> None:
        self.image_path(case_id, self.staging).unlink()
        self.label_path(case_id, self.staging).unlink()
        del self.cases[case_id]

    @staticmethod
    def image_path(case_id: str, root: Path) -> Path:
        return root / "imagesTr" / f"{case_id}_{CHANNEL}{FILE_ENDING}"

    @staticmethod
    def label_path(case_id: str, root: Path) -> Path:
        return root / "labelsTr" / f"{case_id}{FILE_ENDING}"

    def dataset_json(self, description: str = "", extra: dict | None = None) -> dict:
        sources = [case.source for case in self.cases.values()]
        return {
            "name": self.dataset_name,
            "description": description,
            "channel_names": {"0": self.channel_name},
            "labels": {name: index for index, name in enumerate(self.class_names)},
            "numTraining": len(self.cases),
            "file_ending": FILE_ENDING,
            "numSynthetic": sources.count("synthetic"),
            "numReal": sources.count("real"),
            **(extra or {}),
        }

    def datalist(self, description: str = "") -> dict:
        """The Decathlon datalist: paths relative to the dataset folder, each entry's source kept."""
        return {
            "name": self.dataset_name,
            "description": description,
            "modality": {"0": self.channel_name},
            "labels": {str(index): name for index, name in enumerate(self.class_names)},
            "numTraining": len(self.cases),
            "training": [{"image": f"imagesTr/{case.case_id}_{CHANNEL}{FILE_ENDING}",
                          "label": f"labelsTr/{case.case_id}{FILE_ENDING}", "case": case.case_id,
                          "source": case.source, **case.info} for case in self.cases.values()],
            "test": [],
        }

    def write_file(self, name: str, text: str) -> Path:
        return write_text_atomic(self.staging / name, text)

    def finish(self, description: str = "", extra: dict | None = None) -> Path:
        """Write ``dataset.json`` and ``datalist.json``, check the dataset, rename it into place."""
        self.write_file(DATASET_JSON, json.dumps(self.dataset_json(description, extra), indent=2))
        self.write_file(DATALIST, json.dumps(self.datalist(description), indent=2))
        check_dataset(self.staging)
        self._stage.commit()  # an existing dataset only with overwrite (checked at construction)
        logger.info("wrote %s (%d cases)", self.folder, len(self.cases))
        return self.folder

    def abort(self) -> None:
        """Remove the staging folder (a failed or interrupted export)."""
        self._stage.abort()


def check_export_target(output_dir: str | os.PathLike, dataset_id: int, dataset_name: str,
                        overwrite: bool, key: str) -> None:
    """Refuse a non-empty target folder (unless ``overwrite``) and another dataset with the same id.

    nnU-Net finds a dataset by its id alone, so two folders ``Dataset501_*`` are ambiguous.
    """
    name = dataset_folder_name(dataset_id, dataset_name)
    root = Path(output_dir)
    target = root / name
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{key}: {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ConfigError(f"{key}: {target} exists and is not empty; set overwrite: true to replace it")
    if root.is_dir():
        clashes = sorted(p.name for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.name != name)
        if clashes:
            raise ConfigError(f"{key}: {root} already holds {clashes[0]} with dataset id {dataset_id} "
                              f"(nnU-Net finds datasets by id); choose another dataset_id")


# -- the integrity check --------------------------------------------------------------------
def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DataInputError(f"{path}: missing")
    return read_json_object(path, DataInputError, name_type=False)


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    try:
        image = nib.load(path)
        return np.asarray(image.dataobj), image.affine, image.get_data_dtype()
    except Exception as err:  # nibabel raises many kinds for a damaged file
        raise DataInputError(f"{path}: not a readable NIfTI file ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def check_dataset(folder: str | os.PathLike) -> dict:
    """Verify an nnU-Net v2 raw dataset written by :class:`NNUNetDatasetBuilder` (or by hand).

    Checks ``dataset.json`` (required keys, labels ``0..C-1`` with background 0, one channel,
    ``numTraining``), that every case has its image and its label and nothing else lies in
    ``imagesTr`` / ``labelsTr``, that image and label share shape and affine, that labels are
    unsigned integers inside the label range and images finite, and that ``datalist.json`` (if
    present) names exactly these files. Returns a summary; raises :class:`DataInputError`
    naming the first offending file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataInputError(f"{folder}: not a folder")
    meta_path = folder / DATASET_JSON
    meta = _load_json(meta_path)
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in meta:
            raise DataInputError(f"{meta_path}: the key '{key}' is missing")
    ending = meta["file_ending"]
    if ending != FILE_ENDING:
        raise DataInputError(f"{meta_path}: file_ending {ending!r}; this check reads {FILE_ENDING!r}")
    channels = meta["channel_names"]
    if not isinstance(channels, dict) or sorted(channels) != [str(i) for i in range(len(channels))] or not channels:
        raise DataInputError(f"{meta_path}: channel_names must map '0', '1', ... to names, got {channels!r}")
    labels = meta["labels"]
    values = sorted(labels.values()) if isinstance(labels, dict) else None
    if not values or any(not isinstance(v, int) or isinstance(v, bool) for v in values) \
            or values != list(range(len(values))) or labels.get("background") != 0 or len(values) < 2:
        raise DataInputError(f"{meta_path}: labels must map names to 0..C-1 with background 0, got {labels!r}")
    num_classes = len(values)
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    for sub in (images_dir, labels_dir):
        if not sub.is_dir():
            raise DataInputError(f"{sub}: missing")
    suffixes = [f"_{c:04d}{ending}" for c in range(len(channels))]
    image_files = sorted(p.name for p in images_dir.iterdir() if not p.name.startswith("."))
    label_files = sorted(p.name for p in labels_dir.iterdir() if not p.name.startswith("."))
    cases = sorted(name[: -len(ending)] for name in label_files if name.endswith(ending))
    for name in label_files:
        if not name.endswith(ending):
            raise DataInputError(f"{labels_dir / name}: not a {ending} file")
    for name in image_files:
        stem = next((name[: -len(s)] for s in suffixes if name.endswith(s)), None)
        if stem is None:
            raise DataInputError(f"{images_dir / name}: not named <case>_<channel:04d>{ending}")
        if stem not in cases:
            raise DataInputError(f"{labels_dir / (stem + ending)}: missing (its image {images_dir / name} exists)")
    for case in cases:
        for suffix in suffixes:
            if case + suffix not in image_files:
                raise DataInputError(f"{images_dir / (case + suffix)}: missing (its label "
                                     f"{labels_dir / (case + ending)} exists)")
    if meta["numTraining"] != len(cases):
        raise DataInputError(f"{meta_path}: numTraining is {meta['numTraining']} but labelsTr holds {len(cases)} cases")
    for case in cases:
        label_path = labels_dir / (case + ending)
        label, label_affine, dtype = _load_nifti(label_path)
        if not np.issubdtype(dtype, np.unsignedinteger):
            raise DataInputError(f"{label_path}: label values stored as {dtype}, not an unsigned integer type")
        if label.size and (label.max() >= num_classes):
            raise DataInputError(f"{label_path}: label value {int(label.max())} outside the labels of "
                                 f"{DATASET_JSON} (0..{num_classes - 1})")
        for suffix in suffixes:
            image_path = images_dir / (case + suffix)
            image, image_affine, _ = _load_nifti(image_path)
            if image.shape != label.shape:
                raise DataInputError(f"{label_path}: shape {label.shape} differs from its image "
                                     f"{image_path.name} {image.shape}")
            if not np.allclose(image_affine, label_affine, atol=1e-4):
                raise DataInputError(f"{label_path}: geometry (spacing, origin or direction) differs from its "
                                     f"image {image_path.name}")
            if not np.isfinite(image).all():
                raise DataInputError(f"{image_path}: holds NaN or infinite values")
    datalist_path = folder / DATALIST
    if datalist_path.exists():
        datalist = _load_json(datalist_path)
        entries = datalist.get("training")
        if not isinstance(entries, list):
            raise DataInputError(f"{datalist_path}: no 'training' list")
        named = sorted((entry.get("image"), entry.get("label")) for entry in entries)
        expected = sorted((f"imagesTr/{case}{suffixes[0]}", f"labelsTr/{case}{ending}") for case in cases)
        if named != expected:
            missing = sorted(set(expected) - set(named)) or sorted(set(named) - set(expected))
            raise DataInputError(f"{datalist_path}: its training entries differ from the files on disk "
                                 f"(e.g. {missing[0]})")
    return {"folder": str(folder), "cases": len(cases), "num_classes": num_classes,
            "channel_names": channels}
