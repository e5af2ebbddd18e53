"""The ``anatldm`` command: stock LightningCLI over every task and the data module.

``anatldm fit|validate|test|predict --config CONFIG.yaml`` runs a stage; YAML names classes by
short name (``class_path: AutoencoderTask``). ``anatldm inspect --config CONFIG.yaml`` prepares
the configured data set and prints per-class slice counts and writes a preview PNG.
"""

from __future__ import annotations

import logging
import sys

from lightning.pytorch.cli import LightningCLI

import anatldm.trainers  # noqa: F401  (registers every task for short class paths)
from anatldm import __version__
from anatldm.data import AnatomyDataModule
from anatldm.errors import AnatLDMInputError
from anatldm.trainers import AnatomyTask

__all__ = ["main"]

logger = logging.getLogger("anatldm")


def _fail(error: AnatLDMInputError) -> None:
    """A user's mistake: one line on stderr and exit code 2, no traceback."""
    print(f"anatldm: error: {error}", file=sys.stderr)
    raise SystemExit(2)


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
        LightningCLI(
            AnatomyTask,
            AnatomyDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"version": f"anatldm {__version__}"},
            args=args,
        )
    except AnatLDMInputError as error:
        _fail(error)


if __name__ == "__main__":
    main()
