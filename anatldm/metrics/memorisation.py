"""Memorisation: distance from each generated image to its nearest training slice."""

from __future__ import annotations

import torch
from torch import Tensor

from anatldm.metrics.base import SampleMetric, check_images

__all__ = ["Memorisation", "nearest_rmse"]


def nearest_rmse(queries: Tensor, references: Tensor, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Nearest reference of every query by pixel RMSE: ``(N, D)``, ``(M, D)`` -> ``(N,)``, ``(N,)``.

    Candidates come from ``torch.cdist`` (matrix-product form, fast) over chunks of both sets;
    the distance to the chosen neighbour is then recomputed directly, so a copied image gets
    exactly 0. Returns the RMSE ``||q - r|| / sqrt(D)`` and the index of the nearest reference.
    """
    if queries.ndim != 2 or references.ndim != 2 or queries.shape[1] != references.shape[1]:
        raise ValueError(f"need (N, D) queries and (M, D) references, got {tuple(queries.shape)} and "
                         f"{tuple(references.shape)}")
    best_distance = torch.full((queries.shape[0],), float("inf"), device=queries.device)
    best_index = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
    for start in range(0, queries.shape[0], chunk_size):
        query = queries[start:start + chunk_size]  # (n, D)
        for ref_start in range(0, references.shape[0], chunk_size):
            distance = torch.cdist(query, references[ref_start:ref_start + chunk_size])  # (n, m)
            value, index = distance.min(dim=1)
            better = value < best_distance[start:start + chunk_size]
            best_distance[start:start + chunk_size] = torch.where(better, value, best_distance[start:start + chunk_size])
            best_index[start:start + chunk_size] = torch.where(better, index + ref_start,
                                                               best_index[start:start + chunk_size])
    exact = (queries - references[best_index]).square().mean(dim=1).sqrt()  # (N,)
    return exact, best_index


class Memorisation(SampleMetric):
    """Distance of every generated image to its nearest training slice (lower = closer to copying).

    ``d_i = min_j sqrt(mean_pixels (g_i - t_j)^2)``, the RMSE in the images' [-1, 1] units between
    generated image ``g_i`` and training slice ``t_j``; ``compute()`` returns ``mean_i d_i``. A
    nearest-neighbour check of training-data copying as in Carlini et al., "Extracting Training
    Data from Diffusion Models" (USENIX Security 2023) and Somepalli et al., "Diffusion Art or
    Digital Forgery?" (CVPR 2023), here with a pixel distance. 0 means an exact copy.

    ``update(images, real)`` takes images ``(B, C, H, W)``: training slices with ``real=True``,
    generated samples with ``real=False``. Both sets are kept (``"cat"`` states ``real_images`` and
    ``fake_images``, flattened to ``(N, C * H * W)``) and compared at compute, in chunks.

    Args:
        chunk_size: rows per ``torch.cdist`` block.
        **kwargs: ``torchmetrics.Metric`` options.
    """

    is_differentiable = False
    higher_is_better = True

    def __init__(self, chunk_size: int = 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = chunk_size
        self.add_state("real_images", default=[], dist_reduce_fx="cat")
        self.add_state("fake_images", default=[], dist_reduce_fx="cat")

    def update(self, images: Tensor, real: bool) -> None:
        images = check_images(images)
        flat = images.detach().reshape(images.shape[0], -1).to(device=self.device, dtype=torch.float32)  # (B, D)
        (self.real_images if real else self.fake_images).append(flat)

    def nearest(self) -> tuple[Tensor, Tensor]:
        """Per generated sample: ``(M,)`` nearest-training RMSE and ``(M,)`` index of that slice."""
        real, fake = self.gathered("real_images"), self.gathered("fake_images")
        if real.ndim != 2 or fake.ndim != 2 or real.shape[0] == 0 or fake.shape[0] == 0:
            raise RuntimeError("Memorisation needs training images (real=True) and generated ones (real=False)")
        if real.shape[1] != fake.shape[1]:
            raise RuntimeError(f"training images have {real.shape[1]} values each, generated {fake.shape[1]}")
        return nearest_rmse(fake, real, self.chunk_size)

    def per_sample(self) -> Tensor:
        """``(M,)`` nearest-training RMSE of every generated sample (for the bootstrap)."""
        return self.nearest()[0]

    def compute(self) -> Tensor:
        return self.per_sample().mean()
