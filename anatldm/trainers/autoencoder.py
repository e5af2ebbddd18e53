"""``AutoencoderTask``: the first stage, a KL autoencoder that maps slices to latents.

``anatldm fit --config configs/vae.yaml`` trains it and, at the end of fit, measures the latent
``scale_factor`` and writes the export bundle the diffusion stage reads
(:mod:`anatldm.models.autoencoder_bundle`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection

from anatldm.config import as_config
from anatldm.errors import ConfigError, check_output_folder
from anatldm.losses.anatomy_perceptual import AnatomyPerceptualConfig, AnatomyPerceptualLoss
from anatldm.losses.autoencoder import discriminator_loss, generator_losses
from anatldm.models import autoencoder as ae_stage
from anatldm.trainers.base import AnatomyTask
from anatldm.visualize import reconstruction_grid

__all__ = ["AutoencoderTask"]

logger = logging.getLogger(__name__)


class AutoencoderTask(AnatomyTask):
    """KL-regularised autoencoder with a PatchGAN discriminator (Rombach et al. 2022).

    Wires MONAI's ``AutoencoderKL`` (Pinaya et al. 2022, https://arxiv.org/abs/2209.07162),
    ``PatchDiscriminator`` and ``PatchAdversarialLoss`` into Lightning's manual-optimisation GAN
    pattern: one generator step (L1 + KL [+ perceptual] [+ anatomy perceptual] [+ adversarial])
    and, once the adversarial warm-up is over, one discriminator step per batch. With
    ``anatomy_perceptual.weight > 0`` a small segmenter trains on the real slices for the first
    ``anatomy_perceptual.warmup_steps`` batches, then is frozen and scores every reconstruction
    (:mod:`anatldm.losses.anatomy_perceptual`). Losses are computed in
    float32, so ``bf16-mixed`` is safe. Nothing is 2D-only: ``spatial_dims: 3`` trains on volumes.

    At the end of fit, ``scale_factor = 1 / std(z_mu)`` is measured on
    ``scale_factor_batches`` batches' worth of training slices spread evenly over the split (no
    augmentation; sums all-reduced across ranks) and the bundle is written to ``export_dir``.

    With the discriminator on, ``trainer.max_steps`` counts the steps of both optimisers
    (Lightning's rule for manual optimisation); ``max_epochs`` is the simpler stop criterion.
    Under DDP use ``strategy: ddp_find_unused_parameters_true``: the two networks take turns, so
    each backward pass leaves the other network's parameters without gradients.

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: image channels (also the output channels).
        channels: feature channels per resolution level; ``len(channels) - 1`` downsamplings.
        latent_channels: channels of the latent ``z``.
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups; every entry of ``channels`` must be divisible by it.
        attention_levels: self-attention per level; ``None`` means none.
        with_nonlocal_attention: the attention block in the lowest-resolution middle block of
            the encoder and decoder.
        reconstruction_loss: ``"l1"`` (default, as in the LDM paper) or ``"l2"``.
        generator_lr: Adam learning rate of the autoencoder.
        discriminator_lr: Adam learning rate of the discriminator.
        lr_schedule: ``"constant"``, or ``"cosine"``: both learning rates decay to 0 over the
            training batches Lightning expects (``trainer.estimated_stepping_batches``: batches
            times epochs, or ``max_steps`` when that is set).
        kl_weight: weight of the KL term (summed over latent elements).
        adv_weight: weight of the adversarial terms; 0 trains no discriminator at all.
        adversarial_warmup_steps: training batches before the discriminator is switched on.
        discriminator_layers: convolution layers of the PatchGAN discriminator.
        discriminator_channels: channels of its first layer (doubled per layer).
        perceptual_weight: weight of the perceptual loss (only with ``perceptual_weights_path``).
        perceptual_weights_path: a local torchvision ResNet-50 state dict for MONAI's perceptual
            loss (needs torchvision). ``None`` switches the perceptual loss off; nothing is ever
            downloaded.
        anatomy_perceptual: the domain perceptual loss of a segmenter trained on this fit's own
            slices; :class:`~anatldm.losses.anatomy_perceptual.AnatomyPerceptualConfig` (off by default).
        gradient_clip_val: max gradient norm of each optimiser step; ``None`` or 0 disables it
            (``trainer.gradient_clip_val`` cannot be used with manual optimisation).
        scale_factor_batches: training batches used to measure the latent scale factor.
        export_dir: bundle folder; ``None`` means ``<trainer.log_dir>/export``.
        num_logged_images: rows of the reconstruction grid logged to TensorBoard.
        max_nonfinite_steps: training stops with an error after this many batches in a row with a
            non-finite generator or discriminator loss (each one is skipped: no update of either
            network, a warning, ``train/nonfinite_steps``).
    """

    def __init__(
        self,
        spatial_dims: Literal[2, 3] = 2, in_channels: int = 1, channels: tuple[int, ...] = (128, 128, 256),
        latent_channels: int = 3, num_res_blocks: int = 2, norm_num_groups: int = 32,
        attention_levels: tuple[bool, ...] | None = None, with_nonlocal_attention: bool = False,
        reconstruction_loss: Literal["l1", "l2"] = "l1",
        generator_lr: float = 1e-4, discriminator_lr: float = 5e-4,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        kl_weight: float = 1e-6, adv_weight: float = 0.01, adversarial_warmup_steps: int = 1000,
        discriminator_layers: int = 3, discriminator_channels: int = 64,
        perceptual_weight: float = 1e-3, perceptual_weights_path: str | None = None,
        anatomy_perceptual: AnatomyPerceptualConfig = AnatomyPerceptualConfig(),
        gradient_clip_val: float | None = 1.0, scale_factor_batches: int = 50, export_dir: str | None = None,
        num_logged_images: int = 8, max_nonfinite_steps: int = 10,
    ) -> None:
        ae_stage.check_autoencoder_arguments(
            channels, norm_num_groups, attention_levels, latent_channels, num_res_blocks, adversarial_warmup_steps,
            scale_factor_batches, perceptual_weights_path, max_nonfinite_steps, generator_lr=generator_lr,
            discriminator_lr=discriminator_lr, kl_weight=kl_weight, adv_weight=adv_weight,
            perceptual_weight=perceptual_weight)
        if export_dir is not None:
            check_output_folder(export_dir, "model.init_args.export_dir")
        self.anatomy_perceptual_config = as_config(AnatomyPerceptualConfig, anatomy_perceptual)
        super().__init__()
        self.automatic_optimization = False
        #: training batches seen so far (drives the adversarial warm-up; kept in checkpoints)
        self.generator_steps = 0
        #: ``1 / std(z_mu)`` on training data, set at the end of fit
        self.scale_factor: float | None = None

    # -- construction ------------------------------------------------------------------------
    @property
    def autoencoder_config(self) -> dict[str, Any]:
        """The ``AutoencoderKL`` keyword arguments, as stored in the export bundle."""
        return ae_stage.autoencoder_config(self.hparams)

    def configure_models(self) -> None:
        hp = self.hparams
        self.autoencoder = AutoencoderKL(**self.autoencoder_config)
        self.discriminator = None
        if hp.adv_weight > 0:
            self.discriminator = PatchDiscriminator(spatial_dims=hp.spatial_dims, in_channels=hp.in_channels,
                                                    channels=hp.discriminator_channels,
                                                    num_layers_d=hp.discriminator_layers)
        config = self.anatomy_perceptual_config
        self.anatomy_perceptual = AnatomyPerceptualLoss(config, hp.spatial_dims) if config.enabled else None

    def configure_losses(self) -> None:
        hp = self.hparams
        self.adversarial_loss = PatchAdversarialLoss(criterion="least_squares")
        self.perceptual_loss = None
        if hp.perceptual_weights_path is None:
            logger.info("perceptual loss off (model.init_args.perceptual_weights_path is not set)")
        elif hp.perceptual_weight > 0:
            self.perceptual_loss = ae_stage.perceptual_loss(hp.spatial_dims, hp.perceptual_weights_path)

    def configure_metrics(self) -> None:
        metrics = ae_stage.reconstruction_metrics(self.hparams.spatial_dims)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # mean over all images of all ranks (Lightning's sync_dist would average per-rank means)
        self.l1 = torch.nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        optimizers = [torch.optim.Adam(self.autoencoder.parameters(), lr=hp.generator_lr,
                                       **self.adam_options(self.autoencoder.parameters()))]
        if self.discriminator is not None:
            optimizers.append(torch.optim.Adam(self.discriminator.parameters(), lr=hp.discriminator_lr,
                                               **self.adam_options(self.discriminator.parameters())))
        if self.anatomy_perceptual is not None:  # the segmenter, during its warm-up only
            segmenter = self.anatomy_perceptual.segmenter
            optimizers.append(torch.optim.Adam(segmenter.parameters(), lr=self.anatomy_perceptual_config.lr,
                                               **self.adam_options(segmenter.parameters())))
        return optimizers

    def train(self, mode: bool = True) -> AutoencoderTask:
        super().train(mode)
        if self.perceptual_loss is not None:  # a frozen feature extractor stays in eval mode
            self.perceptual_loss.eval()
        return self

    # -- Lightning hooks ---------------------------------------------------------------------
    def check_inputs(self, datamodule) -> None:
        """Slices must halve cleanly at every downsampling, or reconstructions change size."""
        ae_stage.check_image_size(getattr(datamodule, "image_size", None), self.hparams.channels,
                                  self.hparams.spatial_dims)
        config = self.anatomy_perceptual_config
        names = getattr(datamodule, "class_names", None)
        if config.enabled and names is None:
            raise ConfigError(f"{config.key}.weight > 0 needs labelled data (masks and class names), "
                              f"but the data module {type(datamodule).__name__} has no class_names")
        if config.enabled and len(names) != config.num_classes:
            raise ConfigError(f"{config.key}.num_classes is {config.num_classes} but the data has "
                              f"{len(names)} classes {list(names)}")

    def on_fit_start(self) -> None:
        self.check_inputs(self.trainer.datamodule)
        ae_stage.check_strategy(self.trainer.strategy.model, self.discriminator is not None)

    def forward(self, images: Tensor) -> Tensor:
        """Deterministic reconstruction (decoded posterior mean)."""
        return self.autoencoder.reconstruct(images)  # (B, C, *spatial)

    @property
    def adversarial_active(self) -> bool:
        return self.discriminator is not None and self.generator_steps >= self.hparams.adversarial_warmup_steps

    @property
    def anatomy_perceptual_active(self) -> bool:
        """Whether the segmenter's warm-up is over and its term is in the autoencoder's loss."""
        return (self.anatomy_perceptual is not None
                and self.generator_steps >= self.anatomy_perceptual_config.warmup_steps)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]  # (B, C, *spatial) in [-1, 1]
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]  # [generator, discriminator?, segmenter?]
        generator_optimizer = optimizers[0]
        discriminator_optimizer = optimizers[1] if self.discriminator is not None else None
        segmenter_optimizer = optimizers[-1] if self.anatomy_perceptual is not None else None
        adversarial = self.adversarial_active
        segmenter_warmup = segmenter_optimizer is not None and not self.anatomy_perceptual_active
        learning_rate_factor = self._apply_lr_schedule([generator_optimizer] + ([discriminator_optimizer] if
                                                                                 discriminator_optimizer else []))
        buffers = self.buffer_snapshot()
        with self.toggled_optimizer(generator_optimizer):
            reconstruction, z_mu, z_sigma = self.autoencoder(images)  # (B, C, *spatial), 2 x (B, C_z, *latent)
            losses = self._generator_losses(images, reconstruction, z_mu, z_sigma, adversarial, batch.get("mask"))
        if adversarial:  # the discriminator loss is computed before either network changes, as before
            with self.toggled_optimizer(discriminator_optimizer):
                losses["discriminator"] = self._discriminator_loss(images, reconstruction.detach())
        if segmenter_warmup:  # the segmenter learns the real slices while its term is off
            with self.toggled_optimizer(segmenter_optimizer):
                losses["segmenter"] = self.anatomy_perceptual.segmenter_loss(images, batch["mask"])
        checked = [losses["loss"]] + [losses[name] for name in ("discriminator", "segmenter") if name in losses]
        if self.skip_nonfinite_loss(torch.stack(checked), buffers):
            return  # no network is updated
        self._step(generator_optimizer, losses["loss"])
        if adversarial:
            self._step(discriminator_optimizer, losses["discriminator"])
        if segmenter_warmup:
            self._step(segmenter_optimizer, losses["segmenter"])
        self.generator_steps += 1
        batch_size = images.shape[0]
        self.log(f"train/{self.hparams.reconstruction_loss}", losses["reconstruction"], prog_bar=True,
                 batch_size=batch_size)
        self.log_dict({f"train/{name}": value.detach() for name, value in losses.items() if name != "reconstruction"},
                      batch_size=batch_size)
        self.log("train/adversarial_on", float(adversarial), batch_size=batch_size)
        if self.anatomy_perceptual is not None:
            self.log("train/anatomy_perceptual_on", float(not segmenter_warmup), batch_size=batch_size)
        self.log("train/generator_lr", self.hparams.generator_lr * learning_rate_factor, batch_size=batch_size)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.test_metrics, "test")

    def on_train_end(self) -> None:
        """Measure the latent scale factor on all ranks, then export the bundle (rank 0)."""
        self.scale_factor = self.compute_scale_factor()
        logger.info("latent scale factor 1/std(z_mu) = %.6g", self.scale_factor)
        export_dir = Path(self.hparams.export_dir or Path(self.trainer.log_dir or self.trainer.default_root_dir)
                          / "export")
        if self.trainer.is_global_zero:
            self.export(export_dir)
            for experiment_logger in self.loggers:
                experiment_logger.log_metrics({"scale_factor": self.scale_factor}, step=self.trainer.global_step)
        self.trainer.strategy.barrier("autoencoder_export")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["generator_steps"] = self.generator_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.generator_steps = int(checkpoint.get("generator_steps", 0))

    # -- scale factor and export -------------------------------------------------------------
    def compute_scale_factor(self) -> float:
        """``1 / std(z_mu)`` over ``scale_factor_batches`` batches of training slices, spread evenly
        over the split and sharded over the ranks (:func:`anatldm.models.autoencoder.latent_scale_factor`)."""
        return ae_stage.latent_scale_factor(
            self.autoencoder, self.trainer.datamodule, self.hparams.scale_factor_batches, self.global_rank,
            self.trainer.world_size, lambda totals: self.trainer.strategy.reduce(totals, reduce_op="sum"), self.device)

    def export(self, folder: str | Path) -> Path:
        """Write the bundle (weights + JSON) to ``folder``; needs :attr:`scale_factor`."""
        if self.scale_factor is None:
            raise RuntimeError("scale_factor is not measured yet; call compute_scale_factor() first")
        return ae_stage.export_bundle(folder, self.autoencoder, self.autoencoder_config, self.scale_factor,
                                      self.trainer.datamodule, self.generator_steps, self.current_epoch)

    # -- helpers -----------------------------------------------------------------------------
    def _generator_losses(self, images: Tensor, reconstruction: Tensor, z_mu: Tensor, z_sigma: Tensor,
                          adversarial: bool, masks: Tensor | None = None) -> dict[str, Tensor]:
        hp = self.hparams
        return generator_losses(images, reconstruction, z_mu, z_sigma, reconstruction_loss=hp.reconstruction_loss,
                                kl_weight=hp.kl_weight, perceptual_loss=self.perceptual_loss,
                                perceptual_weight=hp.perceptual_weight,
                                anatomy_perceptual=self.anatomy_perceptual if self.anatomy_perceptual_active else None,
                                anatomy_perceptual_weight=self.anatomy_perceptual_config.weight, masks=masks,
                                discriminator=self.discriminator if adversarial else None,
                                adversarial_loss=self.adversarial_loss, adv_weight=hp.adv_weight)

    def _discriminator_loss(self, images: Tensor, reconstruction: Tensor) -> Tensor:
        return discriminator_loss(self.discriminator, self.adversarial_loss, images, reconstruction,
                                  self.hparams.adv_weight)

    def _apply_lr_schedule(self, optimizers: list) -> float:
        """Set this batch's learning rates from the batch count (kept in checkpoints); their factor."""
        hp = self.hparams
        return ae_stage.apply_lr_schedule(optimizers, (hp.generator_lr, hp.discriminator_lr), hp.lr_schedule,
                                          self.generator_steps, int(self.trainer.estimated_stepping_batches))

    def _step(self, optimizer, loss: Tensor) -> None:
        """One update of ``optimizer``'s network from ``loss`` (gradients clipped)."""
        with self.toggled_optimizer(optimizer):
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            if self.hparams.gradient_clip_val:
                self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val,
                                    gradient_clip_algorithm="norm")
            optimizer.step()

    def _evaluate(self, batch: dict, batch_idx: int, metrics: MetricCollection, stage: str) -> None:
        images = batch["image"].float()  # (B, C, *spatial)
        reconstruction = self(images).float().clamp(-1, 1)  # (B, C, *spatial)
        batch_size = images.shape[0]
        metrics.update(reconstruction, images)
        self.log_dict(metrics, batch_size=batch_size)
        self.l1[stage].update(F.l1_loss(reconstruction, images), weight=batch_size)
        self.log(f"{stage}/l1", self.l1[stage], batch_size=batch_size)
        if batch_idx == 0:
            self._log_grid(images, reconstruction, stage)

    def _log_grid(self, images: Tensor, reconstruction: Tensor, stage: str) -> None:
        if not self.trainer.is_global_zero:
            return
        for experiment_logger in self.loggers:
            if isinstance(experiment_logger, TensorBoardLogger):
                grid = reconstruction_grid(images, reconstruction, self.hparams.num_logged_images)
                experiment_logger.experiment.add_image(f"{stage}/input_reconstruction_difference", grid,
                                                       global_step=self.trainer.global_step)
