"""A domain perceptual loss for the autoencoder: reconstructions a segmenter reads as it reads the slice.

Every sample of an LDM is a decoded latent, and both its mask (the head reads the decoder) and its
anatomical plausibility (the judge reads the image) are bounded by what the decoder draws. On the
quickstart autoencoder, the judge segments reconstructions of real test slices at Dice 0.66
against their ground truth (lung 0.41), where it reaches 0.87 on the slices themselves
(docs/results.md, "Where self-consistency is lost"). An L1 loss does not see which pixels carry
anatomy; an ImageNet perceptual loss does not know this domain, and no pretrained weights can be
downloaded here.

:class:`AnatomyPerceptualLoss` is that missing term, built from the autoencoder's own training
data: a small MONAI ``UNet`` segmenter is trained on the real training slices and their masks for
the first ``warmup_steps`` batches (while the autoencoder learns on L1 + KL alone, as before its
adversarial warm-up), then frozen; from then on the autoencoder also minimises::

    target "segmenter":  mean_x KL( softmax(S(x)) || softmax(S(x_hat)) )
    target "mask":       DiceCE( S(x_hat), y )

with ``x`` the slice, ``x_hat`` its reconstruction, ``y`` its mask and ``S`` the frozen segmenter.
The segmenter never sees the evaluation judge's weights or the calibration subjects: it is
trained on the batches of this fit only, and it is not part of the exported autoencoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import Tensor, nn

from anatldm.errors import ConfigError
from anatldm.losses.anatomy import AnatomyLoss

__all__ = ["AnatomyPerceptualConfig", "AnatomyPerceptualLoss"]

Target = Literal["segmenter", "mask"]


@dataclass
class AnatomyPerceptualConfig:
    """The autoencoder's domain perceptual loss (YAML ``model.init_args.anatomy_perceptual``).

    Args:
        weight: weight of the term in the autoencoder's loss; 0 (the default) builds no segmenter.
        num_classes: classes of the data's masks, background included; must match the data.
        target: ``"segmenter"``: the frozen segmenter's soft prediction on the slice itself (a
            perceptual loss: the reconstruction must look like the slice to a segmenter);
            ``"mask"``: the slice's ground-truth mask (Dice + cross-entropy).
        warmup_steps: training batches that train the segmenter on real slices before it is
            frozen and the term switches on.
        channels: feature channels of the segmenter's levels (a MONAI ``UNet``, stride 2 per level).
        lr: Adam learning rate of the segmenter during its warm-up.
    """

    #: where these settings sit in a config: errors name ``<key>.<field>``
    key = "model.anatomy_perceptual"

    weight: float = 0.0
    num_classes: int = 0
    target: Target = "segmenter"
    warmup_steps: int = 500
    channels: tuple[int, ...] = (16, 32, 64)
    lr: float = 1.0e-3

    def __post_init__(self) -> None:
        key = self.key
        if not self.weight >= 0:
            raise ConfigError(f"{key}.weight must be >= 0, got {self.weight}")
        if self.target not in ("segmenter", "mask"):
            raise ConfigError(f"{key}.target must be 'segmenter' or 'mask', got '{self.target}'")
        if not self.enabled:
            return
        if self.num_classes < 2:
            raise ConfigError(f"{key}.num_classes must be at least 2 (background included) when {key}.weight > 0, "
                              f"got {self.num_classes}")
        if self.warmup_steps < 1:
            raise ConfigError(f"{key}.warmup_steps must be at least 1 (the segmenter trains before the term starts), "
                              f"got {self.warmup_steps}")
        if len(self.channels) < 2 or any(c < 1 for c in self.channels):
            raise ConfigError(f"{key}.channels needs at least two positive entries, got {list(self.channels)}")
        if not self.lr > 0:
            raise ConfigError(f"{key}.lr must be positive, got {self.lr}")

    @property
    def enabled(self) -> bool:
        return self.weight > 0


class AnatomyPerceptualLoss(nn.Module):
    """The frozen-after-warm-up segmenter ``S`` and the term it defines (module docstring).

    ``segmenter_loss(images, masks)`` is the warm-up's DiceCE of ``S`` on real slices;
    ``forward(reconstruction, images, masks)`` the autoencoder's term (float32), with gradients
    to ``reconstruction`` only (``S`` is not updated by it: its parameters belong to no
    optimiser of the autoencoder).

    Args:
        config: :class:`AnatomyPerceptualConfig` (``weight > 0``).
        spatial_dims: 2 for slices, 3 for volumes.
    """

    def __init__(self, config: AnatomyPerceptualConfig, spatial_dims: int = 2) -> None:
        super().__init__()
        self.config = config
        self.segmenter = UNet(spatial_dims=spatial_dims, in_channels=1, out_channels=config.num_classes,
                              channels=tuple(config.channels), strides=(2,) * (len(config.channels) - 1),
                              num_res_units=1, norm=("instance", {"affine": True}))
        self.dice_ce = AnatomyLoss()

    def segmenter_loss(self, images: Tensor, masks: Tensor) -> Tensor:
        """DiceCE of the segmenter on real ``images (B, 1, *S)`` against ``masks (B, *S)``."""
        return self.dice_ce(self.segmenter(images.float()), masks, None)

    def forward(self, reconstruction: Tensor, images: Tensor, masks: Tensor) -> Tensor:
        """The term for ``reconstruction (B, 1, *S)`` of ``images`` with ``masks (B, *S)``."""
        logits = self.segmenter(reconstruction.float())  # (B, C, *S)
        if self.config.target == "mask":
            return self.dice_ce(logits, masks, None)
        with torch.no_grad():
            target = torch.softmax(self.segmenter(images.float()), dim=1)
        return F.kl_div(torch.log_softmax(logits, dim=1), target, reduction="none").sum(dim=1).mean()
