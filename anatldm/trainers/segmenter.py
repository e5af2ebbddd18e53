"""``SegmenterTask``: the downstream segmenter that judges generated anatomy."""

from __future__ import annotations

import logging
from typing import Literal

import torch
from monai.networks.nets import UNet
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.segmentation import DiceScore

from anatldm.errors import ConfigError
from anatldm.evaluation.controls import anatomy_breaking_augmentation
from anatldm.losses import AnatomyLoss
from anatldm.trainers.base import AnatomyTask

__all__ = ["SegmenterTask"]

logger = logging.getLogger(__name__)


class SegmenterTask(AnatomyTask):
    """A MONAI ``UNet`` trained on real slices only; the judge of generated anatomy.

    Its Dice on real test slices is the ceiling of every anatomical-accuracy number, and its
    globally pooled bottleneck features are the domain encoder of the FID/KID in the
    evaluation (see docs/method.md, 'The judge'). UNet of Ronneberger et al. (MICCAI 2015) with residual
    units (Kerfoot et al., 2018), as implemented in MONAI.

    Args:
        num_classes: classes including background; must match the data.
        spatial_dims: 2 for slices, 3 for volumes.
        channels: UNet channels per level.
        strides: downsampling strides (one fewer than ``channels``).
        num_res_units: residual units per block.
        dropout: dropout probability.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``"cosine"`` decays the learning rate to 0 over the run (per step), or
            ``"constant"``.
        dice_batch: Dice term over the whole batch (``DiceCELoss(batch=True)``): classes absent
            from a slice (lung below the diaphragm, spleen at low levels) no longer pull every
            slice's Dice towards a constant.
        flip_probability: per-slice probability of a left-right flip (image and mask) in training.
        splice_probability: per-slice probability of a splice with another training slice (rows
            below a random seam). Both take away the judge's anatomical prior, so that it labels
            what an image shows, wrong anatomy included (see
            :func:`anatldm.evaluation.controls.anatomy_breaking_augmentation`); a judge of
            anatomical plausibility needs them, a segmenter for deployment does not.
        max_nonfinite_steps: training stops with an error after this many steps in a row with a
            non-finite loss (each one is skipped: no update, BatchNorm statistics restored, a
            warning, ``train/nonfinite_steps``).
    """

    def __init__(
        self,
        num_classes: int,
        spatial_dims: int = 2,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        strides: tuple[int, ...] = (2, 2, 2),
        num_res_units: int = 2,
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        lr_schedule: Literal["constant", "cosine"] = "cosine",
        dice_batch: bool = True,
        flip_probability: float = 0.0,
        splice_probability: float = 0.0,
        max_nonfinite_steps: int = 10,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"model.num_classes must be at least 2 (background included), got {num_classes}")
        if not lr > 0:
            raise ConfigError(f"model.lr must be positive, got {lr}")
        if weight_decay < 0 or not 0 <= dropout < 1:
            raise ConfigError(f"model.weight_decay must be >= 0 and model.dropout in [0, 1), got {weight_decay}, "
                              f"{dropout}")
        if len(strides) != len(channels) - 1:
            raise ConfigError(f"model.strides needs {len(channels) - 1} entries for {len(channels)} channels, "
                              f"got {len(strides)}")
        if not (0 <= flip_probability <= 1 and 0 <= splice_probability <= 1):
            raise ConfigError(f"model.flip_probability and model.splice_probability must lie in [0, 1], got "
                              f"{flip_probability}, {splice_probability}")
        if max_nonfinite_steps < 1:
            raise ConfigError(f"model.max_nonfinite_steps must be at least 1, got {max_nonfinite_steps}")
        super().__init__()

    def configure_models(self) -> None:
        hp = self.hparams
        self.network = UNet(spatial_dims=hp.spatial_dims, in_channels=1, out_channels=hp.num_classes,
                            channels=hp.channels, strides=hp.strides, num_res_units=hp.num_res_units,
                            dropout=hp.dropout, norm="batch")

    def configure_losses(self) -> None:
        self.loss = AnatomyLoss(batch=self.hparams.dice_batch)
        # validation and test: per-slice Dice, so the logged loss does not depend on the batch size
        # or the number of processes (a batch Dice does)
        self.eval_loss = AnatomyLoss(batch=False)

    def configure_metrics(self) -> None:
        dice = MetricCollection({"dice": DiceScore(num_classes=self.hparams.num_classes, include_background=False,
                                                   average="none", input_format="index")})
        self.val_metrics = dice.clone(prefix="val/")
        self.test_metrics = dice.clone(prefix="test/")
        # mean over all slices of all ranks (Lightning's sync_dist would average per-rank means)
        self.losses = torch.nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay, **self.adam_options(self.network.parameters()))
        if self.hparams.lr_schedule == "constant":
            return optimizer
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @property
    def feature_channels(self) -> int:
        """Channels of the bottleneck features used for FID/KID."""
        return self.hparams.channels[-1]

    def check_inputs(self, datamodule) -> None:
        names = getattr(datamodule, "class_names", None)
        if names is not None and len(names) != self.hparams.num_classes:
            raise ConfigError(f"model.num_classes is {self.hparams.num_classes} but the data has "
                              f"{len(names)} classes {names}")

    def setup(self, stage: str) -> None:
        self.check_inputs(self.trainer.datamodule)
        names = getattr(self.trainer.datamodule, "class_names", None) if self.trainer.datamodule else None
        self.class_names = list(names) if names is not None else None

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, num_classes, *S)`` of images ``(B, 1, *S)`` in [-1, 1]."""
        return self.network(images)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        buffers = self.buffer_snapshot()
        images, masks = batch["image"], batch["mask"]
        if self.hparams.flip_probability > 0 or self.hparams.splice_probability > 0:
            images, masks = anatomy_breaking_augmentation(images, masks, self.hparams.flip_probability,
                                                          self.hparams.splice_probability)
        loss = self.loss(self(images), masks)
        if self.skip_nonfinite_loss(loss, buffers):
            return None  # no backward, no optimizer update
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_dice(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_dice(self.test_metrics, "test")

    def _evaluate(self, batch: dict, metrics: MetricCollection, stage: str) -> None:
        logits = self(batch["image"])  # (B, C, H, W)
        batch_size = batch["image"].shape[0]
        self.losses[stage].update(self.eval_loss(logits, batch["mask"]).detach(), weight=batch_size)
        self.log(f"{stage}/loss", self.losses[stage], batch_size=batch_size)
        metrics.update(logits.argmax(1), batch["mask"])

    def _log_dice(self, metrics: MetricCollection, stage: str) -> None:
        per_class = metrics.compute()[f"{stage}/dice"]  # (C - 1,)
        metrics.reset()
        names = getattr(self, "class_names", None) or [f"class{c}" for c in range(self.hparams.num_classes)]
        values = {f"{stage}/dice_{name}": per_class[c - 1] for c, name in enumerate(names) if c > 0}
        values[f"{stage}/dice_mean"] = per_class.mean()
        self.log_dict(values)
