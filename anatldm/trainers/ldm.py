"""``AnatomicalLDMTask``: latent diffusion with a register bank and an anatomy head."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.segmentation import DiceScore

from anatldm.diffusion import make_train_scheduler
from anatldm.diffusion import training as ldm_stage
from anatldm.diffusion.latents import PosteriorCache
from anatldm.diffusion.schedulers import SamplerName
from anatldm.errors import ConfigError
from anatldm.interpret.edits import load_register_bank
from anatldm.losses import AnatomyLoss, RegisterAttentionLoss, TimestepWeighting
from anatldm.models import denoiser as net
from anatldm.models.autoencoder_bundle import load_autoencoder_bundle
from anatldm.models.denoiser import AnatomicalDenoiser, RegisterMode
from anatldm.models.registers import RegisterEdit
from anatldm.pipelines import AnatomicalLDMPipeline
from anatldm.pipelines.task import PipelineSampling
from anatldm.trainers.base import AnatomyTask
from anatldm.visualize import sample_grid

__all__ = ["AnatomicalLDMTask", "load_register_bank"]

logger = logging.getLogger(__name__)


class AnatomicalLDMTask(PipelineSampling, AnatomyTask):
    # the class documentation with every hyperparameter (``Args:``, read by ``--help``) is
    # ldm_stage.LDM_TASK_DOC, next to their checks
    __doc__ = ldm_stage.LDM_TASK_DOC


    #: inference-only settings: not hyperparameters, so a sampling config can change them
    ignore = ("sampler", "num_inference_steps", "register_edits", "anatomy_edits", "registers_per_class",
              "association", "association_samples", "attention_steps")

    def __init__(
        self,
        autoencoder: str,
        channels: tuple[int, ...] = net.DEFAULT_CHANNELS, num_res_blocks: int = 2,
        attention_levels: tuple[bool, ...] = net.DEFAULT_ATTENTION_LEVELS, norm_num_groups: int = 32,
        num_head_channels: int = 32, num_registers: int = 16, register_dim: int = net.DEFAULT_REGISTER_DIM,
        register_init_std: float = net.DEFAULT_REGISTER_INIT_STD, register_levels: tuple[int, ...] = (1, 2),
        register_heads: int = 4, register_encoder: bool = False, register_mode: RegisterMode = "read",
        register_supervision: Literal["none", "attention"] = "none", register_supervision_weight: float = 0.5,
        supervised_registers_per_class: int = 2, head_levels: tuple[int, ...] = (0, 1, 2),
        head_channels: int = net.DEFAULT_HEAD_CHANNELS,
        anatomy_weight: float = 2.0, anatomy_weight_min: float = 0.5, anatomy_warmup_fraction: float = 0.2,
        anatomy_decay: Literal["cosine", "linear", "constant"] = "cosine",
        anatomy_timestep_weighting: Literal["none", "alpha_bar", "snr_cutoff"] = "none",
        anatomy_snr_cutoff: float = 0.05, anatomy_dice_batch: bool = False, num_train_timesteps: int = 1000,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear",
        beta_start: float = 0.0015, beta_end: float = 0.0195,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon", min_snr_gamma: float | None = 5.0,
        lr: float = 1e-4, weight_decay: float = 0.0,
        preview_every_n_epochs: int = 1, num_preview_samples: int = 8, grad_norm_every_n_steps: int = 50,
        max_nonfinite_steps: int = 10, cache_latents: bool = False,
        sampler: SamplerName = "ddim", num_inference_steps: int = 50,
        register_edits: list[RegisterEdit] | None = None, anatomy_edits: dict[str, float] | None = None,
        registers_per_class: int = 2, association: str | None = None, association_samples: int = 32,
        attention_steps: int = 5,
    ) -> None:
        ldm_stage.check_ldm_arguments(**locals())
        self.set_sampling(sampler, num_inference_steps, register_edits, anatomy_edits, registers_per_class,
                          association, association_samples, attention_steps)
        self.record_attention = False  # set by SampleWriter(save_attention=True) for predict
        self._predict_registers: Tensor | None = None
        super().__init__()
        self.anatomy_schedule = None  # an AnatomyWeightSchedule, built when fit starts
        self.posterior_cache = PosteriorCache() if cache_latents else None

    # -- construction ------------------------------------------------------------------------
    def configure_models(self) -> None:
        hp = self.hparams
        self.autoencoder, self.bundle = load_autoencoder_bundle(hp.autoencoder)
        self.autoencoder.requires_grad_(False)
        self.register_buffer("scale_factor", torch.tensor(float(self.bundle["scale_factor"])))
        self.class_names = list(self.bundle["class_names"])
        self.image_size = tuple(self.bundle["image_size"])
        config = self.bundle["config"]
        self.denoiser_config = ldm_stage.denoiser_config(hp, config, len(self.class_names) if hp.anatomy_weight > 0 else 0)
        try:
            self.denoiser = AnatomicalDenoiser(**self.denoiser_config)
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None
        self.scheduler_config = ldm_stage.scheduler_config(hp)
        self.train_scheduler = make_train_scheduler(**self.scheduler_config)
        self.register_groups: list[list[int]] | None = ldm_stage.supervised_register_groups(
            hp, self.denoiser.registers.num_registers if self.denoiser.registers is not None else 0, len(self.class_names))
        # the sampling half (not a submodule: the networks' weights stay under the task's keys)
        object.__setattr__(self, "_pipeline", AnatomicalLDMPipeline(
            self.autoencoder, self.denoiser, float(self.scale_factor), self.class_names, self.image_size,
            self.bundle.get("normalization", {}), self.scheduler_config, config, self.denoiser_config,
            register_groups=self.register_groups))
        self.latent_shape = self._pipeline.latent_shape
        if self.register_edits:  # fail on a bad edit now, not after a long sampling run
            self.check_edits()

    def configure_losses(self) -> None:
        hp, head = self.hparams, self.denoiser.head is not None
        self.anatomy_loss = AnatomyLoss(batch=hp.anatomy_dice_batch) if head else None
        # validation: per-slice Dice and no timestep weights, so that a batch's loss is a mean of
        # per-slice terms and the number does not depend on the batch size or the number of ranks
        self.eval_anatomy_loss = AnatomyLoss(batch=False) if head else None
        self.timestep_weighting = TimestepWeighting(hp.anatomy_timestep_weighting,
                                                    self.train_scheduler.alphas_cumprod, hp.anatomy_snr_cutoff)
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
        ldm_stage.check_cache_latents(self.hparams.cache_latents, self.trainer.datamodule)
        self.anatomy_schedule = ldm_stage.anatomy_weight_schedule(self.hparams, self.trainer.estimated_stepping_batches)

    def on_train_end(self) -> None:
        """Export the pipeline (:meth:`AnatomicalLDMPipeline.save_pretrained`) to
        ``<trainer.log_dir>/pipeline``, with the EMA weights (swapped in by the callback before this hook)."""
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "pipeline"
        if self.trainer.is_global_zero:
            self.pipeline.save_pretrained(folder, extra={"source": {"autoencoder": str(self.hparams.autoencoder),
                                                                    "global_step": int(self.global_step)}})
        self.trainer.strategy.barrier("pipeline_export")

    def _losses(self, batch: dict, generator: torch.Generator | None = None, max_timestep: int | None = None,
                seeds: Sequence[int] | None = None, per_slice: bool = False) -> tuple[dict[str, Tensor], Tensor | None]:
        """Losses of one batch (:func:`anatldm.diffusion.training.diffusion_losses`); ``per_slice``:
        every loss a plain mean of per-slice terms, as validation reports them."""
        return ldm_stage.diffusion_losses(
            batch, autoencoder=self.autoencoder, encode=self.encode, scale_factor=self.scale_factor,
            denoiser=self.denoiser, scheduler=self.train_scheduler, prediction_type=self.hparams.prediction_type,
            min_snr_gamma=self.hparams.min_snr_gamma, timestep_weighting=self.timestep_weighting,
            anatomy_loss=self.eval_anatomy_loss if per_slice else self.anatomy_loss, register_loss=self.register_loss,
            posterior_cache=self.posterior_cache if self.training else None, generator=generator,
            max_timestep=max_timestep, seeds=seeds, per_slice=per_slice)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        buffers = self.buffer_snapshot()
        losses, _ = self._losses(batch)
        batch_size = self._train_batch_size = batch["image"].shape[0]
        terms = {"diffusion_loss": losses["diffusion_loss"]}  # each as it enters the total
        if self.anatomy_loss is not None:
            weight = self.anatomy_schedule(self.global_step)
            terms["anatomy_loss"] = weight * losses["anatomy_loss"]
        if self.register_loss is not None:
            terms["register_loss"] = self.hparams.register_supervision_weight * losses["register_loss"]
        loss = torch.stack(list(terms.values())).sum()
        if self.skip_nonfinite_loss(loss, buffers):
            return None  # no backward, no optimizer update; the EMA keeps averaging finite weights
        every = self.hparams.grad_norm_every_n_steps
        if every and self.global_step % every == 0 and self.trainer.world_size == 1:
            self._log_gradient_norms(terms, batch_size)
        if self.anatomy_loss is not None:
            self.log("train/anatomy_weight", weight, batch_size=batch_size)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=batch_size)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        return loss

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
        every = self.hparams.preview_every_n_epochs
        if not every or self.trainer.sanity_checking or (self.current_epoch + 1) % every:
            return
        if not self.trainer.is_global_zero or not isinstance(self.logger, TensorBoardLogger):
            return
        grid = sample_grid(self.generate(range(self.hparams.num_preview_samples)), self.class_names)
        self.logger.experiment.add_image("samples", grid, self.global_step, dataformats="HWC")

    # -- sampling (PipelineSampling: through the pipeline) ------------------------------------
    def on_predict_start(self) -> None:
        self._predict_registers = self.edited_registers()  # once, not per batch (a source is a checkpoint read)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        samples = self.generate(batch["seed"].tolist(), registers=self._predict_registers,
                                attention_steps=self.attention_steps if self.record_attention else 0)
        return {**samples, "seed": batch["seed"]}
