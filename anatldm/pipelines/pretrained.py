"""The pipeline folder: ``pipeline.safetensors`` (every weight) and ``pipeline.json`` (the rest).

``pipeline.json`` names the networks and their constructor arguments (the autoencoder's and the
denoiser's), the latent ``scale_factor``, the class names, the image size, the intensity
normalisation, the noise schedule, the sampling defaults, the registers bound to classes and,
when known, the register-class association table. The folder needs nothing else on disk: the
autoencoder's weights are in it. Both files are written under temporary names and renamed (the
weights first), and :func:`load_pipeline` checks everything it reads, reporting a broken folder
as one :class:`~anatldm.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anatldm import __version__
from anatldm.atomic import write_atomic, write_text_atomic
from anatldm.diffusion.sampling import SamplingConfig
from anatldm.diffusion.schedulers import SAMPLERS, make_train_scheduler
from anatldm.errors import ConfigError, read_json_object
from anatldm.models.autoencoder_bundle import NETWORK_CLASS as AUTOENCODER_CLASS
from anatldm.models.autoencoder_bundle import jsonable
from anatldm.models.denoiser import AnatomicalDenoiser
from anatldm.models.weights import state_dict_mismatch

__all__ = ["PIPELINE_CONFIG", "PIPELINE_WEIGHTS", "REQUIRED_FIELDS", "load_pipeline", "save_pipeline"]

logger = logging.getLogger(__name__)

PIPELINE_CONFIG = "pipeline.json"
PIPELINE_WEIGHTS = "pipeline.safetensors"
PIPELINE_CLASS = "anatldm.pipelines.AnatomicalLDMPipeline"
DENOISER_CLASS = "anatldm.models.denoiser.AnatomicalDenoiser"
FORMAT_VERSION = 1
#: fields every ``pipeline.json`` must have
REQUIRED_FIELDS = ("format_version", "pipeline", "weights", "autoencoder", "denoiser", "scheduler", "scale_factor",
                   "class_names", "image_size", "normalization", "sampling", "register_groups", "anatldm_version")
#: keys of the ``sampling`` field (the pipeline's defaults)
SAMPLING_FIELDS = ("sampler", "num_inference_steps", "registers_per_class", "association_samples", "attention_steps")


def save_pipeline(pipeline, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``pipeline`` (an :class:`~anatldm.pipelines.AnatomicalLDMPipeline`) to ``folder``;
    return the JSON path. ``extra``: more JSON fields (e.g. the source checkpoint)."""
    extra = dict(extra or {})
    if clash := sorted(set(extra) & set(REQUIRED_FIELDS)):
        raise ValueError(f"extra fields may not replace required ones: {clash}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in pipeline.state_dict().items()}
    association = pipeline.association
    metadata = {
        "format_version": FORMAT_VERSION,
        "pipeline": PIPELINE_CLASS,
        "weights": PIPELINE_WEIGHTS,
        "autoencoder": {"network": AUTOENCODER_CLASS, "config": jsonable(pipeline.autoencoder_config)},
        "denoiser": {"network": DENOISER_CLASS, "config": jsonable(pipeline.denoiser_config)},
        "scheduler": jsonable(pipeline.scheduler_config),
        "scale_factor": pipeline.scale_factor,
        "class_names": list(pipeline.class_names),
        "image_size": list(pipeline.image_size),
        "normalization": jsonable(pipeline.normalization),
        "sampling": {key: getattr(pipeline.sampling, key) for key in SAMPLING_FIELDS},
        "register_groups": jsonable(pipeline.register_groups),
        "association": None if association is None else association.float().cpu().tolist(),
        "anatldm_version": __version__,
        **jsonable(extra),
    }
    # weights first: a JSON on disk always names complete weights
    write_atomic(folder / PIPELINE_WEIGHTS, lambda path: save_file(tensors, path, metadata={"format": "pt"}))
    write_text_atomic(folder / PIPELINE_CONFIG, json.dumps(metadata, indent=1))
    logger.info("wrote pipeline %s", folder)
    return folder / PIPELINE_CONFIG


def _field(metadata: dict, json_path: Path, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = metadata[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{json_path}: field '{key}' must be {what}, got {value!r}")
    return value


def _read_metadata(path: Path) -> tuple[Path, dict[str, Any]]:
    json_path = path / PIPELINE_CONFIG if path.is_dir() else path
    if not json_path.is_file():
        raise ConfigError(f"{json_path}: no pipeline (give the export folder or its {PIPELINE_CONFIG})")
    metadata = read_json_object(json_path, required=REQUIRED_FIELDS)
    if metadata["format_version"] != FORMAT_VERSION:
        raise ConfigError(f"{json_path}: field 'format_version' is {metadata['format_version']!r}; "
                          f"this anatldm reads {FORMAT_VERSION}")
    for key, network in (("autoencoder", AUTOENCODER_CLASS), ("denoiser", DENOISER_CLASS)):
        part = _field(metadata, json_path, key, dict, "an object with 'network' and 'config'")
        if part.get("network") != network:
            raise ConfigError(f"{json_path}: field '{key}.network' is {part.get('network')!r}; only {network} "
                              "is supported")
        if not isinstance(part.get("config"), dict):
            raise ConfigError(f"{json_path}: field '{key}.config' must be an object of constructor arguments")
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
    _field(metadata, json_path, "scheduler", dict, "an object of make_train_scheduler arguments")
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


def load_pipeline(path: str | Path, device: str | torch.device = "cpu", cls: type | None = None):
    """Load a folder written by :func:`save_pipeline` as ``cls`` (default
    :class:`~anatldm.pipelines.AnatomicalLDMPipeline`), in eval mode on ``device``.

    Raises:
        ConfigError: a missing file, a JSON without a required field or with a bad value, or
            weights that do not fit the config; the message names the file and the key.
    """
    if cls is None:
        from anatldm.pipelines.ldm import AnatomicalLDMPipeline as cls
    json_path, metadata = _read_metadata(Path(path))
    try:
        autoencoder = AutoencoderKL(**metadata["autoencoder"]["config"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{json_path}: field 'autoencoder.config' does not build an AutoencoderKL ({err})") from None
    try:
        denoiser = AnatomicalDenoiser(**metadata["denoiser"]["config"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{json_path}: field 'denoiser.config' does not build an AnatomicalDenoiser ({err})") from None
    try:
        make_train_scheduler(**metadata["scheduler"])
    except (TypeError, ValueError, NotImplementedError) as err:
        raise ConfigError(f"{json_path}: field 'scheduler' does not build the noise schedule ({err})") from None
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
    pipeline = cls(autoencoder, denoiser, scale_factor=metadata["scale_factor"], class_names=metadata["class_names"],
                   image_size=metadata["image_size"], normalization=metadata["normalization"],
                   scheduler_config=metadata["scheduler"], autoencoder_config=metadata["autoencoder"]["config"],
                   denoiser_config=metadata["denoiser"]["config"], register_groups=metadata["register_groups"],
                   association=association, sampling=SamplingConfig(**{key: sampling[key] for key in SAMPLING_FIELDS}))
    weights_path = json_path.parent / str(metadata["weights"])
    if not weights_path.is_file():
        raise ConfigError(f"{weights_path}: weights file missing (named by {json_path})")
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{weights_path}: not a readable safetensors file ({err})") from None
    if problem := state_dict_mismatch(state, pipeline.state_dict()):
        raise ConfigError(f"{weights_path}: weights do not match the config in {json_path.name}: {problem}")
    pipeline.load_state_dict(state, strict=True)
    return pipeline.to(device).eval()
