"""The LDM stage's plain parts (no Lightning): the eager checks of ``AnatomicalLDMTask``'s
arguments and data, the denoiser and scheduler configurations it builds, and the losses of
one batch.

:class:`~anatldm.trainers.ldm.AnatomicalLDMTask` wires them into Lightning.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatldm.diffusion.schedulers import min_snr_weights
from anatldm.errors import ConfigError
from anatldm.losses import AnatomyWeightSchedule, class_register_groups

__all__ = ["anatomy_weight_schedule", "check_cache_latents", "check_ldm_arguments", "check_training_data",
           "denoiser_config", "diffusion_losses", "gradient_norm", "scheduler_config", "slice_seeds",
           "supervised_register_groups"]


def check_ldm_arguments(*, num_inference_steps: int, min_snr_gamma: float | None, lr: float,
                        registers_per_class: int, association_samples: int, attention_steps: int,
                        register_edits, anatomy_edits: dict[str, float] | None, num_registers: int,
                        max_nonfinite_steps: int, anatomy_weight: float, anatomy_weight_min: float,
                        anatomy_warmup_fraction: float, anatomy_snr_cutoff: float, register_supervision: str,
                        register_supervision_weight: float, grad_norm_every_n_steps: int,
                        num_train_timesteps: int, **_: Any) -> None:
    """Eager checks of the task's arguments; each error names its key ``model.<name>``."""
    if num_inference_steps < 1:
        raise ConfigError(f"model.num_inference_steps must be at least 1, got {num_inference_steps}")
    if min_snr_gamma is not None and min_snr_gamma <= 0:
        raise ConfigError(f"model.min_snr_gamma must be positive or null, got {min_snr_gamma}")
    if not lr > 0:
        raise ConfigError(f"model.lr must be positive, got {lr}")
    for key, value in (("registers_per_class", registers_per_class),
                       ("association_samples", association_samples), ("attention_steps", attention_steps)):
        if value < 1:
            raise ConfigError(f"model.{key} must be at least 1, got {value}")
    for key, edits in (("register_edits", register_edits), ("anatomy_edits", anatomy_edits)):
        if edits and not num_registers:
            raise ConfigError(f"model.{key} needs a register bank, but num_registers is 0")
    for name, factor in (anatomy_edits or {}).items():
        if factor < 0:
            raise ConfigError(f"model.anatomy_edits.{name}: the factor must be >= 0 (0 ablates), got {factor}")
    if max_nonfinite_steps < 1:
        raise ConfigError(f"model.max_nonfinite_steps must be at least 1, got {max_nonfinite_steps}")
    if not (anatomy_weight >= 0 and anatomy_weight_min >= 0):
        raise ConfigError(f"model.anatomy_weight and model.anatomy_weight_min must be >= 0, got "
                          f"{anatomy_weight}, {anatomy_weight_min}")
    if not 0 <= anatomy_warmup_fraction <= 1:
        raise ConfigError(f"model.anatomy_warmup_fraction must lie in [0, 1], got {anatomy_warmup_fraction}")
    if not anatomy_snr_cutoff > 0:
        raise ConfigError(f"model.anatomy_snr_cutoff must be positive, got {anatomy_snr_cutoff}")
    if register_supervision != "none" and not (num_registers and anatomy_weight > 0):
        raise ConfigError("model.register_supervision needs a register bank and the anatomy head's classes "
                          f"(num_registers {num_registers}, anatomy_weight {anatomy_weight})")
    if register_supervision_weight < 0:
        raise ConfigError(f"model.register_supervision_weight must be >= 0, got {register_supervision_weight}")
    if grad_norm_every_n_steps < 0:
        raise ConfigError(f"model.grad_norm_every_n_steps must be >= 0, got {grad_norm_every_n_steps}")
    if num_train_timesteps < 1:
        raise ConfigError(f"model.num_train_timesteps must be at least 1, got {num_train_timesteps}")


