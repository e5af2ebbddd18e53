"""The previous, flat layout of ``AnatomicalLDMTask``'s arguments (46 names, anatldm <= 0.x at
commit bbe99a9) and its one conversion to the nested config groups.

An old checkpoint's hyperparameters are converted on load (:func:`nest_flat_hyperparameters`);
an old YAML or command-line key fails with one line naming its new key (:func:`moved_key_error`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anatldm.errors import ConfigError

__all__ = ["FLAT_TO_NESTED", "is_flat_layout", "moved_key_error", "nest_flat_hyperparameters"]

_GROUPS = {
    "denoiser": ("channels", "num_res_blocks", "attention_levels", "norm_num_groups", "num_head_channels"),
    "denoiser.registers": {"num_registers": "num_registers", "register_dim": "dim", "register_init_std": "init_std",
                           "register_levels": "levels", "register_heads": "heads", "register_encoder": "encoder",
                           "register_mode": "mode", "register_supervision": "supervision",
                           "register_supervision_weight": "supervision_weight",
                           "supervised_registers_per_class": "supervised_per_class"},
    "denoiser.head": {"head_levels": "levels", "head_channels": "channels"},
    "anatomy_loss": {"anatomy_weight": "weight", "anatomy_weight_min": "weight_min",
                     "anatomy_warmup_fraction": "warmup_fraction", "anatomy_decay": "decay",
                     "anatomy_timestep_weighting": "timestep_weighting", "anatomy_snr_cutoff": "snr_cutoff",
                     "anatomy_dice_batch": "dice_batch"},
    "noise_schedule": ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
                       "min_snr_gamma"),
    "training": ("preview_every_n_epochs", "num_preview_samples", "grad_norm_every_n_steps", "max_nonfinite_steps",
                 "cache_latents"),
    "sampling": ("sampler", "num_inference_steps", "register_edits", "anatomy_edits", "registers_per_class",
                 "association", "association_samples", "attention_steps"),
}

#: flat argument name -> its nested key under ``model.init_args`` (``autoencoder``, ``lr`` and
#: ``weight_decay`` kept their place)
FLAT_TO_NESTED: dict[str, str] = {
    old: f"{group}.{new}"
    for group, names in _GROUPS.items()
    for old, new in (names.items() if isinstance(names, dict) else ((name, name) for name in names))
}


def is_flat_layout(hyperparameters: Mapping[str, Any]) -> bool:
    """Whether ``hyperparameters`` (a checkpoint's) use the flat layout."""
    return any(name in FLAT_TO_NESTED for name in hyperparameters)


def nest_flat_hyperparameters(hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """The nested hyperparameters of a flat-layout checkpoint: every flat name moves to its
    group (``num_registers`` -> ``denoiser.registers.num_registers``); other entries
    (``autoencoder``, ``lr``, ``weight_decay``, Lightning's ``_class_path``) stay as they are."""
    nested: dict[str, Any] = {}
    for name, value in hyperparameters.items():
        path = FLAT_TO_NESTED.get(name, name).split(".")
        group = nested
        for part in path[:-1]:
            group = group.setdefault(part, {})
        group[path[-1]] = value
    return nested


def moved_key_error(prefix: str, name: str) -> ConfigError:
    """The error of an old flat key ``<prefix>.<name>`` (``prefix`` as the user wrote it:
    ``model`` or ``model.init_args``)."""
    return ConfigError(f"{prefix}.{name} moved to {prefix}.{FLAT_TO_NESTED[name]} "
                       "(AnatomicalLDMTask groups its settings: see configs/ldm.yaml)")
