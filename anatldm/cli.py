"""The ``anatldm`` command: stock LightningCLI over every task and the data module.

``anatldm fit|validate|test|predict --config CONFIG.yaml`` runs a stage; YAML names classes by
short name (``class_path: AutoencoderTask``). ``anatldm inspect --config CONFIG.yaml`` prepares
the configured data set and prints per-class slice counts and writes a preview PNG.
``anatldm export --ckpt_path LDM.ckpt --out FOLDER`` writes the self-contained
:class:`~anatldm.pipelines.AnatomicalLDMPipeline` of an ``AnatomicalLDMTask`` checkpoint.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

import anatldm.callbacks  # noqa: F401  (short class paths for callbacks, data modules and tasks)
import anatldm.datamodules  # noqa: F401
import anatldm.export.callback  # noqa: F401  (DatasetWriter)
import anatldm.trainers  # noqa: F401
from anatldm import __version__
from anatldm.checkpointing import AtomicCheckpointing
from anatldm.errors import (
    AnatLDMInputError,
    ConfigError,
    check_checkpoint_file,
    check_output_folder,
)
from anatldm.resume import CheckpointOnSigterm, StepSeeding
from anatldm.trainers import AnatomyTask
from anatldm.trainers.flat_layout import (
    FLAT_TO_NESTED,
    is_flat_layout,
    moved_key_error,
    nest_flat_hyperparameters,
)

__all__ = ["main"]

logger = logging.getLogger("anatldm")


def _fail(message: object) -> None:
    """A user's mistake: one line on stderr and exit code 2, no traceback."""
    print(f"anatldm: error: {' '.join(str(message).split())}", file=sys.stderr)
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


def _cause(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in the cause/context chain of ``error``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _input_error(error: BaseException) -> AnatLDMInputError | None:
    """The user-input error behind ``error``: jsonargparse wraps errors raised while it
    instantiates classes from a config."""
    return _cause(error, AnatLDMInputError)


def _misconfiguration(error: BaseException) -> MisconfigurationException | None:
    """Lightning's own report of an impossible trainer setting (e.g. ``max_epochs: -2``)."""
    return _cause(error, MisconfigurationException)


SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: ``ckpt_path`` values Lightning resolves itself (e.g. ``last``: the newest ``last.ckpt`` of the checkpoint callbacks)
LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc")
#: exit status of a run stopped by SIGTERM (128 + 15, as a shell reports it): never mistaken for success
SIGTERM_EXIT_CODE = 143


def _check_yaml_files(args: list[str]) -> None:
    """A config file that is not valid YAML, named with the line of the problem.

    (jsonargparse reports it without the file name.)
    """
    paths = [value for option, value in zip(args, args[1:], strict=False) if option == "--config"]
    paths += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for path in map(Path, paths):
        if not path.is_file():
            continue  # jsonargparse says so, naming the file
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML ({problem}{where})") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not a text file ({err})") from None
        if config is not None and not isinstance(config, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (trainer:, model:, data:, ...), "
                              f"got a {type(config).__name__}")


def _check_checkpoint(path: str, model_class_path: str | None) -> None:
    """``ckpt_path`` must be a readable Lightning checkpoint of the configured task.

    Lightning would fail on it with a traceback (or, for another stage's checkpoint, merge that
    stage's hyperparameters into the model), and only after writing its run folder.
    """
    check_checkpoint_file(path, "ckpt_path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, random bytes, pickled objects: torch raises many types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"ckpt_path: {path} is not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path: {path} is not a Lightning checkpoint (no 'state_dict')")
    if not model_class_path:
        return
    module, _, name = model_class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module), name)
    hparams = checkpoint.get("hyper_parameters") or {}
    if name == "AnatomicalLDMTask" and is_flat_layout(hparams):
        hparams = nest_flat_hyperparameters(hparams)  # an old checkpoint: converted on load
    accepted = set(inspect.signature(model_class.__init__).parameters)
    foreign = sorted(set(hparams) - accepted - {"_instantiator", "_class_path"})
    saved_class = hparams.get("_class_path")
    if foreign or (saved_class and saved_class.rpartition(".")[2] != name):
        raise ConfigError(f"ckpt_path: {path} is not a checkpoint of {name} (its hyperparameters "
                          f"{foreign or saved_class} belong to another stage)")