def denoiser_config(hp: Any, autoencoder_config: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """The ``AnatomicalDenoiser`` keyword arguments of the task hyperparameters ``hp`` on the
    latents of an autoencoder bundle's ``config`` (``num_classes``: 0 without a head)."""
    return {
        "spatial_dims": autoencoder_config.get("spatial_dims", 2), "in_channels": autoencoder_config["latent_channels"],
        "channels": list(hp.channels), "num_res_blocks": hp.num_res_blocks,
        "attention_levels": list(hp.attention_levels), "norm_num_groups": hp.norm_num_groups,
        "num_head_channels": hp.num_head_channels, "num_registers": hp.num_registers,
        "register_dim": hp.register_dim, "register_init_std": hp.register_init_std,
        "register_levels": list(hp.register_levels), "register_heads": hp.register_heads,
        "register_encoder": hp.register_encoder, "register_mode": hp.register_mode,
        "num_classes": num_classes, "head_levels": list(hp.head_levels), "head_channels": hp.head_channels}


def diffusion_losses(batch: dict, *, autoencoder: nn.Module, encode: Callable[[Tensor], Tensor], scale_factor: Tensor,
                     denoiser: nn.Module, scheduler, prediction_type: str, min_snr_gamma: float | None,
                     timestep_weighting: Callable[[Tensor], Tensor], anatomy_loss: nn.Module | None,
                     register_loss: nn.Module | None, posterior_cache=None,
                     generator: torch.Generator | None = None, max_timestep: int | None = None,
                     seeds: Sequence[int] | None = None,
                     per_slice: bool = False) -> tuple[dict[str, Tensor], Tensor | None]:
    """Losses of one batch and the head's logits; noise and timesteps from ``generator``, or from
    one seed per sample (``seeds``: then a sample's noise does not depend on its batch or its
    rank). Latents come from ``posterior_cache`` when one is given (training), else from
    ``encode`` (posterior sampled with the global RNG), or, with ``seeds``, from the sample's
    own seed too. ``per_slice``: no timestep weights (``anatomy_loss`` then the per-slice one),
    as validation reports them."""
    images, masks = batch["image"], batch["mask"]  # (B, 1, H, W), (B, H, W)
    batch_size = images.shape[0]
    high = max_timestep or scheduler.config.num_train_timesteps
    if seeds is None and posterior_cache is not None:
        keys = list(zip(batch["subject"], (int(p) for p in batch["position"]), strict=True))
        latents = posterior_cache.sample(keys, images, autoencoder.encode) * scale_factor
    elif seeds is None:
        latents = encode(images)  # (B, C_z, h, w), posterior sampled with the global RNG
    else:  # the posterior sample from the sample's own seed too
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        with torch.no_grad():
            z_mu, z_sigma = autoencoder.encode(images)  # (B, C_z, h, w) each
        eps = torch.stack([torch.randn(z_mu.shape[1:], generator=g) for g in generators]).to(z_mu)
        latents = (z_mu + z_sigma * eps) * scale_factor  # (B, C_z, h, w)
    if seeds is not None:
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators]).to(latents)
        timesteps = torch.cat([torch.randint(0, high, (1,), generator=g) for g in generators]).to(latents.device)
    elif generator is not None:
        noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)
        timesteps = torch.randint(0, high, (batch_size,), generator=generator, device="cpu").to(latents.device)
    else:
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, high, (batch_size,), device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)  # (B, C_z, h, w)
    output = denoiser(noisy, timesteps, mask_size=masks.shape[1:], return_attention=register_loss is not None)
    target = noise if prediction_type == "epsilon" else \
        scheduler.get_velocity(latents, noise, timesteps)
    per_sample = F.mse_loss(output.sample.float(), target.float(), reduction="none").flatten(1).mean(1)  # (B,)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, min_snr_gamma)
    losses = {"diffusion_loss": per_sample.mean()}
    weights = None if per_slice else timestep_weighting(timesteps)  # (B,) or None
    if anatomy_loss is not None:
        losses["anatomy_loss"] = anatomy_loss(output.anatomy_logits, masks, weights)
    if register_loss is not None:
        losses["register_loss"] = register_loss(output.attention, masks, weights)
    return losses, output.anatomy_logits


