"""Losses of the autoencoder stage."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_lr_factor", "discriminator_loss", "generator_losses", "kl_divergence"]


def kl_divergence(z_mu: Tensor, z_sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over a latent, averaged over the batch (float32)."""
    z_mu, z_sigma = z_mu.float(), z_sigma.float()  # (B, C_z, *latent)
    per_element = z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1
    return 0.5 * per_element.flatten(1).sum(dim=1).mean()


def generator_losses(images: Tensor, reconstruction: Tensor, z_mu: Tensor, z_sigma: Tensor, *,
                     reconstruction_loss: str, kl_weight: float, perceptual_loss=None,
                     perceptual_weight: float = 0.0, anatomy_perceptual=None, anatomy_perceptual_weight: float = 0.0,
                     masks: Tensor | None = None, discriminator=None, adversarial_loss=None,
                     adv_weight: float = 0.0) -> dict[str, Tensor]:
    """The autoencoder's losses (in float32): ``reconstruction`` (L1 or L2), ``kl``, optionally
    ``perceptual``, ``anatomy_perceptual`` (an
    :class:`~anatldm.losses.anatomy_perceptual.AnatomyPerceptualLoss`, with the slices' ``masks``)
    and ``generator_adversarial`` (when ``discriminator`` is given), and their weighted sum ``loss``."""
    images, reconstruction = images.float(), reconstruction.float()  # losses in float32
    if reconstruction_loss == "l1":
        reconstruction_term = F.l1_loss(reconstruction, images)
    else:
        reconstruction_term = F.mse_loss(reconstruction, images)
    losses = {"reconstruction": reconstruction_term, "kl": kl_divergence(z_mu, z_sigma)}
    loss = reconstruction_term + kl_weight * losses["kl"]
    if perceptual_loss is not None:
        # the torchvision ResNet expects [0, 1]
        losses["perceptual"] = perceptual_loss((reconstruction + 1) / 2, (images + 1) / 2).float()
        loss = loss + perceptual_weight * losses["perceptual"]
    if anatomy_perceptual is not None:
        losses["anatomy_perceptual"] = anatomy_perceptual(reconstruction, images, masks)
        loss = loss + anatomy_perceptual_weight * losses["anatomy_perceptual"]
    if discriminator is not None:
        logits_fake = discriminator(reconstruction.contiguous())[-1].float()  # (B, 1, *patches)
        losses["generator_adversarial"] = adversarial_loss(logits_fake, target_is_real=True,
                                                           for_discriminator=False)
        loss = loss + adv_weight * losses["generator_adversarial"]
    losses["loss"] = loss
    return losses


def discriminator_loss(discriminator, adversarial_loss, images: Tensor, reconstruction: Tensor,
                       adv_weight: float) -> Tensor:
    """The PatchGAN discriminator's least-squares loss on real ``images`` and (detached)
    ``reconstruction`` s, weighted by ``adv_weight``."""
    logits_fake = discriminator(reconstruction.float().contiguous())[-1].float()  # (B, 1, *patches)
    logits_real = discriminator(images.float().contiguous())[-1].float()  # (B, 1, *patches)
    fake = adversarial_loss(logits_fake, target_is_real=False, for_discriminator=True)
    real = adversarial_loss(logits_real, target_is_real=True, for_discriminator=True)
    return adv_weight * 0.5 * (fake + real)


def cosine_lr_factor(step: int, total: int) -> float:
    """The cosine decay ``0.5 * (1 + cos(pi * min(step, total) / total))`` of a learning rate."""
    total = max(1, int(total))
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
