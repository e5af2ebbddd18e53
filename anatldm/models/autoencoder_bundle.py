"""Export bundle of a trained autoencoder: what the later stages need, with no Lightning.

A bundle is a folder in the components layout of :mod:`anatldm.models.components`:

- ``autoencoder.json`` (the index): the latent ``scale_factor`` (``1 / std(z)`` on training
  data), how raw intensities were normalised, the class names, the image size and the anatldm
  version that wrote it;
- ``autoencoder/config.json`` (the ``AutoencoderKL`` class and constructor arguments) and
  ``autoencoder/model.safetensors`` (its weights; safetensors, never pickle).

The component is written in one rename and the index after it, so a crash never leaves a
half-written bundle. Bundles of the previous layout (format 1: ``autoencoder.json`` holding the
config, beside ``autoencoder.safetensors``) still load. :func:`load_autoencoder_bundle` checks
everything it reads and reports a broken bundle as a one-line
:class:`~anatldm.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL

from anatldm import __version__
from anatldm.errors import ConfigError
from anatldm.models.components import (
    COMPONENT_CONFIG,
    COMPONENT_WEIGHTS,
    build_component,
    jsonable,
    load_weights,
    read_component_config,
    read_index,
    read_weights,
    save_component,
    write_index,
)

__all__ = [
    "BUNDLE_CONFIG",
    "BUNDLE_NETWORK_CONFIG",
    "BUNDLE_WEIGHTS",
    "NETWORK_CLASS",
    "REQUIRED_FIELDS",
    "downsampling_factor",
    "jsonable",
    "load_autoencoder_bundle",
    "save_autoencoder_bundle",
]

logger = logging.getLogger(__name__)

#: the index, and the component's files relative to the bundle folder
BUNDLE_CONFIG = "autoencoder.json"
COMPONENT = "autoencoder"
BUNDLE_NETWORK_CONFIG = f"{COMPONENT}/{COMPONENT_CONFIG}"
BUNDLE_WEIGHTS = f"{COMPONENT}/{COMPONENT_WEIGHTS}"
NETWORK_CLASS = "monai.networks.nets.AutoencoderKL"
#: fields every ``autoencoder.json`` must have, per format version (1: the previous layout)
REQUIRED_BY_VERSION = {
    1: ("format_version", "network", "config", "weights", "scale_factor", "normalization", "class_names",
        "image_size", "anatldm_version"),
    2: ("format_version", "components", "scale_factor", "normalization", "class_names", "image_size",
        "anatldm_version"),
}
REQUIRED_FIELDS = REQUIRED_BY_VERSION[2]


def downsampling_factor(config: dict[str, Any]) -> int:
    """How much the ``AutoencoderKL`` of constructor arguments ``config`` downsamples each side."""
    return 2 ** (len(config["channels"]) - 1)


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
    if clash := sorted(set(extra) & {*REQUIRED_FIELDS, "config"}):
        raise ValueError(f"extra fields may not replace required ones: {clash}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_component(folder / COMPONENT, NETWORK_CLASS, config, network)
    index = {"scale_factor": float(scale_factor), "normalization": normalization, "class_names": list(class_names),
             "image_size": [int(size) for size in image_size], "anatldm_version": __version__, **extra}
    path = write_index(folder / BUNDLE_CONFIG, index, {COMPONENT: NETWORK_CLASS})
    logger.info("wrote autoencoder bundle %s (scale_factor %.6g)", folder, scale_factor)
    return path


def _read_metadata(path: Path) -> tuple[Path, dict[str, Any]]:
    json_path, metadata = read_index(path, BUNDLE_CONFIG, "autoencoder bundle", REQUIRED_BY_VERSION)
    scale = metadata["scale_factor"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"{json_path}: field 'scale_factor' must be a positive number, got {scale!r}")
    if metadata["format_version"] == 1:
        if metadata["network"] != NETWORK_CLASS:
            raise ConfigError(f"{json_path}: field 'network' is {metadata['network']!r}; only {NETWORK_CLASS} "
                              "is supported")
    elif metadata["components"] != {COMPONENT: NETWORK_CLASS}:
        raise ConfigError(f"{json_path}: field 'components' is {metadata['components']!r}; expected "
                          f"{ {COMPONENT: NETWORK_CLASS} }")
    return json_path, metadata


def load_autoencoder_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[AutoencoderKL, dict]:
    """Load a bundle written by :func:`save_autoencoder_bundle` (or of the previous layout).

    Args:
        path: the bundle folder or its ``autoencoder.json``.
        device: where to put the network.

    Returns:
        The ``AutoencoderKL`` in eval mode, and the index as a dict (``scale_factor``,
        ``normalization``, ``class_names``, ``image_size``, ...) with the network's constructor
        arguments under ``config``.

    Raises:
        ConfigError: a missing file, a JSON without a required field, or weights that do not
            fit the config; the message names the file and what differs.
    """
    json_path, metadata = _read_metadata(Path(path))
    if metadata["format_version"] == 1:  # the config inside the index, the weights beside it
        config_path, config, key = json_path, metadata["config"], "config"
        weights_path = json_path.parent / str(metadata["weights"])
        named_by = json_path
    else:
        config_path, config = read_component_config(json_path.parent / COMPONENT, NETWORK_CLASS)
        key, weights_path, named_by = COMPONENT, json_path.parent / BUNDLE_WEIGHTS, config_path
    network = build_component(AutoencoderKL, config, config_path, key)
    load_weights(network, read_weights(weights_path, named_by), weights_path, config_path)
    network.to(device).eval()
    return network, {**metadata, "config": config}
