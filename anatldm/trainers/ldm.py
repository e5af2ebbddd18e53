"""``AnatomicalLDMTask``: latent diffusion with a register bank and an anatomy head."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.segmentation import DiceScore

from anatldm.atomic import write_atomic
from anatldm.config import as_config
from anatldm.diffusion import make_train_scheduler
from anatldm.diffusion import training as ldm_stage
from anatldm.diffusion.head_refinement import refine_head
from anatldm.diffusion.latents import PosteriorCache
from anatldm.diffusion.sampling import SamplingConfig
from anatldm.diffusion.schedulers import NoiseScheduleConfig
from anatldm.diffusion.training import TrainingOptions
from anatldm.errors import ConfigError
from anatldm.interpret.edits import load_register_bank
from anatldm.losses import (
    AnatomyGradientBalance,
    AnatomyLoss,
    AnatomyLossConfig,
    AnatomyWeightSchedule,
    RegisterAttentionLoss,
    TimestepWeighting,
)
from anatldm.models.autoencoder_bundle import downsampling_factor, load_autoencoder_bundle
from anatldm.models.decoder_features import decoder_activation_channels
from anatldm.models.denoiser import AnatomicalDenoiser, DenoiserConfig
from anatldm.pipelines import AnatomicalLDMPipeline, AnatomicalLDMPipelineOutput
from anatldm.trainers.base import AnatomyTask
from anatldm.trainers.flat_layout import is_flat_layout, nest_flat_hyperparameters
from anatldm.visualize import sample_grid

__all__ = ["AnatomicalLDMTask", "load_register_bank"]

logger = logging.getLogger(__name__)


class AnatomicalLDMTask(AnatomyTask):
    """Anatomical latent diffusion model (docs/method.md, 'Model' and 'Training objective').

    A frozen KL autoencoder (an export bundle of :class:`AutoencoderTask`) maps slices to
    latents scaled by its ``scale_factor``. :class:`~anatldm.models.denoiser.AnatomicalDenoiser`
    predicts the noise while cross-attending to a learnable register bank, and its anatomy head
    predicts the clean slice's label map from the noisy latent. Loss::

        L = L_diffusion + anatomy_loss.weight(step) * DiceCE_w(head logits, mask)
            [+ registers.supervision_weight * L_attention(register attention, mask)]

    with the progressive :class:`~anatldm.losses.AnatomyWeightSchedule`, ``w`` the per-sample
    timestep weights of :class:`~anatldm.losses.TimestepWeighting` and ``L_attention`` the
    optional :class:`~anatldm.losses.RegisterAttentionLoss` (docs/method.md).
    ``denoiser.registers.num_registers: 0`` and ``anatomy_loss.weight: 0`` give the standard LDM
    baseline, without a single register or head parameter. EMA weights come from the
    ``EMAWeightAveraging`` callback (in ``anatldm.callbacks``; see the configs): they are swapped
    in for validation and written to checkpoints.

    Sampling needs no mask: every sample comes out as an (image, mask) pair, the mask read from
    one more head call on the final (clean) latents at t = 0. :attr:`pipeline` (an
    :class:`~anatldm.pipelines.AnatomicalLDMPipeline` sharing this task's modules) samples;
    ``predict_step`` returns its output unchanged.

    A checkpoint of the previous flat layout (``num_registers``, ``anatomy_weight``, ... as
    arguments) loads as it did (:mod:`anatldm.trainers.flat_layout`).

    Args:
        autoencoder: path of the autoencoder export bundle (folder or ``autoencoder.json``).
        denoiser: the UNet, its register bank (``denoiser.registers``) and its anatomy head
            (``denoiser.head``); :class:`~anatldm.models.denoiser.DenoiserConfig`.
        anatomy_loss: the anatomy loss and its progressive weight; ``weight: 0`` builds no head;
            :class:`~anatldm.losses.AnatomyLossConfig`.
        noise_schedule: the forward process and the diffusion loss weighting;
            :class:`~anatldm.diffusion.schedulers.NoiseScheduleConfig`.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        training: previews, gradient-norm logging, non-finite-step limit, latent cache;
            :class:`~anatldm.diffusion.training.TrainingOptions`.
        sampling: sampler, steps, register edits and attention recording of previews and
            ``predict``; :class:`~anatldm.diffusion.sampling.SamplingConfig`. Inference-only: not
            saved as hyperparameters, so a sampling config changes it while the architecture
            comes from the checkpoint.
    """

    #: inference-only settings: not hyperparameters, so a sampling config can change them
    ignore = ("sampling",)

    def __init__(
        self,
        autoencoder: str,
        denoiser: DenoiserConfig = DenoiserConfig(),
        anatomy_loss: AnatomyLossConfig = AnatomyLossConfig(),
        noise_schedule: NoiseScheduleConfig = NoiseScheduleConfig(),
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        training: TrainingOptions = TrainingOptions(),
        sampling: SamplingConfig = SamplingConfig(),
    ) -> None:
        self.denoiser_config = as_config(DenoiserConfig, denoiser)
        self.anatomy_loss_config = as_config(AnatomyLossConfig, anatomy_loss)
        self.noise_schedule = as_config(NoiseScheduleConfig, noise_schedule)
        self.training_options = as_config(TrainingOptions, training)
        self._initial_sampling = as_config(SamplingConfig, sampling)  # then the pipeline's: task.pipeline.sampling
        if not lr > 0:
            raise ConfigError(f"model.lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ConfigError(f"model.weight_decay must be >= 0, got {weight_decay}")
        registers = self.denoiser_config.registers
        if registers.supervision != "none" and not self.anatomy_loss_config.enabled:
            raise ConfigError(f"{registers.key}.supervision needs the anatomy head's classes "
                              f"(model.anatomy_loss.weight > 0, got {self.anatomy_loss_config.weight})")
        if self._initial_sampling.guidance.kind == "registers" and not registers.num_registers:
            raise ConfigError(f"{SamplingConfig.key}.guidance.kind: register guidance needs a register bank, but "
                              f"{registers.key}.num_registers is 0")
        if self.anatomy_loss_config.max_gradient_ratio is not None and not self.anatomy_loss_config.enabled:
            raise ConfigError(f"{AnatomyLossConfig.key}.max_gradient_ratio needs the anatomy loss "
                              f"({AnatomyLossConfig.key}.weight > 0, got {self.anatomy_loss_config.weight})")
        if registers.anatomy_conditioning and not self.anatomy_loss_config.enabled:
            raise ConfigError(f"{registers.key}.anatomy_conditioning needs the anatomy head "
                              f"(model.anatomy_loss.weight > 0, got {self.anatomy_loss_config.weight})")
        if self._initial_sampling.edits and not registers.num_registers:
            edited = "register_edits" if self._initial_sampling.register_edits else "anatomy_edits"
            raise ConfigError(f"{SamplingConfig.key}.{edited} needs a register bank, but "
                              f"{registers.key}.num_registers is 0")
        super().__init__()
        self.anatomy_schedule: AnatomyWeightSchedule | None = None  # built when fit starts
        self.posterior_cache = PosteriorCache() if self.training_options.cache_latents else None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             **kwargs: Any) -> AnatomicalLDMTask:
        """Lightning's ``load_from_checkpoint``; a checkpoint of the flat layout has its
        hyperparameters nested first (:func:`~anatldm.trainers.flat_layout.nest_flat_hyperparameters`)."""
        hyperparameters = torch.load(checkpoint_path, map_location="cpu", weights_only=True,
                                     mmap=True).get("hyper_parameters") or {}
        if is_flat_layout(hyperparameters):
            nested = nest_flat_hyperparameters(hyperparameters)
            kwargs = {**{key: value for key, value in nested.items() if not key.startswith("_")}, **kwargs}
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, **kwargs)

    # -- construction ------------------------------------------------------------------------
    def configure_models(self) -> None:
        self.autoencoder, self.bundle = load_autoencoder_bundle(self.hparams.autoencoder)
        self.autoencoder.requires_grad_(False)
        self.register_buffer("scale_factor", torch.tensor(float(self.bundle["scale_factor"])))
        self.class_names = list(self.bundle["class_names"])
        self.image_size = tuple(self.bundle["image_size"])
        config = self.bundle["config"]
        num_classes = len(self.class_names) if self.anatomy_loss_config.enabled else 0
        downsampling = downsampling_factor(config)
        decoder_channels = (decoder_activation_channels(self.autoencoder, (
            config["latent_channels"], *(size // downsampling for size in self.image_size)))
            if self.denoiser_config.head.image_features else ())
        denoiser_kwargs = self.denoiser_config.denoiser_kwargs(config.get("spatial_dims", 2), config["latent_channels"],
                                                               num_classes, downsampling, decoder_channels)
        try:
            self.denoiser = AnatomicalDenoiser(**denoiser_kwargs)
        except ValueError as err:
            raise ConfigError(f"model.denoiser: {err}") from None
        self.train_scheduler = make_train_scheduler(**self.noise_schedule.scheduler_kwargs())
        self.register_groups: list[list[int]] | None = ldm_stage.supervised_register_groups(
            self.denoiser_config.registers, len(self.class_names))
        # the sampling half (not a submodule: the networks' weights stay under the task's keys)
        object.__setattr__(self, "pipeline", AnatomicalLDMPipeline(
            self.autoencoder, self.denoiser, float(self.scale_factor), self.class_names, self.image_size,
            self.bundle.get("normalization", {}), self.noise_schedule.scheduler_kwargs(), config, denoiser_kwargs,
            register_groups=self.register_groups, sampling=self._initial_sampling))
        # the pipeline decodes with the scale factor of the weights loaded (a checkpoint's, not the bundle's)
        self.register_load_state_dict_post_hook(
            lambda module, incompatible: setattr(module.pipeline, "scale_factor", float(module.scale_factor)))
        self.latent_shape = self.pipeline.latent_shape
        if self._initial_sampling.edits:  # fail on a bad edit now, not after a long sampling run
            self.pipeline.check_edits()

    def configure_losses(self) -> None:
        loss, head = self.anatomy_loss_config, self.denoiser.head is not None
        self.anatomy_loss = AnatomyLoss(batch=loss.dice_batch) if head else None
        # validation: per-slice Dice and no timestep weights, so that a batch's loss is a mean of
        # per-slice terms and the number does not depend on the batch size or the number of ranks
        self.eval_anatomy_loss = AnatomyLoss(batch=False) if head else None
        self.timestep_weighting = TimestepWeighting(loss.timestep_weighting, self.train_scheduler.alphas_cumprod,
                                                    loss.snr_cutoff)
        self.gradient_balance = AnatomyGradientBalance.from_config(loss) if head else None
        self.register_loss = (RegisterAttentionLoss(self.register_groups, self.denoiser.registers.num_registers)
                              if self.register_groups is not None else None)

    def configure_metrics(self) -> None:
        head = self.denoiser.head is not None
        names = ["diffusion_loss"] + (["anatomy_loss"] if head else []) + \
            (["register_loss"] if self.register_groups is not None else [])
        self.val_losses = torch.nn.ModuleDict({name: MeanMetric() for name in names})
        self.val_dice = DiceScore(num_classes=len(self.class_names), include_background=False, average="macro",
                                  input_format="index") if head else None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.denoiser.parameters(), lr=self.hparams.lr,
                                 weight_decay=self.hparams.weight_decay, **self.adam_options(self.denoiser.parameters()))

    def train(self, mode: bool = True) -> AnatomicalLDMTask:
        super().train(mode)
        self.autoencoder.eval()  # frozen, always
        return self

    # -- training ----------------------------------------------------------------------------
    def check_inputs(self, datamodule) -> None:
        """Training data must have the bundle's classes and image size (not needed to sample)."""
        ldm_stage.check_training_data(datamodule, self.class_names, self.image_size, self.hparams.autoencoder)

    def on_fit_start(self) -> None:
        self.check_inputs(self.trainer.datamodule)
        ldm_stage.check_cache_latents(self.training_options.cache_latents, self.trainer.datamodule)
        self.anatomy_schedule = AnatomyWeightSchedule.from_config(self.anatomy_loss_config,
                                                                  self.trainer.estimated_stepping_batches)

    def on_train_end(self) -> None:
        """Refine the head at t = 0 (``denoiser.head.refine_steps``; rank 0, written into each
        ``last.ckpt``), then export the pipeline (:meth:`AnatomicalLDMPipeline.save_pretrained`) to
        ``<trainer.log_dir>/pipeline``, with the EMA weights (swapped in by the callback before this hook)."""
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "pipeline"
        head = self.denoiser_config.head
        if self.trainer.is_global_zero and self.denoiser.head is not None and head.refine_steps:
            refine_head(self.denoiser, self._clean_training_batches(), self.anatomy_loss,
                        1 if self.trainer.fast_dev_run else head.refine_steps, head.refine_lr,
                        self.pipeline.image_feature_reader)
            self._write_head_into_last_checkpoints()
        if self.trainer.is_global_zero:
            self.pipeline.save_pretrained(folder, extra={"source": {"autoencoder": str(self.hparams.autoencoder),
                                                                    "global_step": int(self.global_step)}})
        self.trainer.strategy.barrier("pipeline_export")

    def _clean_training_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """``(latents, masks)`` of the training data, epoch after epoch: posterior samples, scaled, in
        the weights' dtype (moments cached under bf16-mixed autocast are bf16; the refinement runs after it)."""
        dtype = next(self.denoiser.parameters()).dtype
        while True:
            for batch in self.trainer.train_dataloader:
                batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                z_mu, z_sigma = ldm_stage.posterior_moments(batch, self.autoencoder, self.posterior_cache)
                yield ((z_mu + z_sigma * torch.randn_like(z_mu)) * self.scale_factor).to(dtype), batch["mask"]

    def _write_head_into_last_checkpoints(self) -> None:
        """The refined head into every ``last.ckpt`` of the run (their weights and, for resuming,
        the live weights the averaging callback keeps beside them), each rewritten atomically."""
        head = {f"denoiser.head.{name}": value.detach().cpu() for name, value in self.denoiser.head.state_dict().items()}
        for callback in self.trainer.checkpoint_callbacks:
            path = Path(getattr(callback, "last_model_path", "") or "")
            if not path.is_file():
                continue
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            for key in ("state_dict", "current_model_state"):
                if key in checkpoint:
                    checkpoint[key].update(head)
            write_atomic(path, lambda partial, checkpoint=checkpoint: torch.save(checkpoint, partial))

    def _losses(self, batch: dict, generator: torch.Generator | None = None, max_timestep: int | None = None,
                seeds: Sequence[int] | None = None, per_slice: bool = False) -> tuple[dict[str, Tensor], Tensor | None]:
        """Losses of one batch (:func:`anatldm.diffusion.training.diffusion_losses`); ``per_slice``:
        every loss a plain mean of per-slice terms, as validation reports them."""
        return ldm_stage.diffusion_losses(
            batch, autoencoder=self.autoencoder, scale_factor=self.scale_factor, denoiser=self.denoiser,
            scheduler=self.train_scheduler, noise_schedule=self.noise_schedule, timestep_weighting=self.timestep_weighting,
            anatomy_loss=self.eval_anatomy_loss if per_slice else self.anatomy_loss, register_loss=self.register_loss,
            posterior_cache=self.posterior_cache if self.training else None, generator=generator,
            max_timestep=max_timestep, seeds=seeds, per_slice=per_slice,
            clean_fraction=self.denoiser_config.head.clean_fraction if self.training and self.denoiser.head else 0.0,
            self_condition=self._self_condition(),
            image_features=self.pipeline.image_feature_reader)

    def _self_condition(self) -> bool:
        """Anatomy-conditioned registers: in training, a batch is self-conditioned with probability
        ``self_condition_rate`` (the training RNG); validation always is (deterministic, as sampling
        after its first step)."""
        registers = self.denoiser_config.registers
        if not registers.anatomy_conditioning:
            return False
        return bool(torch.rand(()) < registers.self_condition_rate) if self.training else True

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        buffers = self.buffer_snapshot()
        losses, _ = self._losses(batch)
        batch_size = self._train_batch_size = batch["image"].shape[0]
        terms = {"diffusion_loss": losses["diffusion_loss"]}  # each as it enters the total
        if self.anatomy_loss is not None:
            weight = self.anatomy_schedule(self.global_step)
            terms["anatomy_loss"] = weight * losses["anatomy_loss"]
            if self.gradient_balance is not None:
                terms["anatomy_loss"] = self._balanced_anatomy_term(terms, batch_size)
        if self.register_loss is not None:
            terms["register_loss"] = self.denoiser_config.registers.supervision_weight * losses["register_loss"]
        loss = torch.stack(list(terms.values())).sum()
        if self.skip_nonfinite_loss(loss, buffers):
            return None  # no backward, no optimizer update; the EMA keeps averaging finite weights
        every = self.training_options.grad_norm_every_n_steps
        if every and self.global_step % every == 0 and self.trainer.world_size == 1:
            self._log_gradient_norms(terms, batch_size)
        if self.anatomy_loss is not None:
            self.log("train/anatomy_weight", weight, batch_size=batch_size)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=batch_size)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        return loss

    def _balanced_anatomy_term(self, terms: dict[str, Tensor], batch_size: int) -> Tensor:
        """The anatomy term times the running scale of :class:`~anatldm.losses.AnatomyGradientBalance`,
        re-measured on its steps (two extra backward passes; under DDP each rank's norms are
        averaged so every rank applies the same scale); logs ``train/anatomy_gradient_scale`` and,
        when measured, ``train/anatomy_gradient_ratio`` (of the term as it enters the loss)."""
        balance, term = self.gradient_balance, terms["anatomy_loss"]
        if balance.due(self.global_step) and torch.isfinite(term) and torch.isfinite(terms["diffusion_loss"]):
            params = [p for p in self.denoiser.parameters() if p.requires_grad]
            norms = torch.stack([ldm_stage.gradient_norm(term, params),
                                 ldm_stage.gradient_norm(terms["diffusion_loss"], params)])
            if self.trainer.world_size > 1:
                norms = self.trainer.strategy.reduce(norms, reduce_op="mean")
            _, ratio = balance.update(float(norms[0]), float(norms[1]))
            self.log("train/anatomy_gradient_ratio", ratio, batch_size=batch_size)
        scale = 1.0 if balance.scale is None else balance.scale
        self.log("train/anatomy_gradient_scale", scale, batch_size=batch_size)
        return term * scale

    def _log_gradient_norms(self, terms: dict[str, Tensor], batch_size: int) -> None:
        """``train/grad_norm_<loss>``: the L2 norm of each weighted loss term's gradient over the
        denoiser's parameters (the balance of the terms before they are summed and clipped)."""
        params = [p for p in self.denoiser.parameters() if p.requires_grad]
        for name, term in terms.items():
            self.log(f"train/grad_norm_{name}", ldm_stage.gradient_norm(term, params), batch_size=batch_size)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The total gradient norm before clipping, and whether ``gradient_clip_val`` clipped it
        (``train/clipped``, averaged per epoch: the share of clipped steps)."""
        grads = [p.grad for p in self.denoiser.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([g.detach().float().norm() for g in grads]))
        batch_size = getattr(self, "_train_batch_size", 1)  # this step's, set by training_step
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=batch_size)
        clip = self.trainer.gradient_clip_val
        if clip:
            self.log("train/clipped", (norm > clip).float(), on_step=False, on_epoch=True, batch_size=batch_size)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Fixed-noise losses over all timesteps (anatomy: per-slice Dice + CE, unweighted); head
        Dice at low noise (t < 200).

        Each slice's noise is seeded by the slice itself (subject, position), and the losses are
        averaged by metrics that sum over all ranks: the numbers do not depend on the batch size
        or the number of processes.
        """
        batch_size, seeds = batch["image"].shape[0], ldm_stage.slice_seeds(batch)
        losses, _ = self._losses(batch, seeds=seeds, per_slice=True)
        for name, value in losses.items():
            self.val_losses[name].update(value.detach(), weight=batch_size)
            self.log(f"val/{name}", self.val_losses[name], batch_size=batch_size)
        if self.val_dice is not None:
            _, logits = self._losses(batch, seeds=seeds, max_timestep=200)
            self.val_dice.update(logits.argmax(1), batch["mask"])
            self.log("val/anatomy_dice", self.val_dice, batch_size=batch_size)

    def on_validation_epoch_end(self) -> None:
        every = self.training_options.preview_every_n_epochs
        if not every or self.trainer.sanity_checking or (self.current_epoch + 1) % every:
            return
        if not self.trainer.is_global_zero or not isinstance(self.logger, TensorBoardLogger):
            return
        preview = self.pipeline.generate(range(self.training_options.num_preview_samples), return_attention=False)
        grid = sample_grid({"image": preview.images, "mask": preview.masks}, self.class_names)
        self.logger.experiment.add_image("samples", grid, self.global_step, dataformats="HWC")

    # -- sampling (through the pipeline) ----------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int) -> AnatomicalLDMPipelineOutput:
        """One (image, mask) pair per seed of ``batch["seed"]``, as the pipeline returns them."""
        return self.pipeline.generate(batch["seed"].tolist())

    def nonfinite_limit(self) -> tuple[int, str]:
        return self.training_options.max_nonfinite_steps, f"{TrainingOptions.key}.max_nonfinite_steps"
