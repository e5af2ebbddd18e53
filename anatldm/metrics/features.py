"""FID and KID on the features of a domain encoder (or of InceptionV3 from a local weights file).

torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` accept any
``nn.Module`` as ``feature``. For such a custom module torchmetrics (1.x):

- passes the images given to ``update`` to the module untouched (its uint8 conversion for
  ``normalize=True`` applies to its own InceptionV3 only), so our modules take the package's
  slices ``(N, 1, H, W)`` float in [-1, 1] directly;
- reads the feature width from a ``num_features`` attribute (FID); without it FID would run a
  dummy forward on ``torch.rand(1, *input_img_size)`` (float because we pass ``normalize=True``);
- expects ``(N, num_features)`` features: FID casts them to float64, KID keeps them as they are.

The default feature extractor is the downstream segmenter's encoder, globally average-pooled
(docs/method.md, 'Metric definitions'). InceptionV3 (Szegedy et al., CVPR 2016) FID as in Heusel et al., NeurIPS 2017
needs the ``torch-fidelity`` package and a local weights file, since nothing is downloaded here.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

from anatldm.metrics.base import gather_state
from anatldm.metrics.segmentation import frechet_distance, gaussian_statistics

__all__ = [
    "InceptionFeatures",
    "PooledEncoderFeatures",
    "RealismMetrics",
    "SeededKernelInceptionDistance",
    "frechet_feature_distance",
    "kernel_feature_distance",
    "make_fid_kid",
]

logger = logging.getLogger(__name__)


class _FrozenFeatures(nn.Module):
    """A frozen feature extractor that never leaves evaluation mode (like torchmetrics' Inception)."""

    def train(self, mode: bool = True) -> _FrozenFeatures:
        return super().train(False)


class PooledEncoderFeatures(_FrozenFeatures):
    """Global-average-pooled features of an encoder, the feature extractor of FID and KID.

    Runs ``encoder(images)`` on slices ``(N, 1, H, W)`` in [-1, 1] and averages a feature map
    ``(N, F, h, w)`` over its spatial dimensions to ``(N, F)`` float32. The map is the encoder's
    output (the last one if it returns a list or tuple) or, when ``layer`` is given, the output of
    that submodule captured by a forward hook: e.g. the bottleneck of the segmenter's MONAI UNet,
    ``PooledEncoderFeatures(unet, 256, layer=bottleneck_module(unet))``. The encoder is frozen
    (no gradients, always in eval mode).

    Args:
        encoder: the network to run.
        num_features: channels ``F`` of the pooled map (checked at every forward).
        layer: optional submodule of ``encoder`` whose output is pooled instead.
    """

    def __init__(self, encoder: nn.Module, num_features: int, layer: nn.Module | None = None) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if layer is not None and not any(module is layer for module in encoder.modules()):
            raise ValueError("layer must be a submodule of encoder")
        self.encoder = encoder.requires_grad_(False)
        self.num_features = int(num_features)
        self.layer = layer
        self.eval()

    def _feature_map(self, images: Tensor) -> Tensor:
        if self.layer is None:
            output = self.encoder(images)
            return output[-1] if isinstance(output, (list, tuple)) else output
        captured: list[Tensor] = []
        handle = self.layer.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            self.encoder(images)
        finally:
            handle.remove()
        return captured[-1]

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or not images.dtype.is_floating_point:
            raise ValueError(f"images must be float (N, C, H, W) in [-1, 1], got {images.dtype} "
                             f"{tuple(images.shape)}")
        parameter = next(self.encoder.parameters(), None)
        if parameter is not None:  # e.g. bf16 samples into a float32 encoder
            images = images.to(parameter.dtype)
        features = self._feature_map(images)  # (N, F, h, w) or (N, F)
        if features.ndim > 2:
            features = features.flatten(2).mean(dim=2)  # (N, F)
        if features.shape[1] != self.num_features:
            raise ValueError(f"the encoder gives {features.shape[1]} features, num_features is {self.num_features}")
        return features.float()


class InceptionFeatures(_FrozenFeatures):
    """InceptionV3 pool features of slices: ``(N, 1, H, W)`` in [-1, 1] -> ``(N, 2048)``.

    Converts the slices to what torchmetrics' ``NoTrainInceptionV3`` expects: 3 channels, uint8 in
    [0, 255] (``round((x + 1) * 127.5)``); the network resizes to 299x299 itself.

    Args:
        inception: a torchmetrics ``NoTrainInceptionV3`` (or a module with the same contract).
        num_features: width of its output.
    """

    def __init__(self, inception: nn.Module, num_features: int = 2048) -> None:
        super().__init__()
        self.inception = inception
        self.num_features = num_features
        self.eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        rgb = images.float().expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.float()  # (N, 3, H, W)
        as_bytes = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.inception(as_bytes).reshape(images.shape[0], -1).float()  # (N, 2048)


class SeededKernelInceptionDistance(KernelInceptionDistance):
    """torchmetrics' KID (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018) with seeded subsets.

    ``compute()`` draws its random subsets under ``torch.manual_seed(seed)`` inside a forked RNG,
    so the value is reproducible and the global random state is left alone. Returns
    ``(kid_mean, kid_std)`` over the subsets, like the parent. The feature states are ``"cat"``
    states (the parent gathers them update by update, interleaving the ranks), so under DDP the
    features, and hence the subsets, come in rank-major order.
    """

    def __init__(self, *args, seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    def compute(self) -> tuple[Tensor, Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return super().compute()

    def features(self) -> tuple[Tensor, Tensor]:
        """Features ``(N, F)`` of the real and ``(M, F)`` of the generated images, gathered.

        The per-sample values behind both FID and KID: bootstrap them with
        :func:`frechet_feature_distance` or :func:`kernel_feature_distance`.
        """
        return gather_state(self, "real_features"), gather_state(self, "fake_features")


def frechet_feature_distance(real_features: Tensor, fake_features: Tensor) -> Tensor:
    """FID of two feature sets ``(N, F)``, ``(M, F)`` (Heusel et al., NeurIPS 2017), float64.

    The value ``FrechetInceptionDistance.compute()`` gives for the same features (up to
    round-off), as a function a bootstrap can call.
    """
    mean_r, cov_r = gaussian_statistics(torch.as_tensor(real_features))
    mean_g, cov_g = gaussian_statistics(torch.as_tensor(fake_features))
    return frechet_distance(mean_r, cov_r, mean_g, cov_g)


def kernel_feature_distance(real_features: Tensor, fake_features: Tensor, subset_size: int = 1000,
                            subsets: int = 100, seed: int = 0, degree: int = 3, coef: float = 1.0) -> Tensor:
    """KID of two feature sets: mean unbiased polynomial-kernel MMD^2 over seeded random subsets.

    Same definition as torchmetrics' KID (kernel ``(x.y / F + coef) ** degree``), with its own
    ``torch.Generator`` so a bootstrap replicate is reproducible; ``subset_size`` is clipped to the
    smaller set. Returns a float64 scalar.
    """
    real, fake = torch.as_tensor(real_features).double(), torch.as_tensor(fake_features).double()
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 real and 2 generated features, got {real.shape[0]} and {fake.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        subset_r = real[torch.randperm(real.shape[0], generator=generator)[:size].to(real.device)]
        subset_g = fake[torch.randperm(fake.shape[0], generator=generator)[:size].to(fake.device)]
        values.append(poly_mmd(subset_r, subset_g, degree=degree, coef=coef))
    return torch.stack(values).mean()


class RealismMetrics(NamedTuple):
    """FID and KID sharing one feature extractor, and which one it is (for the report)."""

    fid: FrechetInceptionDistance
    kid: SeededKernelInceptionDistance
    feature_source: str  # "domain_encoder" or "inception_v3"


def _inception_from_weights(path: str | Path) -> InceptionFeatures:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"inception_weights '{path}' is not a file; omit it to use the domain encoder")
    if not _TORCH_FIDELITY_AVAILABLE:
        raise ValueError(f"inception_weights '{path}' needs the torch-fidelity package, which is not installed; "
                         "omit inception_weights to use the domain encoder")
    from torchmetrics.image.fid import NoTrainInceptionV3

    network = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(path))
    return InceptionFeatures(network, num_features=2048)


def make_fid_kid(encoder_features: nn.Module | None = None, kid_subset_size: int = 1000, kid_subsets: int = 100,
                 inception_weights: str | Path | None = None, seed: int = 0, **kwargs) -> RealismMetrics:
    """FID and KID over one feature extractor: the domain encoder, or InceptionV3 if weights are given.

    Both metrics take ``update(images, real: bool)`` with slices ``(B, 1, H, W)`` float in
    [-1, 1]; ``fid.compute()`` is a scalar, ``kid.compute()`` is ``(mean, std)``. KID needs at
    least ``kid_subset_size`` real and generated samples at compute. FID keeps running sums;
    KID keeps every feature vector (``N * num_features * 4`` bytes per set, gathered on every
    rank). Each metric runs the feature extractor on its own updates.

    Args:
        encoder_features: a feature module with ``num_features`` (e.g. :class:`PooledEncoderFeatures`).
        kid_subset_size: samples per KID subset.
        kid_subsets: number of KID subsets.
        inception_weights: local path of torch-fidelity's InceptionV3 weights
            (``pt_inception-2015-12-05``); when given, InceptionV3 replaces the encoder.
        seed: seed of the KID subsets.
        **kwargs: ``torchmetrics.Metric`` options for both metrics.
    """
    if inception_weights is not None:
        features: nn.Module = _inception_from_weights(inception_weights)
        source = "inception_v3"
    elif encoder_features is None:
        raise ValueError("give encoder_features (the domain encoder) or inception_weights")
    else:
        if not isinstance(getattr(encoder_features, "num_features", None), int):
            raise ValueError("encoder_features needs an int attribute num_features (see PooledEncoderFeatures)")
        features, source = encoder_features, "domain_encoder"
    if kid_subset_size < 2:
        raise ValueError(f"kid_subset_size must be at least 2, got {kid_subset_size}")
    fid = FrechetInceptionDistance(feature=features, normalize=True, **kwargs)
    with warnings.catch_warnings():  # the feature buffer's size is documented above
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = SeededKernelInceptionDistance(feature=features, subsets=kid_subsets, subset_size=kid_subset_size,
                                            normalize=True, seed=seed, **kwargs)
    logger.info("FID/KID features: %s (%d features)", source, features.num_features)
    return RealismMetrics(fid=fid, kid=kid, feature_source=source)
