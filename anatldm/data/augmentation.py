"""Anatomy-preserving 2D augmentation of (image, mask) slice pairs (torchio)."""

from __future__ import annotations

import torch
import torchio as tio

__all__ = ["SliceAugmentation"]


class SliceAugmentation:
    """Anatomy-preserving 2D augmentation with torchio: small affine, elastic, noise.

    No left-right flip: it would put the liver on the wrong side. Images stay in [-1, 1].
    """

    def __init__(self, degrees: float = 8.0, scale: float = 0.08, translation: float = 3.0,
                 noise_std: float = 0.02, elastic_probability: float = 0.25) -> None:
        self.transform = tio.Compose([
            tio.RandomAffine(scales=(1 - scale, 1 + scale, 1 - scale, 1 + scale, 1, 1),
                             degrees=(0, 0, 0, 0, -degrees, degrees),
                             translation=(-translation, translation, -translation, translation, 0, 0),
                             default_pad_value="minimum"),
            tio.RandomElasticDeformation(num_control_points=7, max_displacement=(3, 3, 0),
                                         p=elastic_probability),
            tio.RandomNoise(std=(0, noise_std), p=0.5),
        ], copy=False)  # each call builds a fresh subject: no need for torchio's deep copy

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        subject = tio.Subject(image=tio.ScalarImage(tensor=image[..., None]),  # (1, H, W, 1)
                              mask=tio.LabelMap(tensor=mask[None, ..., None]))
        subject = self.transform(subject)
        image = subject["image"].data[..., 0].clamp_(-1, 1).float()  # (1, H, W)
        mask = subject["mask"].data[0, ..., 0].long()  # (H, W)
        return image, mask
