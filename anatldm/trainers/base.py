"""Base class of every anatldm LightningModule (torchgeo's ``BaseTask`` pattern)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule

__all__ = ["AnatomyTask"]


class AnatomyTask(LightningModule):
    """Thin LightningModule base: saves hyperparameters, then builds networks and losses.

    Subclasses take typed keyword arguments (read back from ``self.hparams``) and override
    :meth:`configure_models` and :meth:`configure_losses`; networks themselves are plain
    ``nn.Module`` s from :mod:`anatldm.models` or MONAI.
    """

    #: constructor arguments that are not hyperparameters (e.g. objects passed in Python)
    ignore: tuple[str, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(self.ignore))
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def check_inputs(self, datamodule: LightningDataModule | None) -> None:
        """Check that this task fits its data and the files of earlier stages.

        The ``anatldm`` command calls it before Lightning writes a run folder, so a mistake
        leaves nothing behind; tasks call it again from their own hooks for the Python API.
        Raises :class:`~anatldm.errors.ConfigError` naming the key.
        """

    def configure_models(self) -> None:
        """Build the networks from ``self.hparams``."""

    def configure_losses(self) -> None:
        """Build the loss functions from ``self.hparams``."""

    def configure_metrics(self) -> None:
        """Build the metric collections from ``self.hparams``."""
