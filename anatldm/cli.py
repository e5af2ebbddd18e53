"""The ``anatldm`` command: stock LightningCLI over every task and the data module.

``anatldm fit|validate|test|predict --config CONFIG.yaml`` runs a stage; YAML names classes by
short name (``class_path: AutoencoderTask``). ``anatldm inspect --config CONFIG.yaml`` prepares
the configured data set and prints per-class slice counts and writes a preview PNG.
"""

from __future__ import annotations

import logging
import sys
import warnings
from argparse import ArgumentError

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

import anatldm.callbacks  # noqa: F401  (short class paths for callbacks, data modules and tasks)
import anatldm.data  # noqa: F401
import anatldm.trainers  # noqa: F401
from anatldm import __version__
from anatldm.checkpointing import AtomicCheckpointing
from anatldm.errors import AnatLDMInputError
from anatldm.resume import CheckpointOnSigterm, StepSeeding
from anatldm.trainers import AnatomyTask

__all__ = ["main"]

logger = logging.getLogger("anatldm")


def _fail(message: object) -> None:
    """A user's mistake: one line on stderr and exit code 2, no traceback."""
    print(f"anatldm: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _summary(error: ArgumentError) -> str:
    """One line from jsonargparse's nested report: the full key, the innermost problem, the value."""
    lines = [line.strip(" -") for line in str(error).splitlines() if line.strip(" -")]
    key_lines = [n for n, line in enumerate(lines) if line.startswith("Parser key")]
    if not key_lines:
        return " ".join(lines)
    key = ".".join(lines[n].split('"')[1] for n in key_lines)
    rest_of_key_line = lines[key_lines[-1]].split('":', 1)[1].strip()
    inner = [rest_of_key_line, *lines[key_lines[-1] + 1:]]
    skipped = ("Does not validate", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
               "Problem with given class_path")
    problem = next((line for line in lines if line.startswith("Option '")), None) or \
        next((line for line in inner if line and not line.startswith(skipped)), "invalid value")
    if problem.startswith("Option '"):
        return f"{key}: {problem}"
    given = next((line.split(":", 1)[1].strip() for line in inner if line.startswith("Given value:")), None)
    return f"{key}: {problem}" + (f" (given: {given})" if given is not None else "")


def _input_error(error: BaseException) -> AnatLDMInputError | None:
    """The user-input error behind ``error``: jsonargparse wraps errors raised while it
    instantiates classes from a config."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, AnatLDMInputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: exit status of a run stopped by SIGTERM (128 + 15, as a shell reports it): never mistaken for success
SIGTERM_EXIT_CODE = 143


def _lightning_cli(args: list[str]) -> LightningCLI:
    return LightningCLI(
        AnatomyTask,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        # every run: atomic weights-only checkpoints, per-step seeding (exact resumes), last.ckpt on SIGTERM
        trainer_defaults={"callbacks": [AtomicCheckpointing(), StepSeeding(), CheckpointOnSigterm()]},
        # parse errors raise instead of exiting, so main() can report them as one line
        parser_kwargs={"version": __version__, "exit_on_error": False},
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
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # we pass sys.argv on purpose
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
    except SIGTERMException:  # pre-empted: CheckpointOnSigterm saved last.ckpt (fit); outputs so far are complete
        print(f"anatldm: stopped by SIGTERM; resume with: anatldm {' '.join(args)} --ckpt_path last"
              if args[:1] == ["fit"] else "anatldm: stopped by SIGTERM", file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT_CODE) from None
    except ArgumentError as error:  # unknown key, wrong type, missing file named in a config
        _fail(_input_error(error) or _summary(error))
    except Exception as error:
        cause = _input_error(error)
        if cause is None:
            raise
        _fail(cause)


if __name__ == "__main__":
    main()
