"""Data: phantoms, real volumes, the slice cache and the data module."""

from anatldm.data.datamodule import AnatomyDataModule, SliceAugmentation
from anatldm.data.phantoms import (
    PHANTOM_CLASSES,
    PhantomSubject,
    generate_phantom,
    write_phantom_dataset,
)
from anatldm.data.sampling import SampleSeeds
from anatldm.data.slices import SliceCache, SliceDataset, build_slice_cache
from anatldm.data.volumes import VolumePair, VolumePreprocessor, find_volume_pairs, read_manifest

__all__ = [
    "PHANTOM_CLASSES",
    "AnatomyDataModule",
    "PhantomSubject",
    "SampleSeeds",
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
