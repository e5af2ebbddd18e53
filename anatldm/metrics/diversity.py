"""Diversity of generated images: mean pairwise MS-SSIM (lower = more diverse)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from anatldm.metrics.base import SampleMetric, check_images

__all__ = ["MSSSIMSettings", "PairwiseMSSSIM", "msssim_settings"]

logger = logging.getLogger(__name__)

# Wang, Simoncelli and Bovik, "Multiscale structural similarity for image quality assessment",
# Asilomar 2003: exponents of the five scales, finest first.
_STANDARD_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_STANDARD_KERNEL = 11


@dataclass(frozen=True)
class MSSSIMSettings:
    """Arguments of torchmetrics' MS-SSIM that fit one image size."""

    betas: tuple[float, ...]
    kernel_size: int
    sigma: float


def _fits(side: int, scales: int, kernel: int) -> bool:
    """The constraints torchmetrics' MS-SSIM checks (and reflection padding needs) for a square side."""
    pad = (kernel - 1) // 2
    return (side >= 2 ** scales  # every scale keeps at least one pixel
            and side // max(1, scales - 1) ** 2 > kernel - 1  # torchmetrics' size check
            and pad < side // 2 ** (scales - 1))  # reflection padding at the coarsest scale


def msssim_settings(height: int, width: int) -> MSSSIMSettings:
    """MS-SSIM settings for images ``H x W`` that torchmetrics accepts without error.

    The standard setting (5 scales, 11x11 Gaussian window, sigma 1.5) needs sides of about 161
    pixels; small images get fewer scales and a smaller window: the most scales (at most 5) for
    which an odd window of at least 5 pixels (at least 3 for a single scale) still fits, using the
    largest window up to 11 that fits. With fewer than 5 scales the exponents are the first
    ``scales`` standard ones renormalised to sum to 1, and ``sigma = (window // 2 + 0.25) / 3.5`` so that torchmetrics'
    Gaussian window (``2 * int(3.5 * sigma + 0.5) + 1`` taps) equals ``window`` (1.5 for 11).
    Examples: 256 -> 5 scales, window 11; 64 -> 4 scales, window 7; 32 -> 3 scales, window 7;
    16 -> 2 scales, window 11.

    Raises:
        ValueError: for images smaller than 3 pixels on a side.
    """
    side = min(height, width)
    for scales in range(len(_STANDARD_BETAS), 0, -1):
        smallest = 5 if scales > 1 else 3
        for kernel in range(_STANDARD_KERNEL, smallest - 1, -2):
            if _fits(side, scales, kernel):
                total = sum(_STANDARD_BETAS[:scales])
                betas = (_STANDARD_BETAS if scales == len(_STANDARD_BETAS)
                         else tuple(beta / total for beta in _STANDARD_BETAS[:scales]))
                return MSSSIMSettings(betas=betas, kernel_size=kernel, sigma=(kernel // 2 + 0.25) / 3.5)
    raise ValueError(f"MS-SSIM needs images of at least 3x3 pixels, got {height}x{width}")


def _random_pairs(num_images: int, max_pairs: int, seed: int) -> Tensor:
    """``(P, 2)`` index pairs ``i < j``: all of them, or ``max_pairs`` drawn uniformly (seeded)."""
    total = num_images * (num_images - 1) // 2
    if total <= max_pairs:
        return torch.triu_indices(num_images, num_images, offset=1).T  # (P, 2)
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(num_images, (max_pairs,), generator=generator)
    second = torch.randint(num_images - 1, (max_pairs,), generator=generator)
    second = second + (second >= first).long()  # uniform over j != i
    return torch.stack([torch.minimum(first, second), torch.maximum(first, second)], dim=1)


class PairwiseMSSSIM(SampleMetric):
    """Diversity of generated images: mean MS-SSIM over pairs of distinct samples.

    ``diversity = mean_{(i, j) in P} MS-SSIM(x_i, x_j)`` with MS-SSIM of Wang et al. (Asilomar
    2003), ``data_range=2`` (images in [-1, 1]), as used for GAN diversity by Odena et al.,
    "Conditional Image Synthesis with Auxiliary Classifier GANs" (ICML 2017). 1 for identical
    images; lower means more diverse. ``P`` holds every pair if there are at most ``max_pairs``,
    else ``max_pairs`` pairs drawn with a seeded generator (the same pairs for the same images).
    Scales and window follow the image size (:func:`msssim_settings`).

    The generated images are kept (``"cat"`` state ``images`` ``(N, C, H, W)``, gathered from
    every rank at compute: ``N * C * H * W * 4`` bytes per rank), the pairs are drawn at compute.

    Args:
        max_pairs: most pairs evaluated.
        seed: seed of the pair draw.
        chunk_size: pairs per MS-SSIM call.
        **kwargs: ``torchmetrics.Metric`` options.
    """

    is_differentiable = False
    higher_is_better = False

    def __init__(self, max_pairs: int = 2000, seed: int = 0, chunk_size: int = 64, **kwargs) -> None:
        super().__init__(**kwargs)
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be positive, got {max_pairs}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.max_pairs, self.seed, self.chunk_size = max_pairs, seed, chunk_size
        self.add_state("images", default=[], dist_reduce_fx="cat")

    def update(self, images: Tensor) -> None:
        """Add generated images ``(B, C, H, W)`` in [-1, 1]."""
        images = check_images(images)
        msssim_settings(*images.shape[-2:])  # fail now, not at compute, on too small images
        self.images.append(images.detach().to(device=self.device, dtype=torch.float32))

    def pair_values(self) -> Tensor:
        """``(P,)`` MS-SSIM of every evaluated pair (the per-sample values of the bootstrap)."""
        images = self.gathered("images")  # (N, C, H, W)
        if images.ndim != 4 or images.shape[0] < 2:
            raise RuntimeError(f"PairwiseMSSSIM needs at least 2 images, got {images.shape[0]}")
        settings = msssim_settings(*images.shape[-2:])
        pairs = _random_pairs(images.shape[0], self.max_pairs, self.seed).to(images.device)  # (P, 2)
        values = []
        for chunk in pairs.split(self.chunk_size):
            values.append(multiscale_structural_similarity_index_measure(
                images[chunk[:, 0]], images[chunk[:, 1]], data_range=2.0, reduction="none",
                kernel_size=settings.kernel_size, sigma=settings.sigma, betas=settings.betas))  # (p,)
        return torch.cat(values)

    def compute(self) -> Tensor:
        return self.pair_values().mean()
