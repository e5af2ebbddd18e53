"""The ``anatldm`` command: stock LightningCLI over every task and the data module.

``anatldm fit|validate|test|predict --config CONFIG.yaml`` runs a stage; YAML names classes by
short name (``class_path: AutoencoderTask``). ``anatldm inspect --config CONFIG.yaml`` prepares
the configured data set and prints per-class slice counts and writes a preview PNG.
"""

from __future__ import annotations

import logging
import sys

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

import anatldm.callbacks  # noqa: F401  (short class paths for callbacks, data modules and tasks)
import anatldm.data  # noqa: F401
import anatldm.trainers  # noqa: F401
from anatldm import __version__
from anatldm.errors import AnatLDMInputError
from anatldm.trainers import AnatomyTask

__all__ = ["main"]

logger = logging.getLogger("anatldm")


def _fail(error: AnatLDMInputError) -> None:
    """A user's mistake: one line on stderr and exit code 2, no traceback."""
    print(f"anatldm: error: {error}", file=sys.stderr)
    raise SystemExit(2)


SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _lightning_cli(args: list[str]) -> LightningCLI:
    return LightningCLI(
        AnatomyTask,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"version": f"anatldm {__version__}"},
        args=args,
    )


def _help_with_data_options(subcommand: str) -> None:
    """``anatldm SUBCOMMAND --help``, followed by the options of ``AnatomyDataModule``.

    Subclass mode lists a data module only by name (its options sit behind ``--data.help``);
    the data options are what users look for first, so they are shown as well.
    """
    for args in ([subcommand, "--help"], [subcommand, "--data.help", "AnatomyDataModule"]):
        try:
            _lightning_cli(args)
        except SystemExit as done:
            if done.code:
                raise


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``anatldm`` command."""
    args = list(sys.argv[1:] if args is None else args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args[:1] == ["inspect"]:
            from anatldm.inspect import inspect_main

            print(inspect_main(args[1:]))
            return
        if len(args) == 2 and args[0] in SUBCOMMANDS and args[1] in ("-h", "--help"):
            _help_with_data_options(args[0])
            raise SystemExit(0)
        _lightning_cli(args)
    except AnatLDMInputError as error:
        _fail(error)


if __name__ == "__main__":
    main()
