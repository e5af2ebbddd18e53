"""Refine the anatomy head for the call that labels every sample (no Lightning).

Every sample's mask comes from one head call at t = 0 on its final latent (with
``HeadConfig.image_features``, reading the autoencoder decoder's activations of that latent). In
the joint training that call is a small share of the head's inputs, its decoder-feature path is
trained on the clean share of each batch only, and the UNet features it reads move until the end.
After training, with the denoiser's final (EMA) weights frozen, ``refine_head`` fits the head
alone on clean training latents at t = 0: the mask is fitted to the network that is exported.
Only head parameters change; the noise prediction, and so every sample, is unchanged.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

__all__ = ["refine_head"]

logger = logging.getLogger(__name__)


def refine_head(denoiser: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], loss: nn.Module, steps: int,
                lr: float, image_features: Callable[[Tensor], list[Tensor]] | None = None) -> list[float]:
    """Fit ``denoiser.head`` alone at t = 0; return the loss of every step.

    Args:
        denoiser: an :class:`~anatldm.models.denoiser.AnatomicalDenoiser` with a head; its other
            parameters are frozen during the refinement and restored to their ``requires_grad``.
        batches: ``(latents (B, C_z, *s), masks (B, *S))`` pairs of clean, scaled training
            latents, at least ``steps`` of them (e.g. a generator over repeated epochs).
        loss: the anatomy loss ``loss(logits, masks, None)``.
        steps: AdamW steps on the head's parameters.
        lr: their learning rate.
        image_features: the decoder activations of a latent, for a head that reads them.
    """
    if denoiser.head is None:
        raise ValueError("refine_head needs a denoiser with an anatomy head")
    if steps < 1:
        return []
    head_params = set(denoiser.head.parameters())
    frozen = {p: p.requires_grad for p in denoiser.parameters() if p not in head_params}
    was_training = denoiser.training
    optimizer = torch.optim.AdamW(denoiser.head.parameters(), lr=lr)
    losses: list[float] = []
    try:
        for p in frozen:  # no graph through the UNet: only the head is fitted
            p.requires_grad_(False)
        denoiser.eval()
        denoiser.head.train()
        for latents, masks in itertools.islice(batches, steps):
            clean = torch.zeros(latents.shape[0], dtype=torch.long, device=latents.device)  # t = 0
            features = image_features(latents) if image_features is not None else None
            logits = denoiser(latents, clean, mask_size=masks.shape[1:], image_features=features).anatomy_logits
            value = loss(logits, masks, None)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            losses.append(float(value.detach()))
    finally:
        for p, requires_grad in frozen.items():
            p.requires_grad_(requires_grad)
        denoiser.train(was_training)
    if len(losses) < steps:
        raise ValueError(f"refine_head: batches gave {len(losses)} of the {steps} steps")
    logger.info("refined the anatomy head at t = 0: %d steps, loss %.4f -> %.4f (mean of the first and last 10)",
                steps, sum(losses[:10]) / len(losses[:10]), sum(losses[-10:]) / len(losses[-10:]))
    return losses
