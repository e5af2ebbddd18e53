"""LightningModules: thin wiring of networks, losses, metrics and logging."""

from anatldm.trainers.base import AnatomyTask

__all__ = ["AnatomyTask"]
