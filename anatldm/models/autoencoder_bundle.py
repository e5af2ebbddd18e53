"""Export bundle of a trained autoencoder: what the later stages need, with no Lightning.

A bundle is a folder holding

- ``autoencoder.safetensors``: the ``AutoencoderKL`` weights (safetensors, never pickle),
- ``autoencoder.json``: the network class and its constructor arguments, the latent
  ``scale_factor`` (``1 / std(z)`` on training data), how raw intensities were normalised,
  the class names, the image size and the anatldm version that wrote it.

Both files are written to a temporary name and renamed into place, so a crash never leaves a
half-written file. :func:`load_autoencoder_bundle` checks everything it reads and reports a
broken bundle as a one-line :class:`~anatldm.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anatldm import __version__
from anatldm.atomic import write_atomic
from anatldm.errors import ConfigError, read_json_object
from anatldm.models.weights import state_dict_mismatch

__all__ = [
    "BUNDLE_CONFIG",
    "BUNDLE_WEIGHTS",
    "NETWORK_CLASS",
    "REQUIRED_FIELDS",
    "load_autoencoder_bundle",
    "save_autoencoder_bundle",
]

logger = logging.getLogger(__name__)

BUNDLE_CONFIG = "autoencoder.json"
BUNDLE_WEIGHTS = "autoencoder.safetensors"
NETWORK_CLASS = "monai.networks.nets.AutoencoderKL"
FORMAT_VERSION = 1
#: fields every ``autoencoder.json`` must have
REQUIRED_FIELDS = ("format_version", "network", "config", "weights", "scale_factor", "normalization",
                   "class_names", "image_size", "anatldm_version")


def jsonable(value: Any) -> Any:
    """Tuples become lists, so the JSON reads back equal to what was written."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def save_autoencoder_bundle(
    folder: str | Path,
    network: AutoencoderKL,
    config: dict[str, Any],
    scale_factor: float,
    normalization: dict[str, Any],
    class_names: Sequence[str],
    image_size: Sequence[int],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``network`` and its description to ``folder``; return the JSON path.

    Args:
        folder: output folder, created if needed.
        network: the trained autoencoder.
        config: the keyword arguments that build ``network`` (``AutoencoderKL(**config)``).
        scale_factor: ``1 / std(z)`` of training latents.
        normalization: how raw intensities were mapped to [-1, 1] (the data module's).
        class_names: label names, background first.
        image_size: spatial size of the training images.
        extra: more JSON fields (e.g. training length); they may not replace required ones.
    """
    if not (math.isfinite(scale_factor) and scale_factor > 0):
        raise ValueError(f"scale_factor must be a positive finite number, got {scale_factor}")
    extra = dict(extra or {})
    if clash := sorted(set(extra) & set(REQUIRED_FIELDS)):
        raise ValueError(f"extra fields may not replace required ones: {clash}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in network.state_dict().items()}
    metadata = {
        "format_version": FORMAT_VERSION,
        "network": NETWORK_CLASS,
        "config": jsonable(config),
        "weights": BUNDLE_WEIGHTS,
        "scale_factor": float(scale_factor),
        "normalization": jsonable(normalization),
        "class_names": list(class_names),
        "image_size": [int(size) for size in image_size],
        "anatldm_version": __version__,
        **jsonable(extra),
    }
    # weights first: a JSON on disk always names complete weights
    write_atomic(folder / BUNDLE_WEIGHTS, lambda path: save_file(tensors, path, metadata={"format": "pt"}))
    write_atomic(folder / BUNDLE_CONFIG, lambda path: path.write_text(json.dumps(metadata, indent=1), encoding="utf-8"))
    logger.info("wrote autoencoder bundle %s (scale_factor %.6g)", folder, scale_factor)
    return folder / BUNDLE_CONFIG


def _read_metadata(path: Path) -> tuple[Path, dict[str, Any]]:
    json_path = path / BUNDLE_CONFIG if path.is_dir() else path
    if not json_path.is_file():
        raise ConfigError(f"{json_path}: no autoencoder bundle (give the export folder or its {BUNDLE_CONFIG})")
    metadata = read_json_object(json_path, required=REQUIRED_FIELDS)
    if metadata["network"] != NETWORK_CLASS:
        raise ConfigError(f"{json_path}: field 'network' is {metadata['network']!r}; only {NETWORK_CLASS} is supported")
    scale = metadata["scale_factor"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"{json_path}: field 'scale_factor' must be a positive number, got {scale!r}")
    if not isinstance(metadata["config"], dict):
        raise ConfigError(f"{json_path}: field 'config' must be an object of AutoencoderKL arguments")
    return json_path, metadata


def load_autoencoder_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[AutoencoderKL, dict]:
    """Load a bundle written by :func:`save_autoencoder_bundle`.

    Args:
        path: the bundle folder or its ``autoencoder.json``.
        device: where to put the network.

    Returns:
        The ``AutoencoderKL`` in eval mode, and the JSON metadata as a dict (``scale_factor``,
        ``normalization``, ``class_names``, ``image_size``, ``config``, ...).

    Raises:
        ConfigError: a missing file, a JSON without a required field, or weights that do not
            fit the config; the message names the file and what differs.
    """
    json_path, metadata = _read_metadata(Path(path))
    try:
        network = AutoencoderKL(**metadata["config"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{json_path}: field 'config' does not build an AutoencoderKL ({err})") from None
    weights_path = json_path.parent / str(metadata["weights"])
    if not weights_path.is_file():
        raise ConfigError(f"{weights_path}: weights file missing (named by {json_path})")
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{weights_path}: not a readable safetensors file ({err})") from None
    if problem := state_dict_mismatch(state, network.state_dict()):
        raise ConfigError(f"{weights_path}: weights do not match the config in {json_path.name}: {problem}")
    network.load_state_dict(state, strict=True)
    network.to(device).eval()
    return network, metadata
