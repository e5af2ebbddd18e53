"""The LDM stage's plain parts (no Lightning): its training options, the checks of its data,
and the losses of one batch (the training forward, as MONAI's ``LatentDiffusionInferer``:
latents encoded one way, noised by the training schedule, denoised, compared).

:class:`~anatldm.trainers.ldm.AnatomicalLDMTask` wires them into Lightning.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatldm.diffusion.latents import PosteriorCache
from anatldm.diffusion.schedulers import NoiseScheduleConfig, min_snr_weights
from anatldm.errors import ConfigError
from anatldm.losses import class_register_groups
from anatldm.models.registers import RegisterConfig

__all__ = ["TrainingOptions", "check_cache_latents", "check_training_data", "clean_image_features", "diffusion_losses",
           "gradient_norm", "posterior_moments", "slice_seeds", "supervised_register_groups"]


@dataclass
class TrainingOptions:
    """Monitoring, fault and speed settings of LDM training (YAML ``model.init_args.training``);
    they do not change the model.

    Args:
        preview_every_n_epochs: log a fixed-seed sample grid with head masks every N epochs (0: never).
        num_preview_samples: samples in that grid.
        grad_norm_every_n_steps: every N steps, log the gradient norm of each loss term (one
            extra backward pass per term on those steps; single-process runs only) as
            ``train/grad_norm_<loss>``; the total norm and the share of steps whose gradient
            was clipped (``train/grad_norm``, ``train/clipped``) are logged every step. 0: off.
        max_nonfinite_steps: training stops with an error after this many steps in a row with a
            non-finite loss (each one is skipped: no update, a warning, ``train/nonfinite_steps``).
        cache_latents: encode each training slice once and keep its posterior moments
            (:class:`~anatldm.diffusion.latents.PosteriorCache`; every step still draws a fresh
            posterior sample): a third less time per step on CPU at quickstart size. Needs data
            without random augmentation (``data.augment: false``); memory grows with the
            training set (``2 * C_z * h * w`` floats per slice).
    """

    #: where these settings sit in a config: errors name ``<key>.<field>``
    key = "model.training"

    preview_every_n_epochs: int = 1
    num_preview_samples: int = 8
    grad_norm_every_n_steps: int = 50
    max_nonfinite_steps: int = 10
    cache_latents: bool = False

    def __post_init__(self) -> None:
        key = self.key
        for name in ("preview_every_n_epochs", "grad_norm_every_n_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("num_preview_samples", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be at least 1, got {getattr(self, name)}")


def diffusion_losses(batch: dict, *, autoencoder: nn.Module, scale_factor: Tensor, denoiser: nn.Module, scheduler,
                     noise_schedule: NoiseScheduleConfig, timestep_weighting: Callable[[Tensor], Tensor | None],
                     anatomy_loss: nn.Module | None, register_loss: nn.Module | None,
                     posterior_cache: PosteriorCache | None = None, generator: torch.Generator | None = None,
                     max_timestep: int | None = None, seeds: Sequence[int] | None = None,
                     per_slice: bool = False, clean_fraction: float = 0.0,
                     self_condition: bool = False,
                     image_features: Callable[[Tensor], list[Tensor]] | None = None,
                     ) -> tuple[dict[str, Tensor], Tensor | None]:
    """Losses of one batch and the head's logits.

    Latents: the posterior moments ``(mu, sigma)`` of the frozen ``autoencoder`` (from
    ``posterior_cache`` when one is given), then ``z = (mu + sigma * eps) * scale_factor``.
    Randomness (``eps``, noise, timesteps): one seed per sample (``seeds``: a sample's numbers
    then depend neither on its batch nor on its rank), or the global RNG for ``eps`` and
    ``generator`` (or the global RNG) for noise and timesteps. ``per_slice``: no timestep weights
    (``anatomy_loss`` then the per-slice one), as validation reports them. ``clean_fraction``:
    the first ``round(clean_fraction * B)`` samples of the batch are drawn at t = 0 (the head's
    final call in sampling; ``HeadConfig.clean_fraction``), except with ``seeds``.
    ``self_condition`` (anatomy-conditioned registers): the tokens respond to the head's soft
    prediction of a first no-grad pass on the same noisy latents, as they respond to the previous
    step's in sampling; otherwise to zeros, as at the first sampling step. ``image_features``
    (``HeadConfig.image_features``): the frozen decoder's activations of a latent; the head of
    every sample at t = 0 reads those of its (noised) latent, as the final sampling call does,
    the others read zeros.

    Returns:
        ``{"diffusion_loss", ["anatomy_loss"], ["register_loss"]}`` (scalars) and the head's
        logits ``(B, classes, H, W)`` (``None`` without a head).
    """
    images, masks = batch["image"], batch["mask"]  # (B, 1, H, W), (B, H, W)
    batch_size = images.shape[0]
    high = max_timestep or scheduler.config.num_train_timesteps
    z_mu, z_sigma = posterior_moments(batch, autoencoder, posterior_cache if seeds is None else None)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds] if seeds is not None else None
    if generators is not None:
        eps = torch.stack([torch.randn(z_mu.shape[1:], generator=g) for g in generators]).to(z_mu)
    else:  # the global RNG, as MONAI's AutoencoderKL.sampling draws it
        eps = torch.randn(z_mu.shape, device=z_mu.device).to(z_mu)
    latents = (z_mu + z_sigma * eps) * scale_factor  # (B, C_z, h, w)
    if generators is not None:
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators]).to(latents)
        timesteps = torch.cat([torch.randint(0, high, (1,), generator=g) for g in generators]).to(latents.device)
    elif generator is not None:
        noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)
        timesteps = torch.randint(0, high, (batch_size,), generator=generator, device="cpu").to(latents.device)
    else:
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, high, (batch_size,), device=latents.device)
    if clean_fraction > 0 and seeds is None:  # batches are shuffled: the first samples are a random share
        timesteps[: int(round(clean_fraction * batch_size))] = 0
    noisy = scheduler.add_noise(latents, noise, timesteps)  # (B, C_z, h, w)
    anatomy = None  # the condition of anatomy-conditioned registers: zeros unless self-conditioned
    if self_condition and getattr(denoiser, "anatomy_conditioner", None) is not None:
        with torch.no_grad():
            first = denoiser(noisy, timesteps, mask_size=masks.shape[1:]).anatomy_logits
        anatomy = torch.softmax(first.float(), dim=1)  # (B, classes, H, W)
    output = denoiser(noisy, timesteps, mask_size=masks.shape[1:], return_attention=register_loss is not None,
                      anatomy=anatomy, image_features=clean_image_features(noisy, timesteps, image_features))
    target = noise if noise_schedule.prediction_type == "epsilon" else \
        scheduler.get_velocity(latents, noise, timesteps)
    per_sample = F.mse_loss(output.sample.float(), target.float(), reduction="none").flatten(1).mean(1)  # (B,)
    if noise_schedule.min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, noise_schedule.min_snr_gamma)
    losses = {"diffusion_loss": per_sample.mean()}
    weights = None if per_slice else timestep_weighting(timesteps)  # (B,) or None
    if anatomy_loss is not None:
        losses["anatomy_loss"] = anatomy_loss(output.anatomy_logits, masks, weights)
    if register_loss is not None:
        losses["register_loss"] = register_loss(output.attention, masks, weights)
    return losses, output.anatomy_logits


def posterior_moments(batch: dict, autoencoder: nn.Module,
                      posterior_cache: PosteriorCache | None = None) -> tuple[Tensor, Tensor]:
    """The frozen ``autoencoder``'s posterior ``(mu, sigma)`` ``(B, C_z, h, w)`` of ``batch["image"]``
    (from ``posterior_cache`` when one is given, keyed by subject and position)."""
    if posterior_cache is not None:
        keys = list(zip(batch["subject"], (int(p) for p in batch["position"]), strict=True))
        return posterior_cache.moments(keys, batch["image"], autoencoder.encode)
    with torch.no_grad():
        return autoencoder.encode(batch["image"])


def clean_image_features(latents: Tensor, timesteps: Tensor,
                         image_features: Callable[[Tensor], list[Tensor]] | None) -> list[Tensor] | None:
    """``image_features`` of the samples at t = 0 of ``latents (B, C_z, *s)``, zeros for the
    others (one decoder pass over the clean ones); ``None`` (the head reads none, as it reads
    zeros: its image projections have no bias) without ``image_features`` or a clean sample."""
    clean = timesteps == 0  # (B,)
    if image_features is None or not bool(clean.any()):
        return None
    features = image_features(latents[clean])  # [(B_clean, C_i, *S_i)]
    full = [latents.new_zeros(len(latents), *f.shape[1:]) for f in features]  # [(B, C_i, *S_i)]
    for target, feature in zip(full, features, strict=True):
        target[clean] = feature.to(target)
    return full


def gradient_norm(term: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The L2 norm of the gradient of ``term`` over ``params`` (the graph is kept)."""
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads if g is not None]))


