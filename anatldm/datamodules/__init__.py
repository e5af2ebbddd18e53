"""Lightning data modules: ``AnatomyDataModule`` (labelled slices) and ``SampleSeeds`` (``anatldm predict``).

The data they serve is built by the Lightning-free :mod:`anatldm.data`.
"""

from anatldm.datamodules.anatomy import AnatomyDataModule
from anatldm.datamodules.seeds import SampleSeeds

__all__ = ["AnatomyDataModule", "SampleSeeds"]
