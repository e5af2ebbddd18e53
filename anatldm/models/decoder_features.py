"""What the frozen autoencoder's decoder sees on its way up: its activations at every resolution
above the latent grid, for an anatomy head that reads the decoded image (no Lightning).

The anatomy head reads the denoiser's decoder features, which live on the latent grid and its
coarser levels; thin classes (ribs, lung bases) are then drawn from 16 x 16 information. At the
final call (t = 0) the latent is the image that is decoded, so the autoencoder's own decoder
activations at 2x, 4x, ... the latent grid describe exactly the pixels the mask must match
(``HeadConfig.image_features``). The autoencoder stays frozen: these are read, never trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["decoder_activations", "decoder_activation_channels"]


@torch.no_grad()
def decoder_activations(autoencoder: nn.Module, latents: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Decode unscaled ``latents (B, C_z, *s)`` with a MONAI ``AutoencoderKL``.

    Returns:
        The decoded image ``(B, C, *S)`` (as ``decode``, not clamped) and, coarsest first, the
        decoder's last activation at each resolution finer than the latent grid
        ``[(B, C_1, *2s), (B, C_2, *4s), ...]`` (at the image resolution: the input of the output
        convolution).
    """
    hidden = autoencoder.post_quant_conv(latents)  # (B, C_z, *s)
    blocks = list(autoencoder.decoder.blocks)
    finest: dict[tuple[int, ...], Tensor] = {}
    for block in blocks[:-1]:
        hidden = block(hidden)
        if hidden.shape[2:] != latents.shape[2:]:
            finest[tuple(hidden.shape[2:])] = hidden  # the last block at a size wins
    image = blocks[-1](hidden)  # (B, C, *S)
    return image, [finest[size] for size in sorted(finest, key=lambda s: torch.Size(s).numel())]


def decoder_activation_channels(autoencoder: nn.Module, latent_shape: Sequence[int]) -> list[int]:
    """Channels of :func:`decoder_activations` for latents of shape ``(C_z, *s)``, coarsest first
    (one decode of a zero latent)."""
    parameter = next(autoencoder.parameters())
    zeros = torch.zeros(1, *latent_shape, device=parameter.device, dtype=parameter.dtype)
    return [int(feature.shape[1]) for feature in decoder_activations(autoencoder, zeros)[1]]
