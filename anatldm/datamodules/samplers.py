"""Samplers of the data module: a resumable shuffle and an unpadded shard per DDP rank."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DistributedSampler, RandomSampler

__all__ = ["EpochShuffle", "ShardSampler"]


class EpochShuffle(RandomSampler):
    """A random order that depends only on ``(seed, epoch)``, so a resumed run sees the order
    the uninterrupted run saw. Lightning calls :meth:`set_epoch` before every epoch (under DDP
    it swaps in a ``DistributedSampler``, which is seeded the same way).

    Args:
        data_source: the dataset.
        seed: the run's seed (``seed_everything``).
    """

    def __init__(self, data_source, seed: int = 0) -> None:
        super().__init__(data_source, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        entropy = np.random.SeedSequence([self.seed, epoch]).generate_state(2, dtype=np.uint32)
        self.generator.manual_seed((int(entropy[0]) << 32) | int(entropy[1]))
class ShardSampler(DistributedSampler):
    """Rank ``r`` of ``W`` reads items ``r, r + W, r + 2W, ...``: each item once over all ranks.

    Lightning's default ``DistributedSampler`` pads the last shard with repeated items so every
    rank gets as many; in validation and test those repeats would count twice in every metric,
    so the numbers would depend on the number of processes. Being a ``DistributedSampler``,
    Lightning keeps it instead of replacing it.
    """

    def __init__(self, dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
