"""Losses of the autoencoder stage."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kl_divergence"]


def kl_divergence(z_mu: Tensor, z_sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over a latent, averaged over the batch (float32)."""
    z_mu, z_sigma = z_mu.float(), z_sigma.float()  # (B, C_z, *latent)
    per_element = z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1
    return 0.5 * per_element.flatten(1).sum(dim=1).mean()
