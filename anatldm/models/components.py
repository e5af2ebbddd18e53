"""One folder format for saved networks and their constructor arguments (diffusers' layout).

A saved model (an autoencoder bundle, a pipeline) is a folder with an index JSON
(``autoencoder.json``, ``pipeline.json``: what the parts are and what they were trained on) and
one subfolder per component::

    <component>/config.json        {"_class_name": ..., constructor arguments}
    <component>/model.safetensors  the state dict (safetensors, never pickle; absent for a
                                   component without weights, e.g. the noise schedule)

Each subfolder is written in one rename (:class:`~anatldm.atomic.StagedFolder`) and the index
last, so an index on disk always names complete components. Readers report a broken part as
one :class:`~anatldm.errors.ConfigError` naming the file and the key. The configs are opaque
here: each component's owner decides what its constructor takes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from anatldm.atomic import StagedFolder, write_text_atomic
from anatldm.errors import ConfigError, read_json_object
from anatldm.models.weights import state_dict_mismatch

__all__ = ["CLASS_KEY", "COMPONENT_CONFIG", "COMPONENT_WEIGHTS", "FORMAT_VERSION", "build_component", "jsonable",
           "load_weights", "read_component_config", "read_index", "read_weights", "save_component", "write_index"]

COMPONENT_CONFIG = "config.json"
COMPONENT_WEIGHTS = "model.safetensors"
#: the key of a component's ``config.json`` naming its class (diffusers' convention)
CLASS_KEY = "_class_name"
#: 2: a subfolder per component; 1: one ``.safetensors`` beside the index, configs inside it
FORMAT_VERSION = 2


def jsonable(value: Any) -> Any:
    """Tuples become lists, so the JSON reads back equal to what was written."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def save_component(folder: str | Path, class_name: str, config: dict[str, Any], network: nn.Module | None = None) -> Path:
    """Write one component subfolder (replacing an older one in one rename); return it.

    Args:
        folder: the component's subfolder, e.g. ``<export>/denoiser``.
        class_name: the class that ``config`` builds.
        config: the constructor arguments (any JSON-able dict).
        network: the network whose state dict is saved; ``None`` for a config-only component.
    """
    folder = Path(folder)
    with StagedFolder(folder, replace=True) as staging:
        if network is not None:
            tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in network.state_dict().items()}
            save_file(tensors, staging / COMPONENT_WEIGHTS, metadata={"format": "pt"})
        (staging / COMPONENT_CONFIG).write_text(json.dumps({CLASS_KEY: class_name, **jsonable(config)}, indent=1),
                                                encoding="utf-8")
    return folder


def write_index(path: Path, index: dict[str, Any], components: dict[str, str]) -> Path:
    """Write the index JSON ``path`` (after its components): ``index`` plus ``format_version``
    and ``components`` (name -> class name)."""
    return write_text_atomic(path, json.dumps({"format_version": FORMAT_VERSION, "components": components,
                                               **jsonable(index)}, indent=1))


def read_index(path: str | Path, index_name: str, what: str,
               required: dict[int, Sequence[str]]) -> tuple[Path, dict[str, Any]]:
    """The index JSON of a saved folder (``path`` is the folder or the index file itself).

    Args:
        path: the folder or its index.
        index_name: the index's file name (e.g. ``pipeline.json``).
        what: what the folder holds, for the messages (e.g. ``pipeline``).
        required: format version -> fields an index of that version must have.
    """
    path = Path(path)
    json_path = path / index_name if path.is_dir() else path
    if not json_path.is_file():
        raise ConfigError(f"{json_path}: no {what} (give the export folder or its {index_name})")
    metadata = read_json_object(json_path)
    version = metadata.get("format_version")
    if version not in required:
        raise ConfigError(f"{json_path}: field 'format_version' is {version!r}; this anatldm reads "
                          f"{' and '.join(map(str, sorted(required)))}")
    if missing := [key for key in required[version] if key not in metadata]:
        raise ConfigError(f"{json_path}: missing field(s) {', '.join(map(repr, missing))}")
    return json_path, metadata


def read_component_config(folder: Path, class_name: str) -> tuple[Path, dict[str, Any]]:
    """``(path, constructor arguments)`` of the component in ``folder``, which must build ``class_name``."""
    path = folder / COMPONENT_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: component config missing")
    config = read_json_object(path, required=(CLASS_KEY,))
    if config[CLASS_KEY] != class_name:
        raise ConfigError(f"{path}: field '{CLASS_KEY}' is {config[CLASS_KEY]!r}; only {class_name} is supported")
    return path, {key: value for key, value in config.items() if key != CLASS_KEY}


def build_component(build: Callable[..., nn.Module], config: dict[str, Any], config_path: Path, key: str) -> nn.Module:
    """``build(**config)``; a config that does not fit is a :class:`ConfigError` naming ``key`` of ``config_path``."""
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path}: field '{key}' must be an object of constructor arguments")
    try:
        return build(**config)
    except (TypeError, ValueError, NotImplementedError) as err:
        name = getattr(build, "__name__", str(build))
        raise ConfigError(f"{config_path}: field '{key}' does not build an {name} ({err})") from None


def read_weights(path: Path, named_by: Path) -> dict[str, torch.Tensor]:
    """The tensors of safetensors file ``path`` (named by the JSON ``named_by``)."""
    if not path.is_file():
        raise ConfigError(f"{path}: weights file missing (named by {named_by})")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{path}: not a readable safetensors file ({err})") from None


def load_weights(network: nn.Module, state: dict[str, torch.Tensor], weights_path: Path, config_path: Path) -> None:
    """Load ``state`` into ``network`` strictly; tensors that do not fit are one :class:`ConfigError`."""
    if problem := state_dict_mismatch(state, network.state_dict()):
        raise ConfigError(f"{weights_path}: weights do not match the config in {config_path.name}: {problem}")
    network.load_state_dict(state, strict=True)
