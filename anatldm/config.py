"""Config dataclasses as constructor arguments: one coercion from what arrives (an instance from
jsonargparse, a mapping from a checkpoint's hyperparameters) and one conversion back to plain data."""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass, replace
from typing import Any, TypeVar

from anatldm.errors import ConfigError

__all__ = ["as_config", "plain"]

Config = TypeVar("Config")


def as_config(config_class: type[Config], value: Config | dict[str, Any] | None) -> Config:
    """``value`` as a ``config_class`` instance (``None``: the defaults); an unknown field is one
    :class:`~anatldm.errors.ConfigError` naming the config's key (``config_class.key``)."""
    if isinstance(value, config_class):
        return replace(value)  # a copy: a default instance is never shared
    if value is None:
        return config_class()
    key = getattr(config_class, "key", config_class.__name__)
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping of {config_class.__name__} fields, got {value!r}")
    unknown = sorted(set(value) - {f.name for f in fields(config_class)})
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(unknown)}; "
                          f"expected {', '.join(f.name for f in fields(config_class))}")
    return config_class(**value)


def plain(value: Any) -> Any:
    """``value`` with every dataclass replaced by its fields as a plain nested dict, tuples as
    lists (what YAML and a weights-only checkpoint hold)."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value
