"""Data without Lightning: phantoms, real volumes, the slice cache, augmentation and orientation.

The Lightning data modules that serve it live in :mod:`anatldm.datamodules`.
"""

from anatldm.data.augmentation import SliceAugmentation
from anatldm.data.phantoms import (
    PHANTOM_CLASSES,
    PhantomSubject,
    generate_phantom,
    write_phantom_dataset,
)
from anatldm.data.slices import SliceCache, SliceDataset, build_slice_cache
from anatldm.data.volumes import VolumePair, VolumePreprocessor, find_volume_pairs, read_manifest

__all__ = [
    "PHANTOM_CLASSES",
    "PhantomSubject",
    "SliceAugmentation",
    "SliceCache",
    "SliceDataset",
    "VolumePair",
    "VolumePreprocessor",
    "build_slice_cache",
    "find_volume_pairs",
    "generate_phantom",
    "read_manifest",
    "write_phantom_dataset",
]

#: names that moved to the Lightning package :mod:`anatldm.datamodules`; an old YAML ``class_path``
#: (``anatldm.data.AnatomyDataModule``, ``anatldm.data.datamodule.AnatomyDataModule``) is told where
_MOVED = {"AnatomyDataModule": "anatldm.datamodules.AnatomyDataModule",
          "SampleSeeds": "anatldm.datamodules.SampleSeeds",
          "datamodule": "anatldm.datamodules.anatomy", "sampling": "anatldm.datamodules.seeds"}


def __getattr__(name: str):
    if name in _MOVED:
        raise AttributeError(f"anatldm.data.{name} moved to {_MOVED[name]} (or name the class by its short name, "
                             f"e.g. class_path: AnatomyDataModule)")
    raise AttributeError(f"module 'anatldm.data' has no attribute {name!r}")
