"""``SampleSeeds``: the "data" of ``anatldm predict`` — one seed per sample to generate."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from anatldm.errors import ConfigError

__all__ = ["SampleSeeds"]


class SampleSeeds(LightningDataModule):
    """Seeds ``seed, seed + 1, ..., seed + num_samples - 1``, one per generated sample.

    Sample ``i`` depends only on its seed, not on the batch size or the number of devices.

    Args:
        num_samples: number of (image, mask) pairs to generate.
        batch_size: samples generated together.
        seed: first seed.
    """

    def __init__(self, num_samples: int = 16, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        if num_samples < 1:
            raise ConfigError(f"data.num_samples must be at least 1, got {num_samples}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
        if seed < 0:
            raise ConfigError(f"data.seed must be >= 0, got {seed}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed

    def predict_dataloader(self) -> DataLoader:
        seeds = [{"seed": torch.tensor(self.seed + i)} for i in range(self.num_samples)]
        return DataLoader(seeds, batch_size=self.batch_size, shuffle=False)
