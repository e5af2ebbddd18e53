"""Checkpoint files that are never half-written and never unpickle arbitrary objects.

:class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the target folder,
flushes it to disk and renames it into place, so a crash or pre-emption during a save leaves
the previous checkpoint intact; it loads with ``torch.load(weights_only=True)``.
:class:`AtomicCheckpointing` makes it the default of every ``anatldm`` run (the CLI adds it),
unless the user configured a checkpoint plugin of their own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback

from anatldm.atomic import write_atomic

__all__ = ["AtomicCheckpointIO", "AtomicCheckpointing", "FractionCheckpoint"]

logger = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints written atomically (:func:`anatldm.atomic.write_atomic`: temporary file
    beside the target, fsync, ``os.replace``), loaded weights-only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_atomic(path, lambda partial: torch.save(checkpoint, partial))

    def load_checkpoint(self, path: str | os.PathLike, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=True if weights_only is None else weights_only)


class AtomicCheckpointing(Callback):
    """Install :class:`AtomicCheckpointIO` unless the run uses a checkpoint plugin of its own."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default, not a user's choice
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()


class FractionCheckpoint(Callback):
    """Save ``<dirpath>/fraction-<f>.ckpt`` when training reaches each fraction ``f`` of its steps.

    The generator negative control of the evaluation (an early checkpoint must score worse than
    the final one) and the check whether the gap between two arms grows with training need
    checkpoints at fixed fractions of the run; with ``EMAWeightAveraging`` they hold the EMA
    weights, like every checkpoint. Step ``round(f * total)`` counts optimizer steps
    (``trainer.estimated_stepping_batches``).

    Args:
        fractions: fractions of the run in (0, 1), e.g. ``[0.1, 0.5]``.
        dirpath: folder of the checkpoints.
    """

    def __init__(self, fractions: list[float], dirpath: str) -> None:
        bad = [f for f in fractions if not 0.0 < f < 1.0]
        if bad or not fractions:
            raise ValueError(f"fractions must be a non-empty list of numbers in (0, 1), got {fractions}")
        self.fractions, self.dirpath = sorted(float(f) for f in fractions), Path(dirpath)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        total = max(1, int(trainer.estimated_stepping_batches))
        for fraction in self.fractions:
            path = self.dirpath / f"fraction-{fraction:.2f}.ckpt"
            if trainer.global_step == max(1, round(fraction * total)) and not path.exists():
                trainer.save_checkpoint(path)  # a resumed run that passed this step keeps the file it wrote
