"""The pipeline folder, in the components layout of :mod:`anatldm.models.components`.

``pipeline.json`` (the index) holds the latent ``scale_factor``, the class names, the image
size, the intensity normalisation, the sampling defaults, the registers bound to classes and,
when known, the register-class association table. One subfolder per component:
``autoencoder/`` and ``denoiser/`` (``config.json`` with the constructor arguments and
``model.safetensors``) and ``scheduler/`` (``config.json``: the noise schedule). The folder
needs nothing else on disk: the autoencoder's weights are in it. The components are written
first, each in one rename, then the index; :func:`load_pipeline` checks everything it reads,
reporting a broken folder as one :class:`~anatldm.errors.ConfigError` naming the file and the
key. Folders of the previous layout (format 1: ``pipeline.json`` holding every config, beside
one ``pipeline.safetensors``) still load.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL

from anatldm import __version__
from anatldm.diffusion.sampling import SamplingConfig
from anatldm.diffusion.schedulers import SAMPLERS, make_train_scheduler
from anatldm.errors import ConfigError
from anatldm.models.autoencoder_bundle import NETWORK_CLASS as AUTOENCODER_CLASS
from anatldm.models.components import (
    COMPONENT_WEIGHTS,
    build_component,
    load_weights,
    read_component_config,
    read_index,
    read_weights,
    save_component,
    write_index,
)
from anatldm.models.denoiser import AnatomicalDenoiser

__all__ = ["COMPONENT_CLASSES", "PIPELINE_CONFIG", "REQUIRED_FIELDS", "load_pipeline", "save_pipeline"]

logger = logging.getLogger(__name__)

PIPELINE_CONFIG = "pipeline.json"
#: the one weights file of a format-1 folder
FORMAT_1_WEIGHTS = "pipeline.safetensors"
PIPELINE_CLASS = "anatldm.pipelines.AnatomicalLDMPipeline"
DENOISER_CLASS = "anatldm.models.denoiser.AnatomicalDenoiser"
SCHEDULER_CLASS = "anatldm.diffusion.schedulers.make_train_scheduler"
#: component subfolder -> the class its config builds
COMPONENT_CLASSES = {"autoencoder": AUTOENCODER_CLASS, "denoiser": DENOISER_CLASS, "scheduler": SCHEDULER_CLASS}
_INDEX_FIELDS = ("scale_factor", "class_names", "image_size", "normalization", "sampling", "register_groups",
                 "anatldm_version")
#: fields every ``pipeline.json`` must have, per format version (1: the previous layout)
REQUIRED_BY_VERSION = {
    1: ("format_version", "pipeline", "weights", "autoencoder", "denoiser", "scheduler", *_INDEX_FIELDS),
    2: ("format_version", "pipeline", "components", *_INDEX_FIELDS),
}
REQUIRED_FIELDS = REQUIRED_BY_VERSION[2]
#: keys of the ``sampling`` field (the pipeline's defaults)
SAMPLING_FIELDS = ("sampler", "num_inference_steps", "registers_per_class", "association_samples", "attention_steps")


def save_pipeline(pipeline, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``pipeline`` (an :class:`~anatldm.pipelines.AnatomicalLDMPipeline`) to ``folder``;
    return the index path. ``extra``: more index fields (e.g. the source checkpoint)."""
    extra = dict(extra or {})
    if clash := sorted(set(extra) & set(REQUIRED_FIELDS)):
        raise ValueError(f"extra fields may not replace required ones: {clash}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_component(folder / "autoencoder", AUTOENCODER_CLASS, pipeline.autoencoder_config, pipeline.autoencoder)
    save_component(folder / "denoiser", DENOISER_CLASS, pipeline.denoiser_config, pipeline.denoiser)
    save_component(folder / "scheduler", SCHEDULER_CLASS, pipeline.scheduler_config)
    association = pipeline.association
    index = {
        "pipeline": PIPELINE_CLASS,
        "scale_factor": pipeline.scale_factor,
        "class_names": list(pipeline.class_names),
        "image_size": list(pipeline.image_size),
        "normalization": pipeline.normalization,
        "sampling": {key: getattr(pipeline.sampling, key) for key in SAMPLING_FIELDS},
        "register_groups": pipeline.register_groups,
        "association": None if association is None else association.float().cpu().tolist(),
        "anatldm_version": __version__,
        **extra,
    }
    path = write_index(folder / PIPELINE_CONFIG, index, COMPONENT_CLASSES)
    logger.info("wrote pipeline %s", folder)
    return path


def _field(metadata: dict, json_path: Path, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = metadata[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{json_path}: field '{key}' must be {what}, got {value!r}")
    return value


def _read_metadata(path: Path) -> tuple[Path, dict[str, Any]]:
    json_path, metadata = read_index(path, PIPELINE_CONFIG, "pipeline", REQUIRED_BY_VERSION)
    if metadata["format_version"] == 1:
        for key, network in (("autoencoder", AUTOENCODER_CLASS), ("denoiser", DENOISER_CLASS)):
            part = _field(metadata, json_path, key, dict, "an object with 'network' and 'config'")
            if part.get("network") != network:
                raise ConfigError(f"{json_path}: field '{key}.network' is {part.get('network')!r}; only {network} "
                                  "is supported")
        _field(metadata, json_path, "scheduler", dict, "an object of make_train_scheduler arguments")
    elif metadata["components"] != COMPONENT_CLASSES:
        raise ConfigError(f"{json_path}: field 'components' is {metadata['components']!r}; expected "
                          f"{COMPONENT_CLASSES!r}")
    scale = _field(metadata, json_path, "scale_factor", (int, float), "a positive number")
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"{json_path}: field 'scale_factor' must be a positive number, got {scale!r}")
    names = _field(metadata, json_path, "class_names", list, "a list of class names, background first")
    if len(names) < 2 or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{json_path}: field 'class_names' must list at least two names, got {names!r}")
    size = _field(metadata, json_path, "image_size", list, "a list of positive integers")
    if not size or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ConfigError(f"{json_path}: field 'image_size' must be a list of positive integers, got {size!r}")
    _field(metadata, json_path, "normalization", dict, "an object")
    sampling = _field(metadata, json_path, "sampling", dict, f"an object with {', '.join(SAMPLING_FIELDS)}")
    if missing := [key for key in SAMPLING_FIELDS if key not in sampling]:
        raise ConfigError(f"{json_path}: field 'sampling' lacks {', '.join(map(repr, missing))}")
    if sampling["sampler"] not in SAMPLERS:
        raise ConfigError(f"{json_path}: field 'sampling.sampler' is {sampling['sampler']!r}; expected one of "
                          f"{', '.join(SAMPLERS)}")
    for key in SAMPLING_FIELDS[1:]:
        value = sampling[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{json_path}: field 'sampling.{key}' must be a positive integer, got {value!r}")
    groups = metadata["register_groups"]
    if groups is not None and not (isinstance(groups, list) and len(groups) == len(names) - 1 and all(
            isinstance(g, list) and all(isinstance(k, int) for k in g) for g in groups)):
        raise ConfigError(f"{json_path}: field 'register_groups' must be null or one list of register indices "
                          f"per foreground class, got {groups!r}")
    return json_path, metadata


def _components(json_path: Path, metadata: dict[str, Any]) -> dict[str, tuple[Path, str, dict, dict | None, Path]]:
    """Component name -> ``(config file, key, config, state dict or None, weights file)``, read
    from either layout."""
    if metadata["format_version"] == 1:  # every config in the index, every weight in one file
        weights_path = json_path.parent / str(metadata["weights"])
        state = read_weights(weights_path, json_path)
        parts = {name: (json_path, f"{name}.config", metadata[name]["config"],
                        {key[len(name) + 1:]: value for key, value in state.items() if key.startswith(f"{name}.")},
                        weights_path) for name in ("autoencoder", "denoiser")}
        return {**parts, "scheduler": (json_path, "scheduler", metadata["scheduler"], None, weights_path)}
    parts = {}
    for name, class_name in COMPONENT_CLASSES.items():
        config_path, config = read_component_config(json_path.parent / name, class_name)
        weights_path = json_path.parent / name / COMPONENT_WEIGHTS
        state = None if name == "scheduler" else read_weights(weights_path, config_path)
        parts[name] = (config_path, name, config, state, weights_path)
    return parts


def load_pipeline(path: str | Path, device: str | torch.device = "cpu", cls: type | None = None):
    """Load a folder written by :func:`save_pipeline` (or of the previous layout) as ``cls``
    (default :class:`~anatldm.pipelines.AnatomicalLDMPipeline`), in eval mode on ``device``.

    Raises:
        ConfigError: a missing file, a JSON without a required field or with a bad value, or
            weights that do not fit the config; the message names the file and the key.
    """
    if cls is None:
        from anatldm.pipelines.ldm import AnatomicalLDMPipeline as cls
    json_path, metadata = _read_metadata(Path(path))
    parts = _components(json_path, metadata)
    networks = {}
    for name, build in (("autoencoder", AutoencoderKL), ("denoiser", AnatomicalDenoiser)):
        config_path, key, config, state, weights_path = parts[name]
        networks[name] = build_component(build, config, config_path, key)
        load_weights(networks[name], state, weights_path, config_path)
    scheduler_path, scheduler_key, scheduler_config, _, _ = parts["scheduler"]
    try:
        make_train_scheduler(**scheduler_config)
    except (TypeError, ValueError, NotImplementedError) as err:
        raise ConfigError(f"{scheduler_path}: field '{scheduler_key}' does not build the noise schedule ({err})") \
            from None
    denoiser = networks["denoiser"]
    association = metadata.get("association")
    if association is not None:
        try:
            association = torch.tensor(association, dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{json_path}: field 'association' is not a table ({err})") from None
        num_registers = denoiser.registers.num_registers if denoiser.registers is not None else 0
        if tuple(association.shape) != (num_registers, len(metadata["class_names"])):
            raise ConfigError(f"{json_path}: field 'association' has shape {tuple(association.shape)}, expected "
                              f"({num_registers}, {len(metadata['class_names'])})")
    sampling = metadata["sampling"]
    pipeline = cls(networks["autoencoder"], denoiser, scale_factor=metadata["scale_factor"],
                   class_names=metadata["class_names"], image_size=metadata["image_size"],
                   normalization=metadata["normalization"], scheduler_config=scheduler_config,
                   autoencoder_config=parts["autoencoder"][2], denoiser_config=parts["denoiser"][2],
                   register_groups=metadata["register_groups"], association=association,
                   sampling=SamplingConfig(**{key: sampling[key] for key in SAMPLING_FIELDS}))
    return pipeline.to(device).eval()
