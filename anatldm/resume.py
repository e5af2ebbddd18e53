"""Callbacks that make a training run resumable: per-step seeding and a checkpoint on SIGTERM.

Lightning restores the model, optimizers, schedulers, loop counters and callback states
(EMA included) from a checkpoint, but not the random number generators. :class:`StepSeeding`
makes the randomness of a step a function of ``(seed, epoch, batch, rank)`` instead of the
run's history, so a run resumed from an epoch-boundary checkpoint draws exactly what the
uninterrupted run drew. :class:`CheckpointOnSigterm` writes ``last.ckpt`` when a job is
pre-empted, so ``--ckpt_path last`` continues from there, and stops ``predict`` cleanly. The ``anatldm`` command adds both to
every run.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["CheckpointOnSigterm", "StepSeeding", "sigterm_checkpoint_path", "step_seed"]

logger = logging.getLogger(__name__)


def step_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """A 63-bit seed that depends only on its arguments (``batch`` -1: the epoch's start)."""
    words = np.random.SeedSequence([seed, epoch, batch + 1, rank]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)  # CPU and every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)


class StepSeeding(Callback):
    """Reseed torch, numpy and ``random`` at the start of every training epoch and batch.

    The seed is that of ``seed_everything`` (``PL_GLOBAL_SEED``), combined with the epoch, the
    batch index and the global rank; with no global seed nothing is reseeded. The shuffle order
    (drawn at the epoch's first batch), diffusion noise and timesteps, dropout, the
    autoencoder's latent sampling and augmentation in the main process all follow. Not covered:
    augmentation in persistent data-loader workers, which keep their own generators across
    epochs (``num_workers: 0`` or ``augment: false`` make a resumed run bit-identical).
    """

    def __init__(self) -> None:
        self.seed: int | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        value = os.environ.get("PL_GLOBAL_SEED")
        self.seed = int(value) if value is not None else None
        if self.seed is None:
            logger.info("no global seed: training randomness is not reseeded per step (resumes are not exact)")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.seed is not None:
            _seed_all(step_seed(self.seed, trainer.current_epoch, -1, trainer.global_rank))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.seed is not None:
            _seed_all(step_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))


def sigterm_checkpoint_path(trainer) -> Path:
    """Where a pre-empted run saves: ``last.ckpt`` of the first ``ModelCheckpoint`` (found by
    ``--ckpt_path last``), else ``<default_root_dir>/checkpoints/last.ckpt``."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class CheckpointOnSigterm(Callback):
    """Save ``last.ckpt`` when ``anatldm fit`` is stopped by SIGTERM (pre-emption).

    Lightning's signal handler turns SIGTERM into an exception at the end of the running
    training batch; this callback then writes a full checkpoint (weights, optimizers, EMA,
    loop position) before the process exits. It also stops ``predict`` at the end of the
    running batch, whose files are then complete (Lightning's predict loop ignores SIGTERM).
    """

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if trainer.received_sigterm:
            raise SIGTERMException

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        path = sigterm_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        logger.warning("SIGTERM: saved %s at step %d; resume with --ckpt_path last", path, trainer.global_step)