def _check_moved_keys(args: list[str]) -> None:
    """A key of ``AnatomicalLDMTask``'s previous flat layout (``model.init_args.num_registers``)
    in a config file or on the command line: one line naming its new nested key."""
    configs = []
    for path in [value for option, value in zip(args, args[1:], strict=False) if option == "--config"] + \
            [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]:
        try:
            configs.append(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
        except (OSError, yaml.YAMLError):
            continue  # reported by _check_yaml_files or jsonargparse
    models = [config["model"] for config in configs if isinstance(config, dict) and isinstance(config.get("model"), dict)]
    class_paths = [str(model.get("class_path", "")) for model in models]
    class_paths += [value for option, value in zip(args, args[1:], strict=False) if option in ("--model", "--model.class_path")]
    if not any(path.rpartition(".")[2] == "AnatomicalLDMTask" for path in class_paths):
        return
    for model in models:
        for prefix, section in (("model.init_args", model.get("init_args")), ("model", model)):
            for name in section if isinstance(section, dict) else ():
                if name in FLAT_TO_NESTED:
                    raise moved_key_error(prefix, name)
    for arg in args:
        option = arg.split("=", 1)[0]
        for prefix in ("--model.init_args.", "--model."):
            if option.startswith(prefix) and option[len(prefix):] in FLAT_TO_NESTED:
                raise moved_key_error(prefix[2:-1], option[len(prefix):])


class AnatLDMCLI(LightningCLI):
    """Stock LightningCLI plus checks of every input before Lightning writes its run folder."""

    def _parse_ckpt_path(self) -> None:
        """Lightning's, with the hyperparameters of a flat-layout ``AnatomicalLDMTask``
        checkpoint nested first (:mod:`anatldm.trainers.flat_layout`)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return super()._parse_ckpt_path()
        hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True).get("hyper_parameters") or {}
        if not (str(hparams.get("_class_path", "")).endswith("AnatomicalLDMTask") and is_flat_layout(hparams)):
            return super()._parse_ckpt_path()
        hparams = nest_flat_hyperparameters(hparams)
        hparams.pop("_instantiator", None)
        model = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        check_output_folder(config.trainer.get("default_root_dir") or Path.cwd(), "trainer.default_root_dir")
        if config.get("ckpt_path") and config.ckpt_path not in LIGHTNING_CKPT_ALIASES \
                and not str(config.ckpt_path).startswith("registry"):
            model = config.get("model")
            _check_checkpoint(config.ckpt_path, model.get("class_path") if model is not None else None)

    def _check_inputs(self) -> None:
        """Checks that need the model and the data together (``AnatomyTask.check_inputs``), and
        callbacks' checks of the model (e.g. ``DatasetWriter``), before anything is written."""
        check = getattr(self.model, "check_inputs", None)
        if callable(check):
            check(self.datamodule)
        for callback in self.trainer.callbacks:
            check = getattr(callback, "check_inputs", None)
            if callable(check):
                check(self.model, self.datamodule, self.config[self.subcommand].get("ckpt_path"))

    before_fit = before_validate = before_test = before_predict = _check_inputs


def _lightning_cli(args: list[str]) -> LightningCLI:
    return AnatLDMCLI(
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


def export_main(args: list[str]) -> str:
    """``anatldm export --ckpt_path LDM.ckpt --out FOLDER``: the checkpoint's weights (EMA, as
    saved) as a pipeline folder that needs neither Lightning nor the autoencoder bundle."""
    import argparse

    from anatldm.diffusion.sampling import SamplingConfig
    from anatldm.diffusion.schedulers import SAMPLERS
    from anatldm.trainers import AnatomicalLDMTask
    from anatldm.trainers.base import load_task

    parser = argparse.ArgumentParser(prog="anatldm export", description=export_main.__doc__)
    parser.add_argument("--ckpt_path", required=True, help="an AnatomicalLDMTask checkpoint")
    parser.add_argument("--out", required=True, help="the pipeline folder to write")
    parser.add_argument("--sampler", choices=SAMPLERS, help="the pipeline's default sampler (inference "
                        "settings are not in a checkpoint: default ddim)")
    parser.add_argument("--num_inference_steps", type=int, help="its default denoiser calls per sample (default 50)")
    options = parser.parse_args(args)
    check_output_folder(options.out, "--out")
    task = load_task(AnatomicalLDMTask, options.ckpt_path, "--ckpt_path")
    overrides = {"sampler": options.sampler, "num_inference_steps": options.num_inference_steps}
    try:
        task.pipeline.sampling = task.pipeline.settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as err:  # named by its option here: --num_inference_steps
        raise ConfigError(str(err).replace(f"{SamplingConfig.key}.", "--")) from None
    path = task.pipeline.save_pretrained(options.out, extra={"source": {
        "checkpoint": str(options.ckpt_path), "autoencoder": str(task.hparams.autoencoder)}})
    return f"wrote {path} (load it with AnatomicalLDMPipeline.from_pretrained)"


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
        if args[:1] == ["export"]:
            print(export_main(args[1:]))
            return
        if len(args) == 2 and args[0] in SUBCOMMANDS and args[1] in ("-h", "--help"):
            _help_with_data_options(args[0])
            raise SystemExit(0)
        _check_yaml_files(args)
        _check_moved_keys(args)
        _lightning_cli(args)
    except SIGTERMException:  # pre-empted: CheckpointOnSigterm saved last.ckpt (fit); outputs so far are complete
        print(f"anatldm: stopped by SIGTERM; resume with: anatldm {' '.join(args)} --ckpt_path last"
              if args[:1] == ["fit"] else "anatldm: stopped by SIGTERM", file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT_CODE) from None
    except ArgumentError as error:  # unknown key, wrong type, missing file named in a config
        _fail(_input_error(error) or _summary(error))
    except Exception as error:
        cause = _input_error(error) or _misconfiguration(error)
        if cause is None:
            raise
        _fail(cause)


if __name__ == "__main__":
    main()
