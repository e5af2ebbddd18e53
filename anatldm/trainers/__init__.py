"""LightningModules: thin wiring of networks, losses, metrics and logging."""

from anatldm.trainers.autoencoder import AutoencoderTask
from anatldm.trainers.base import AnatomyTask
from anatldm.trainers.evaluation import EvaluationTask
from anatldm.trainers.ldm import AnatomicalLDMTask
from anatldm.trainers.segmenter import SegmenterTask

__all__ = ["AnatomicalLDMTask", "AnatomyTask", "AutoencoderTask", "EvaluationTask", "SegmenterTask"]
