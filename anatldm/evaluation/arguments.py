"""The checks of ``EvaluationTask``'s arguments and its model names (no Lightning)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anatldm.config import as_config
from anatldm.diffusion.sampling import GuidanceConfig
from anatldm.errors import ConfigError, check_output_folder
from anatldm.evaluation.report import ClaimCriteria
from anatldm.evaluation.results import as_dataclass, as_list
from anatldm.models.registers import RegisterEdit
from anatldm.pipelines.ldm import as_register_edit

__all__ = ["check_evaluation_arguments", "check_model_classes", "collect_models", "edit_generator_arm",
           "model_guidance", "model_names", "module_key"]


def check_evaluation_arguments(*, generators: dict[str, str | list[str]], baseline: str | None,
                               training_seeds: list[int] | None,
                               early_checkpoints: dict[str, str | list[str]] | None, num_samples: int | None,
                               num_inference_steps: int, sample_batch_size: int, calibration_subjects: int,
                               claim: ClaimCriteria | None, num_bootstrap: int,
                               num_bootstrap_costly: int, confidence: float, output_dir: str,
                               edits: dict[str, list[RegisterEdit]] | None, edit_generator: str | None,
                               edit_samples: int | None, **_: Any) -> dict[str, list[RegisterEdit]]:
    """Eager checks of the task's arguments, each error naming its key ``model.<name>``; returns
    the ``edits`` as :class:`RegisterEdit` lists."""
    if not generators:
        raise ConfigError("model.generators is empty: name at least one LDM checkpoint")
    counts = {name: len(as_list(paths)) for name, paths in generators.items()}
    if min(counts.values()) < 1:
        raise ConfigError(f"model.generators: every arm needs at least one checkpoint, got {counts}")
    if baseline is not None and baseline not in generators:
        raise ConfigError(f"model.baseline '{baseline}' is not one of the generators {sorted(generators)}")
    if baseline is not None and len(set(counts.values())) > 1:
        raise ConfigError(f"model.generators: arms compared with a baseline need one checkpoint per training "
                          f"seed each, got {counts}")
    if training_seeds is not None and len(training_seeds) != max(counts.values()):
        raise ConfigError(f"model.training_seeds has {len(training_seeds)} entries for "
                          f"{max(counts.values())} checkpoints per arm")
    for name, paths in (early_checkpoints or {}).items():
        if name not in generators:
            raise ConfigError(f"model.early_checkpoints: '{name}' is not one of the generators {sorted(generators)}")
        if len(as_list(paths)) > counts[name]:
            raise ConfigError(f"model.early_checkpoints.{name}: more early checkpoints than final ones")
    claim = as_dataclass(ClaimCriteria, claim) if claim is not None else None
    if claim is not None and (baseline is None or claim.arm not in generators or claim.arm == baseline):
        raise ConfigError(f"model.claim.arm '{claim.arm}' must be a generator other than model.baseline")
    for key, value in (("num_samples", num_samples), ("num_inference_steps", num_inference_steps),
                       ("sample_batch_size", sample_batch_size), ("num_bootstrap", num_bootstrap),
                       ("num_bootstrap_costly", num_bootstrap_costly)):
        if value is not None and value < 1:
            raise ConfigError(f"model.{key} must be at least 1, got {value}")
    if calibration_subjects < 0:
        raise ConfigError(f"model.calibration_subjects must be >= 0, got {calibration_subjects}")
    if edit_generator is not None and edit_generator not in generators:
        raise ConfigError(f"model.edit_generator '{edit_generator}' is not one of the generators {sorted(generators)}")
    if edit_samples is not None and edit_samples < 1:
        raise ConfigError(f"model.edit_samples must be at least 1, got {edit_samples}")
    converted = {name: [as_register_edit(edit, f"model.edits.{name}") for edit in edit_list]
                 for name, edit_list in (edits or {}).items()}
    if not 0 < confidence < 1:
        raise ConfigError(f"model.confidence must lie in (0, 1), got {confidence}")
    check_output_folder(output_dir, "model.output_dir")
    return converted


def model_guidance(guidance: dict[str, Any] | None, generators: dict[str, str | list[str]],
                   arms: dict[str, list[str]]) -> dict[str, GuidanceConfig]:
    """Model name -> its :class:`GuidanceConfig` from ``guidance`` (arm -> one config for all its
    checkpoints, or a list, one per checkpoint: each final checkpoint its own autoguidance guide);
    errors name ``model.guidance.<arm>``. Early checkpoints are sampled unguided."""
    out = {}
    for arm, value in (guidance or {}).items():
        key = f"model.guidance.{arm}"
        if arm not in generators:
            raise ConfigError(f"{key}: '{arm}' is not one of the generators {sorted(generators)}")
        configs = value if isinstance(value, list) else [value]
        try:
            configs = [as_config(GuidanceConfig, config) for config in configs]
        except ConfigError as err:
            raise ConfigError(f"{key}: {err}") from None
        names = arms[arm]
        if len(configs) == 1 and len(names) > 1 and configs[0].kind == "autoguidance":
            raise ConfigError(f"{key}: autoguidance of an arm of {len(names)} checkpoints needs one config per "
                              f"checkpoint (a list), each with the guide of its own run")
        if len(configs) not in (1, len(names)):
            raise ConfigError(f"{key} has {len(configs)} configs for the {len(names)} checkpoints of the arm")
        for k, name in enumerate(names):
            out[name] = configs[k if len(configs) > 1 else 0]
    return out


def model_names(generators: dict[str, str | list[str]], training_seeds: list[int] | None) -> dict[str, list[str]]:
    """Arm -> its model names (``arm`` alone for one checkpoint, else ``arm/seed<s>``)."""
    out = {}
    for arm, paths in generators.items():
        paths = as_list(paths)
        out[arm] = [arm] if isinstance(generators[arm], str) else \
            [f"{arm}/seed{training_seeds[k] if training_seeds else k}" for k in range(len(paths))]
    return out


def module_key(name: str) -> str:
    """A ``ModuleDict`` key for a model name (which may hold ``/``, ``.`` and ``@``)."""
    return name.replace("/", "__").replace(".", "_").replace("@", "___")


def check_model_classes(models: dict[str, Any], class_names: list[str], segmenter_classes: int) -> None:
    """Every generator has ``class_names``, and the judge as many classes."""
    for name, generator in models.items():
        if list(generator.class_names) != class_names:
            raise ConfigError(f"model.generators ({name}): classes {generator.class_names} differ from "
                              f"{class_names}")
    if segmenter_classes != len(class_names):
        raise ConfigError(f"model.segmenter has {segmenter_classes} classes, the generators "
                          f"{len(class_names)}")


def edit_generator_arm(edit_generator: str | None, arms: dict[str, list[str]], model: Callable[[str], Any],
                       edits: dict[str, list[RegisterEdit]]) -> str:
    """The arm the edits apply to (``edit_generator``, or the first whose first model has
    registers), its edits checked before any sampling; ``model``: name -> pipeline."""
    edit_generator = edit_generator or next(
        (arm for arm, names in arms.items() if model(names[0]).denoiser.registers is not None), None)
    generator = model(arms[edit_generator][0]) if edit_generator else None
    if generator is None or generator.denoiser.registers is None:
        raise ConfigError(f"model.edits: generator '{edit_generator}' has no register bank"
                          if edit_generator else "model.edits: no generator has a register bank")
    for name, edit_list in edits.items():  # fail on a bad edit before any sampling
        generator.check_edits(edit_list, f"model.edits.{name}")
    return edit_generator


def collect_models(generators: dict[str, str | list[str]], early_checkpoints: dict[str, str | list[str]] | None,
                   arms: dict[str, list[str]], load: Callable[[str, str], Any]) -> tuple[dict, dict, dict]:
    """Every model of every arm, then its early checkpoints, loaded by ``load(path, key)`` (errors
    naming ``key``): name -> model, name -> checkpoint path, arm -> its early models' names."""
    models, checkpoints, early = {}, {}, {}
    for arm, names in arms.items():
        paths = as_list(generators[arm])
        for k, (name, path) in enumerate(zip(names, paths, strict=True)):
            models[name] = load(path, f"model.generators.{arm}" + ("" if len(paths) == 1 else f"[{k}]"))
            checkpoints[name] = path
        for k, path in enumerate(as_list((early_checkpoints or {}).get(arm, []))):
            name = f"{names[k]}@early"
            models[name] = load(path, f"model.early_checkpoints.{arm}")
            checkpoints[name] = path
            early.setdefault(arm, []).append(name)
    return models, checkpoints, early
