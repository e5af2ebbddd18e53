"""The autoencoder stage's plain parts (no Lightning): its ``AutoencoderKL`` configuration, the
eager checks of its arguments, the perceptual loss and the measurement of the latent scale factor.

:class:`~anatldm.trainers.autoencoder.AutoencoderTask` wires them into Lightning.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import PerceptualLoss
from monai.utils import optional_import
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics import MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from anatldm.errors import ConfigError
from anatldm.losses.autoencoder import cosine_lr_factor
from anatldm.models.autoencoder_bundle import downsampling_factor, save_autoencoder_bundle

__all__ = ["apply_lr_schedule", "autoencoder_config", "check_autoencoder_arguments", "check_image_size", "latent_scale_factor",
           "check_strategy", "export_bundle", "perceptual_loss", "reconstruction_metrics",
           "unaugmented_train_split"]


def autoencoder_config(hp: Any) -> dict[str, Any]:
    """The ``AutoencoderKL`` keyword arguments of the task hyperparameters ``hp``, as stored in
    the export bundle."""
    levels = hp.attention_levels if hp.attention_levels is not None else [False] * len(hp.channels)
    return {
        "spatial_dims": hp.spatial_dims,
        "in_channels": hp.in_channels,
        "out_channels": hp.in_channels,
        "channels": list(hp.channels),
        "latent_channels": hp.latent_channels,
        "num_res_blocks": hp.num_res_blocks,
        "norm_num_groups": hp.norm_num_groups,
        "attention_levels": list(levels),
        "with_encoder_nonlocal_attn": hp.with_nonlocal_attention,
        "with_decoder_nonlocal_attn": hp.with_nonlocal_attention,
    }


def perceptual_loss(spatial_dims: int, weights_path: str) -> nn.Module:
    """MONAI's frozen perceptual loss on a local torchvision ResNet-50 state dict."""
    # resnet50 is the one MONAI network that loads from a local file without a download
    loss = PerceptualLoss(spatial_dims=spatial_dims, network_type="resnet50", is_fake_3d=spatial_dims == 3,
                          pretrained=True, pretrained_path=weights_path)
    return loss.requires_grad_(False)


def reconstruction_metrics(spatial_dims: int) -> MetricCollection:
    """PSNR (per image, then the mean) and SSIM of images in [-1, 1]."""
    image_dims = tuple(range(1, spatial_dims + 2))  # per-image PSNR, then the mean
    return MetricCollection({"psnr": PeakSignalNoiseRatio(data_range=2.0, dim=image_dims),
                             "ssim": StructuralSimilarityIndexMeasure(data_range=2.0)})


def export_bundle(folder: str | Path, autoencoder: nn.Module, config: dict[str, Any], scale_factor: float,
                  datamodule, trained_batches: int, trained_epochs: int) -> Path:
    """Write the export bundle (weights + JSON) of a trained autoencoder on ``datamodule``'s data."""
    return save_autoencoder_bundle(
        folder, autoencoder, config, scale_factor,
        normalization=datamodule.normalization, class_names=datamodule.class_names,
        image_size=datamodule.image_size,
        extra={"downsampling_factor": downsampling_factor(config),
               "trained_batches": trained_batches, "trained_epochs": trained_epochs},
    )


def check_image_size(size, channels, spatial_dims: int) -> None:
    """Slices must halve cleanly at every downsampling, or reconstructions change size."""
    factor = downsampling_factor({"channels": channels})
    if spatial_dims == 2 and size is not None and any(s % factor for s in size):
        raise ConfigError(f"data.image_size {list(size)} must be divisible by {factor}, the autoencoder's "
                          f"downsampling (2 ** (len(model.init_args.channels) - 1))")


def check_strategy(model: nn.Module, has_discriminator: bool) -> None:
    """Under DDP, the autoencoder and its discriminator take turns: unused parameters must be allowed."""
    if has_discriminator and isinstance(model, DistributedDataParallel) and not model.find_unused_parameters:
        raise ConfigError("trainer.strategy: the autoencoder and its discriminator take turns, so DDP must "
                          "allow unused parameters; use 'ddp_find_unused_parameters_true' (or adv_weight: 0)")


def apply_lr_schedule(optimizers, base_lrs, schedule: str, step: int, total_steps: int) -> float:
    """Set the learning rate of each optimiser to its base rate times the schedule's factor at
    ``step`` (1 for ``"constant"``, the cosine decay over ``total_steps`` for ``"cosine"``);
    return the factor."""
    factor = 1.0
    if schedule == "cosine":
        factor = cosine_lr_factor(step, total_steps)
    for optimizer, base_lr in zip(optimizers, base_lrs, strict=False):
        for group in optimizer.param_groups:
            group["lr"] = base_lr * factor
    return factor


