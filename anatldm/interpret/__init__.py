"""Interpretability and control through the register bank: edits (by index or by anatomy),
attention maps, the register-class association, edit effects.

Submodules load on first use, so :mod:`anatldm.interpret.edits` (what the pipeline needs) pulls
in neither torchmetrics nor matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "EditedRegisters": "edits",
    "NoRegisterForClassError": "edits",
    "class_registers": "edits",
    "edit_registers": "edits",
    "load_association": "edits",
    "load_register_bank": "edits",
    "registers_for_class": "edits",
    "RegisterAssociation": "association",
    "save_association": "association",
    "attention_at_image_size": "attention",
    "save_attention_panels": "attention",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
