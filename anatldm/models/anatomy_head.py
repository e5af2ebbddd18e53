"""The anatomical segmentation head: decoder features of the denoiser -> label-map logits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.blocks import UpSample
from monai.networks.layers import Conv
from torch import nn

from anatldm.errors import ConfigError

__all__ = ["DEFAULT_HEAD_CHANNELS", "AnatomicalSegmentationHead", "HeadConfig"]

#: width of the anatomy head
DEFAULT_HEAD_CHANNELS = 64
#: narrowest width of the head's upsampling path (each x2 stage halves the width down to this)
MIN_UPSAMPLE_CHANNELS = 8


@dataclass
class HeadConfig:
    """The anatomy head of the denoiser (YAML ``model.init_args.denoiser.head``).

    The head exists exactly when its loss does: ``model.anatomy_loss.weight > 0`` builds it,
    ``weight: 0`` builds none (the baseline), so a head is never left untrained and there is
    no second switch to keep consistent.

    Args:
        levels: decoder levels (0 = latent resolution) whose features the head fuses (2-3 recommended).
        channels: width of the head's fusion block.
        output_stride: where the head draws its logits, as image pixels per logit pixel:
            ``None``, on the latent grid (the autoencoder's downsampling factor), then upsampled
            bilinearly: thin classes such as ribs cannot be drawn (for 64 x 64 slices the
            best possible 16 x 16 logits reach Dice 0.88 per slice, bone 0.75; docs/method.md);
            ``1``, at the image resolution, through learned x2 sub-pixel stages; ``2``, at half
            of it (one stage less; the best possible 32 x 32 logits reach 0.99), and so on. A
            power of 2 that divides the autoencoder's downsampling factor.
        clean_fraction: share of each training batch drawn at t = 0 (the clean latent) instead
            of a uniform timestep, so that the head's final call at t = 0, which labels every
            sample, is what was trained; 0 draws every timestep uniformly.
        image_features: at t = 0 (the final call that labels every sample, and the clean share
            of each training batch) the head's upsampling stages also read the frozen
            autoencoder decoder's activations of the same latent at their resolution
            (:func:`~anatldm.models.decoder_features.decoder_activations`): the mask is drawn
            from the pixels that are decoded, not from the latent grid alone. Calls at t > 0
            (sampling steps, anatomy-conditioned registers) read none. Needs ``output_stride``
            and a t = 0 term to train them (``clean_fraction > 0`` or ``refine_steps > 0``);
            costs one decoder pass for the clean share of a batch.
        refine_steps: after training, fit the head alone at t = 0 on clean training latents
            for this many steps, the rest of the denoiser frozen at its final (EMA) weights
            (:func:`~anatldm.diffusion.head_refinement.refine_head`): the call that labels every
            sample is fitted to the exported network; samples are unchanged (hence not with
            anatomy-conditioned registers, which read the head at every step). Written into the
            exported pipeline and the run's ``last.ckpt``; the head's calls at t > 0 change too
            (the real-slice Dice at t = 50 may fall). 0: none.
        refine_lr: the AdamW learning rate of that refinement.
    """

    #: where these settings sit in a config: errors name ``<key>.<field>``
    key = "model.denoiser.head"

    levels: tuple[int, ...] = (0, 1, 2)
    channels: int = DEFAULT_HEAD_CHANNELS
    output_stride: int | None = None
    clean_fraction: float = 0.0
    image_features: bool = False
    refine_steps: int = 0
    refine_lr: float = 1.0e-3

    def __post_init__(self) -> None:
        self.levels = tuple(int(level) for level in self.levels)
        if not self.levels:
            raise ConfigError(f"{self.key}.levels must name at least one level")
        if self.channels < 1:
            raise ConfigError(f"{self.key}.channels must be at least 1, got {self.channels}")
        if self.output_stride is not None and (self.output_stride < 1 or self.output_stride & (self.output_stride - 1)):
            raise ConfigError(f"{self.key}.output_stride must be a power of 2 (1: the image resolution) or null, "
                              f"got {self.output_stride}")
        if not 0 <= self.clean_fraction < 1:
            raise ConfigError(f"{self.key}.clean_fraction must lie in [0, 1), got {self.clean_fraction}")
        if self.refine_steps < 0 or not self.refine_lr > 0:
            raise ConfigError(f"{self.key}.refine_steps must be >= 0 and refine_lr > 0, got {self.refine_steps}, "
                              f"{self.refine_lr}")
        if self.image_features and (self.output_stride is None or (self.clean_fraction == 0 and not self.refine_steps)):
            raise ConfigError(f"{self.key}.image_features needs learned upsampling stages to read them "
                              f"(output_stride, got {self.output_stride}) and a t = 0 term to train them "
                              f"(clean_fraction > 0, got {self.clean_fraction}, or refine_steps > 0, got "
                              f"{self.refine_steps})")

    def upsample_stages(self, downsampling: int) -> int:
        """Learned x2 stages for an autoencoder that downsamples by ``downsampling``."""
        if self.output_stride is None:
            return 0
        if self.output_stride > downsampling:
            raise ConfigError(f"{self.key}.output_stride {self.output_stride} is coarser than the latent grid "
                              f"(the autoencoder downsamples by {downsampling})")
        return (int(downsampling) // self.output_stride).bit_length() - 1


def _conv_block(conv: type[nn.Module], channels: int, norm_num_groups: int) -> nn.Sequential:
    """GroupNorm -> SiLU -> 3x3 conv -> GroupNorm -> SiLU at constant width."""
    return nn.Sequential(
        nn.GroupNorm(norm_num_groups, channels),
        nn.SiLU(),
        conv(channels, channels, kernel_size=3, padding=1),
        nn.GroupNorm(norm_num_groups, channels),
        nn.SiLU(),
    )


class AnatomicalSegmentationHead(nn.Module):
    """Fuse decoder feature maps of several resolutions and predict class logits.

    Each level is projected to ``hidden_channels`` with a 1x1 convolution and resized to the
    finest level; the sum goes through a small conv block. With ``upsample_stages = n`` the
    fused map then passes ``n`` learned x2 stages (MONAI ``UpSample`` in ``pixelshuffle`` mode,
    ICNR-initialised, followed by a 3x3 conv block; each stage halves the width, down to
    ``MIN_UPSAMPLE_CHANNELS``, as a decoder does, so the full-resolution stages stay cheap),
    so the classifier draws the mask at
    ``2^n`` times the latent grid: the image resolution when ``2^n`` is the autoencoder's
    downsampling factor. With ``image_channels``, stage ``s`` also adds a 1 x 1 projection of
    an image feature map at its output resolution (the frozen autoencoder decoder's activation,
    a U-Net skip connection from the decoded image) between its upsampling and its conv block;
    a call without them adds nothing. Logits at any other size are interpolated to the requested mask size
    (with ``n = 0``, bilinear upsampling of latent-grid logits: thin structures such as ribs
    cannot be drawn at all, docs/method.md). Akin to the feature-pyramid fusion of Kirillov et
    al., "Panoptic Feature Pyramid Networks" (CVPR 2019), read from a diffusion UNet's decoder
    as in Baranchuk et al., "Label-Efficient Semantic Segmentation with Diffusion Models"
    (ICLR 2022); the sub-pixel upsampling is Shi et al., "Real-Time Single Image and Video
    Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network" (CVPR 2016).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each fused feature map, coarse or fine in any order.
        num_classes: classes including background.
        hidden_channels: width of the fusion block.
        norm_num_groups: groups of the GroupNorm layers.
        upsample_stages: learned x2 upsampling stages after the fusion (0: none).
        image_channels: channels of the image feature map each stage may read, one per stage
            (empty: the head reads none).
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], num_classes: int,
                 hidden_channels: int = 32, norm_num_groups: int = 8, upsample_stages: int = 0,
                 image_channels: Sequence[int] = ()) -> None:
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("in_channels must name at least one feature level")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background included), got {num_classes}")
        if hidden_channels % norm_num_groups:
            raise ValueError(f"hidden_channels ({hidden_channels}) must be divisible by "
                             f"norm_num_groups ({norm_num_groups})")
        if upsample_stages < 0:
            raise ValueError(f"upsample_stages must be >= 0, got {upsample_stages}")
        if image_channels and len(image_channels) != upsample_stages:
            raise ValueError(f"image_channels names {len(image_channels)} feature maps for {upsample_stages} "
                             "upsampling stages (one per stage)")
        conv = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims, self.num_classes = spatial_dims, num_classes
        self.projections = nn.ModuleList(conv(c, hidden_channels, kernel_size=1) for c in in_channels)
        self.fuse = _conv_block(conv, hidden_channels, norm_num_groups)
        widths = [max(hidden_channels >> stage, MIN_UPSAMPLE_CHANNELS) for stage in range(upsample_stages + 1)]
        self.upsample = nn.ModuleList(
            nn.Sequential(UpSample(spatial_dims, c_in, c_out, scale_factor=2, mode="pixelshuffle", apply_pad_pool=False),
                          _conv_block(conv, c_out, math.gcd(norm_num_groups, c_out)))
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True))
        self.image_projections = nn.ModuleList(conv(c_in, c_out, kernel_size=1, bias=False)
                                               for c_in, c_out in zip(image_channels, widths[1:len(image_channels) + 1],
                                                                          strict=True))
        self.classifier = conv(widths[-1], num_classes, kernel_size=1)

    @property
    def reads_image_features(self) -> bool:
        return len(self.image_projections) > 0

    def forward(self, features: Sequence[torch.Tensor], output_size: Sequence[int],
                image_features: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``features[i]: (B, C_i, *S_i)`` -> logits ``(B, num_classes, *output_size)``;
        ``image_features[s]: (B, image_channels[s], *2^(s+1) S_max)``, read by stage ``s`` (zeros
        for a sample add nothing: the projections have no bias)."""
        if len(features) != len(self.projections):
            raise ValueError(f"expected {len(self.projections)} feature maps, got {len(features)}")
        if image_features is not None and len(image_features) != len(self.image_projections):
            raise ValueError(f"expected {len(self.image_projections)} image feature maps, got {len(image_features)}")
        finest = max((f.shape[2:] for f in features), key=lambda s: s.numel())  # S_max
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        fused = 0
        for projection, feature in zip(self.projections, features, strict=True):
            projected = projection(feature)  # (B, hidden, *S_i)
            if projected.shape[2:] != finest:
                projected = F.interpolate(projected, size=finest, mode=mode, align_corners=False)
            fused = fused + projected  # (B, hidden, *S_max)
        hidden = self.fuse(fused)  # (B, hidden, *S_max)
        for index, (upsample, block) in enumerate(self.upsample):
            hidden = upsample(hidden)  # (B, c_s, *2S)
            if image_features is not None:
                hidden = hidden + self.image_projections[index](image_features[index])  # (B, c_s, *2S)
            hidden = block(hidden)  # (B, c_s, *2S)
        logits = self.classifier(hidden)  # (B, num_classes, *S_max * 2^n)
        if tuple(logits.shape[2:]) != tuple(output_size):
            logits = F.interpolate(logits, size=tuple(output_size), mode=mode, align_corners=False)
        return logits  # (B, num_classes, *output_size)