def unaugmented_train_split(datamodule) -> Dataset:
    """The training split of an ``AnatomyDataModule`` without its augmentation."""
    datasets = getattr(datamodule, "datasets", None)
    if not datasets or "train" not in datasets:
        raise ConfigError("data: the autoencoder's scale factor needs an AnatomyDataModule with a training split")
    train = copy.copy(datasets["train"])  # shares the memory-mapped cache
    train.transform = None
    return train


@torch.no_grad()
def latent_scale_factor(autoencoder: nn.Module, datamodule, num_batches: int, rank: int, world_size: int,
                        reduce: Callable[[Tensor], Tensor], device: torch.device) -> float:
    """``1 / std(z_mu)`` over ``N = num_batches * batch_size`` training slices.

    The slices are fixed and spread evenly over the training split (indices
    ``round(linspace(0, len - 1, N))``, without augmentation), so every training subject is
    represented; the first ``N`` in index order would be the first few subjects only.
    Rank ``r`` of ``W`` encodes the chosen slices ``r, r + W, r + 2W, ...`` — unlike a
    ``DistributedSampler``, which pads the last shard with repeated slices, the union of
    these shards is exactly the ``N`` slices, each once. Per-rank sums of ``z``, ``z**2``
    and the element count (float64) are summed over ranks by ``reduce``, so 1 and W processes
    agree to floating-point summation order.
    """
    dataset = unaugmented_train_split(datamodule)
    batch_size = datamodule.hparams.batch_size
    count = min(len(dataset), num_batches * batch_size)
    chosen = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))  # spread over subjects
    shard = Subset(dataset, chosen[rank::world_size].tolist())
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=datamodule.hparams.num_workers)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # sum z, sum z^2, count
    was_training = autoencoder.training
    autoencoder.eval()
    for batch in loader:
        z_mu, _ = autoencoder.encode(batch["image"].to(device))  # (b, C_z, *latent)
        z_mu = z_mu.double()
        totals += torch.stack([z_mu.sum(), z_mu.pow(2).sum(), torch.tensor(z_mu.numel(), device=device)])
    autoencoder.train(was_training)
    totals = reduce(totals)
    total, total_squares, elements = totals.tolist()
    variance = total_squares / elements - (total / elements) ** 2
    if not (variance > 0 and math.isfinite(variance)):
        raise RuntimeError(f"latent variance is {variance}; the autoencoder collapsed or diverged")
    return 1.0 / math.sqrt(variance)


def check_autoencoder_arguments(channels, norm_num_groups, attention_levels, latent_channels, num_res_blocks,
                                adversarial_warmup_steps, scale_factor_batches, perceptual_weights_path, max_nonfinite_steps,
                                **non_negative: float) -> None:
    """Eager checks that name the offending key (MONAI's own errors do not)."""
    key = "model.init_args"
    if not channels or any(c < 1 for c in channels):
        raise ConfigError(f"{key}.channels must be positive numbers, got {list(channels)}")
    if norm_num_groups < 1 or any(c % norm_num_groups for c in channels):
        raise ConfigError(f"{key}.channels {list(channels)} must all be divisible by "
                          f"{key}.norm_num_groups={norm_num_groups}")
    if attention_levels is not None and len(attention_levels) != len(channels):
        raise ConfigError(f"{key}.attention_levels needs one entry per level of channels ({len(channels)}), "
                          f"got {list(attention_levels)}")
    for name, value in (("latent_channels", latent_channels), ("num_res_blocks", num_res_blocks),
                        ("scale_factor_batches", scale_factor_batches),
                        ("max_nonfinite_steps", max_nonfinite_steps)):
        if value < 1:
            raise ConfigError(f"{key}.{name} must be at least 1, got {value}")
    if adversarial_warmup_steps < 0:
        raise ConfigError(f"{key}.adversarial_warmup_steps must be >= 0, got {adversarial_warmup_steps}")
    for name, value in non_negative.items():
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{key}.{name} must be a non-negative number, got {value}")
    if perceptual_weights_path is not None:
        if not Path(perceptual_weights_path).is_file():
            raise ConfigError(f"{key}.perceptual_weights_path: {perceptual_weights_path} is not a file "
                              f"(a local torchvision ResNet-50 state dict; nothing is downloaded)")
        if not optional_import("torchvision")[1]:
            raise ConfigError(f"{key}.perceptual_weights_path is set but torchvision is not installed; "
                              f"install it or remove the key")