def gradient_norm(term: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The L2 norm of the gradient of ``term`` over ``params`` (the graph is kept)."""
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads if g is not None]))


def scheduler_config(hp: Any) -> dict[str, Any]:
    """The arguments of :func:`~anatldm.diffusion.make_train_scheduler` of the task hyperparameters ``hp``."""
    return {"num_train_timesteps": hp.num_train_timesteps, "beta_schedule": hp.beta_schedule,
            "beta_start": hp.beta_start, "beta_end": hp.beta_end, "prediction_type": hp.prediction_type}


def supervised_register_groups(hp: Any, num_registers: int, num_classes: int) -> list[list[int]] | None:
    """The registers owned by each foreground class with ``register_supervision: attention``, else ``None``."""
    if hp.register_supervision != "attention":
        return None
    try:
        return class_register_groups(num_registers, num_classes, hp.supervised_registers_per_class)
    except ValueError as err:
        raise ConfigError(f"model.supervised_registers_per_class: {err}") from None


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
        raise ConfigError("model.cache_latents needs data.augment: false (an augmented slice differs "
                          "on every visit, so its latent cannot be cached)")


def anatomy_weight_schedule(hp: Any, total_steps: int) -> AnatomyWeightSchedule:
    """The progressive anatomy-loss weight of the task hyperparameters ``hp`` over ``total_steps``."""
    return AnatomyWeightSchedule(
        lambda_max=hp.anatomy_weight, lambda_min=min(hp.anatomy_weight_min, hp.anatomy_weight),
        warmup_fraction=hp.anatomy_warmup_fraction, decay=hp.anatomy_decay, total_steps=max(int(total_steps), 1))


def slice_seeds(batch: dict) -> list[int]:
    """One noise seed per slice from the slice itself (subject, position): validation numbers do
    not depend on the batch size or the number of processes."""
    return [zlib.crc32(f"{subject}/{int(position)}".encode()) for subject, position in
            zip(batch["subject"], batch["position"], strict=True)]


#: the documentation of ``AnatomicalLDMTask`` with every hyperparameter (its ``Args:`` section is what
#: ``anatldm fit --help`` shows), kept next to their checks
LDM_TASK_DOC = """Anatomical latent diffusion model (docs/method.md, 'Model' and 'Training objective').

    A frozen KL autoencoder (an export bundle of :class:`AutoencoderTask`) maps slices to
    latents scaled by its ``scale_factor``. :class:`AnatomicalDenoiser` predicts the noise while
    cross-attending to a learnable register bank, and its anatomy head predicts the clean
    slice's label map from the noisy latent. Loss::

        L = L_diffusion + anatomy_weight(step) * DiceCE_w(head logits, mask)
            [+ register_supervision_weight * L_attention(register attention, mask)]

    with the progressive :class:`AnatomyWeightSchedule`, ``w`` the per-sample timestep weights
    of :class:`~anatldm.losses.TimestepWeighting` and ``L_attention`` the optional
    :class:`~anatldm.losses.RegisterAttentionLoss` (docs/method.md). ``num_registers: 0`` and
    ``anatomy_weight: 0`` give the standard LDM baseline, without a single register or head
    parameter. EMA weights come from the ``EMAWeightAveraging`` callback (Lightning's, in
    ``anatldm.callbacks`` with a foreach update; see the configs): they are swapped in for
    validation and written to checkpoints.

    Sampling needs no mask: every sample comes out as an (image, mask) pair, the mask read from
    one more head call on the final (clean) latents at t = 0.

    Args:
        autoencoder: path of the autoencoder export bundle (folder or ``autoencoder.json``).
        channels: denoiser UNet channels per level.
        num_res_blocks: residual blocks per level.
        attention_levels: UNet self-attention per level.
        norm_num_groups: GroupNorm groups.
        num_head_channels: channels per self-attention head.
        num_registers: register tokens ``K``; 0 for the baseline.
        register_dim: register width ``D``.
        register_init_std: standard deviation of the registers' initialisation.
        register_levels: decoder levels (0 = latent resolution) that cross-attend to registers.
        register_heads: heads of the register cross-attention.
        register_encoder: encoder blocks of ``register_levels`` cross-attend too.
        register_mode: ``"read"`` (the same bank for every sample, the method's literal form) or
            ``"read_write"`` (the tokens first read each register level's features, then the
            features read the updated tokens; :class:`~anatldm.models.denoiser.RegisterWrite`).
        register_supervision: ``"none"``, or ``"attention"``: class ``c`` owns
            ``supervised_registers_per_class`` registers (the rest are free) and
            :class:`~anatldm.losses.RegisterAttentionLoss` aligns their attention with the class's
            mask; edits by class then use these registers (no association calibration).
        register_supervision_weight: weight of that loss.
        supervised_registers_per_class: registers owned by each foreground class.
        head_levels: decoder levels fused by the anatomy head.
        head_channels: width of the head.
        anatomy_weight: ``lambda_max`` of the anatomy loss; 0 builds no head (baseline).
        anatomy_weight_min: ``lambda_min`` reached at the end of training.
        anatomy_warmup_fraction: fraction of training steps held at ``lambda_max``.
        anatomy_decay: ``"cosine"``, ``"linear"`` or ``"constant"``.
        anatomy_timestep_weighting: per-sample weight of the anatomy (and register-attention)
            loss by timestep: ``"none"`` (``w = 1``), ``"alpha_bar"`` (``w = alpha_bar_t``) or
            ``"snr_cutoff"`` (``w = 1[SNR(t) >= anatomy_snr_cutoff]``); see
            :class:`~anatldm.losses.TimestepWeighting`.
        anatomy_snr_cutoff: the SNR threshold of ``"snr_cutoff"``.
        anatomy_dice_batch: Dice over the whole batch (MONAI ``DiceCELoss(batch=True)``): a class
            absent from a slice adds no near-constant per-slice term. Off by default: measured
            by the ablation (docs/results/ablation.json, same protocol), batch Dice gave a
            pooled plausibility change of -24.8 % vs +0.5 % for per-slice Dice, KID ratio 1.37 vs 1.07.
        num_train_timesteps: diffusion steps of the forward process.
        beta_schedule: diffusers beta schedule.
        beta_start: first beta.
        beta_end: last beta.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        min_snr_gamma: Min-SNR-gamma loss weighting; ``None`` for the plain MSE.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
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
        sampler: ``"ddpm"``, ``"ddim"``, ``"dpm_solver++"``, ``"dpm_solver++_sde"`` or ``"unipc"`` for previews and ``predict``.
        num_inference_steps: denoiser calls per sample.
        register_edits: edits of the register bank applied when sampling (controllable
            generation), by register index or by class (``classes: [liver]``).
        anatomy_edits: shorthand for edits by anatomy, class name -> factor: the
            ``registers_per_class`` registers most associated with the class are scaled by the
            factor (0 ablates them), e.g. ``{liver: 1.5, kidney: 0}``; applied after
            ``register_edits``.
        registers_per_class: registers edited per named class (with ``register_supervision:
            attention``, a class's own ``supervised_registers_per_class`` registers instead).
        association: ``association.json`` (written by ``anatldm predict`` with ``SampleWriter``)
            giving the register-class association; ``None`` computes it on first use from
            ``association_samples`` unedited samples (seeds from 1,000,000) and the head's masks.
        association_samples: calibration samples when ``association`` is ``None``.
        attention_steps: register attention maps are averaged over this many last sampling steps.

    ``sampler`` and everything after it are inference-only: they are not saved as
    hyperparameters, so a sampling config can change them while the architecture comes from the
    checkpoint.
"""
