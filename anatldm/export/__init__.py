"""Synthetic data people can use: nnU-Net v2 / MONAI data sets with a data card, a memorisation audit and a quality filter.

- :mod:`anatldm.export.nnunet`: the nnU-Net v2 raw layout, ``dataset.json``, the MONAI /
  Decathlon datalist, and :func:`check_dataset` (the integrity check).
- :mod:`anatldm.export.geometry`: single-slice RAS+ volumes, intensities in HU or the training scale,
  and :class:`~anatldm.export.geometry.NiftiSliceWriter`, the one writer of `SampleWriter` and `DatasetWriter`.
- :mod:`anatldm.export.memorisation`: nearest-training distances against a held-out reference.
- :mod:`anatldm.export.datacard`: ``datacard.json`` and ``DATACARD.md``.
- :mod:`anatldm.export.filter`: the quality filter (head mask vs a segmenter of the user's own
  training split, anatomy rules fitted on that split; never the evaluation judge).
- :class:`DatasetWriter` (:mod:`anatldm.export.callback`, the only module here that imports
  Lightning): the ``anatldm predict`` callback that ties them together.
"""

from anatldm.export.nnunet import NNUNetDatasetBuilder, check_dataset

__all__ = ["DatasetWriter", "NNUNetDatasetBuilder", "check_dataset"]


def __getattr__(name: str):
    if name == "DatasetWriter":  # the Lightning callback: imported on first use only
        from anatldm.export.callback import DatasetWriter

        return DatasetWriter
    raise AttributeError(f"module 'anatldm.export' has no attribute {name!r}")