def supervised_register_groups(registers: RegisterConfig, num_classes: int) -> list[list[int]] | None:
    """The registers owned by each foreground class with ``supervision: attention``, else ``None``."""
    if registers.supervision != "attention":
        return None
    try:
        return class_register_groups(registers.num_registers, num_classes, registers.supervised_per_class)
    except ValueError as err:
        raise ConfigError(f"{registers.key}.supervised_per_class: {err}") from None


def check_training_data(datamodule, class_names: list[str], image_size: tuple[int, ...], autoencoder: str) -> None:
    """Training data must have the autoencoder bundle's classes and image size (not needed to sample)."""
    if getattr(datamodule, "class_names", None) is None:
        return
    if list(datamodule.class_names) != class_names:
        raise ConfigError(f"data: classes {datamodule.class_names} differ from the autoencoder "
                          f"bundle's {class_names} ({autoencoder})")
    size = getattr(datamodule, "image_size", None)
    if size is not None and tuple(size) != image_size:
        raise ConfigError(f"data.image_size {list(size)} differs from the autoencoder bundle's image_size "
                          f"{list(image_size)} ({autoencoder})")


def check_cache_latents(cache_latents: bool, datamodule) -> None:
    """``cache_latents`` needs data without random augmentation."""
    data_hparams = getattr(datamodule, "hparams", {})
    if cache_latents and data_hparams.get("augment", False):
        raise ConfigError(f"{TrainingOptions.key}.cache_latents needs data.augment: false (an augmented slice "
                          "differs on every visit, so its latent cannot be cached)")


def slice_seeds(batch: dict) -> list[int]:
    """One noise seed per slice from the slice itself (subject, position): validation numbers do
    not depend on the batch size or the number of processes."""
    return [zlib.crc32(f"{subject}/{int(position)}".encode()) for subject, position in
            zip(batch["subject"], batch["position"], strict=True)]
