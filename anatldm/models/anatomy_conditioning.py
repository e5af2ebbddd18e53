"""Anatomy-conditioned registers: token offsets from the head's previous prediction.

In ``read`` mode every sample reads the same bank, so the register cross-attention is a fixed
function of each feature vector (docs/method.md). Here the tokens respond to the sample: at
each step the bank is shifted by a function of the anatomy the head predicted at the previous
step (a soft label map, no ground truth at inference), in the self-conditioning scheme of
Chen et al., "Analog Bits: Generating Discrete Data using Diffusion Models with
Self-Conditioning" (ICLR 2023): in training, about half of the batches first run a no-grad pass
whose head prediction is the condition, the others get zeros; the first sampling step gets zeros.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AnatomyTokenConditioner", "soft_mask_statistics"]

#: statistics per foreground class: area fraction, centroid (2D: y, x) and spread (std y, std x)
STATISTICS_PER_AXIS = 2


def soft_mask_statistics(probabilities: torch.Tensor) -> torch.Tensor:
    """Per-class moments of a soft label map ``(B, C, *S)`` (softmax over ``C``).

    For every foreground class ``c``: the area fraction ``a_c = mean(p_c)``, and per spatial
    axis the centroid and the standard deviation of the coordinate (in [-1, 1]) under the
    weights ``p_c``. Zeros (the first sampling step, the unconditioned training batches) give
    zeros. Returns ``(B, (C - 1) * (1 + 2 * dims))``.
    """
    batch, classes, *spatial = probabilities.shape
    p = probabilities[:, 1:].flatten(2)  # (B, C-1, N)
    mass = p.sum(-1)  # (B, C-1)
    area = mass / p.shape[-1]  # (B, C-1)
    grids = torch.meshgrid(*(torch.linspace(-1, 1, s, device=p.device, dtype=p.dtype) for s in spatial),
                           indexing="ij")
    weights = p / mass.clamp(min=1e-6).unsqueeze(-1)  # (B, C-1, N), sums to 1 where the class has mass
    stats = [area]
    for grid in grids:
        coordinate = grid.reshape(1, 1, -1)  # (1, 1, N)
        mean = (weights * coordinate).sum(-1)  # (B, C-1)
        variance = (weights * (coordinate - mean.unsqueeze(-1)) ** 2).sum(-1)
        stats += [mean, variance.clamp(min=0).sqrt()]
    return torch.stack(stats, dim=-1).reshape(batch, -1)  # (B, (C-1) * (1 + 2 dims))


class AnatomyTokenConditioner(nn.Module):
    """Token offsets ``(B, K, D)`` from the head's soft prediction of the previous step.

    ``tokens_b = bank + MLP(soft_mask_statistics(p_b)).view(K, D)``; the last layer starts at
    zero, so a new model starts as the plain bank.

    Args:
        num_classes: classes of the head, background included.
        num_registers: tokens ``K``.
        register_dim: token width ``D``.
        spatial_dims: 2 or 3.
        hidden: width of the MLP.
    """

    def __init__(self, num_classes: int, num_registers: int, register_dim: int, spatial_dims: int = 2,
                 hidden: int = 128) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"anatomy-conditioned registers need a head with >= 2 classes, got {num_classes}")
        features = (num_classes - 1) * (1 + STATISTICS_PER_AXIS * spatial_dims)
        self.shape = (num_registers, register_dim)
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, num_registers * register_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, bank: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """``bank (K, D)``, the previous soft prediction ``(B, C, *S)`` -> tokens ``(B, K, D)``."""
        offsets = self.mlp(soft_mask_statistics(probabilities))  # (B, K * D)
        return bank.unsqueeze(0) + offsets.view(-1, *self.shape).to(bank.dtype)  # (B, K, D)
