"""Register edits by index or by class: a pure function returning the edited tokens and what it did.

No Lightning and no torchmetrics here: the pipeline (:mod:`anatldm.pipelines`) edits its bank
with :func:`edit_registers`; an edit by class takes the registers bound to the class in training
(``register_supervision: attention``, :func:`class_registers`) or those that carry it in the
register-class association table (:func:`registers_for_class`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from anatldm.errors import ConfigError, read_json
from anatldm.models.registers import RegisterEdit, apply_register_edits

__all__ = [
    "EditedRegisters",
    "NoRegisterForClassError",
    "class_registers",
    "edit_registers",
    "load_association",
    "load_register_bank",
    "registers_for_class",
]

logger = logging.getLogger(__name__)

#: where an ``AnatomicalLDMTask`` checkpoint (``state_dict``) or a pipeline export keeps its bank
REGISTER_BANK_KEY = "denoiser.registers.tokens"


class NoRegisterForClassError(ConfigError):
    """The trained model has no register that carries the class an edit names (a property of
    the model, not a typo: ``anatldm test`` reports such an edit as skipped)."""


def registers_for_class(table: Tensor | np.ndarray, class_names: Sequence[str], name: str,
                        count: int) -> list[int]:
    """The ``count`` registers that carry class ``name``, most correlated first.

    A register carries a class when its correlation with it is positive and at least as large as
    with any other class, background included: scaling a register that follows the liver more
    than the kidney would move the liver when the kidney is asked for, and one that follows the
    background more would mostly move the background.

    Raises:
        ConfigError: if ``name`` is not a class (the message lists the known ones) or no
            register carries it.
    """
    names = list(class_names)
    if name not in names:
        raise ConfigError(f"unknown class '{name}' in a register edit; known classes: {', '.join(names)}")
    table = np.asarray(table, dtype=np.float64)  # (K, C)
    c = names.index(name)
    others = [j for j in range(len(names)) if j != c]
    column = table[:, c]
    rivals = table[:, others].max(axis=1) if others else np.full_like(column, -np.inf)
    order = [int(k) for k in np.argsort(-column, kind="stable") if column[k] > 0 and column[k] >= rivals[k]][:count]
    if not order:
        best = int(np.argmax(column))
        rival = names[others[int(np.argmax(table[best, others]))]] if others else "-"
        raise NoRegisterForClassError(f"no register carries '{name}': its largest correlation, {column[best]:.3f} (register "
                          f"{best}), is below that register's with '{rival}' ({rivals[best]:.3f}) or not positive; "
                          f"edit registers by index instead")
    return order


def load_association(path: str | Path, class_names: Sequence[str], num_registers: int) -> Tensor:
    """The ``(K, C)`` table of an ``association.json``, checked against the model's classes and bank."""
    path = Path(path)
    record = read_json(path, ConfigError, "model.association")
    try:
        table = torch.tensor(record["correlation"], dtype=torch.float32)
        classes = list(record["classes"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"model.association: {path} is not an association table ({err})") from None
    if classes != list(class_names) or tuple(table.shape) != (num_registers, len(class_names)):
        raise ConfigError(f"model.association: {path} is for classes {classes} and {table.shape[0]} registers; "
                          f"the model has {list(class_names)} and {num_registers}")
    return table


def load_register_bank(path: str) -> Tensor:
    """The learned ``(K, D)`` register tokens of an ``AnatomicalLDMTask`` checkpoint (weights
    only) or of a pipeline export (its folder or its ``.safetensors``), the ``source`` of a
    ``replace`` or ``interpolate`` edit."""
    source = Path(path)
    if source.is_dir() or source.suffix == ".safetensors":
        from safetensors.torch import load_file

        from anatldm.models.components import COMPONENT_WEIGHTS

        weights = source
        if source.is_dir():  # the denoiser component; a folder of the previous layout has one weights file
            weights = source / "denoiser" / COMPONENT_WEIGHTS
            weights = weights if weights.is_file() else source / "pipeline.safetensors"
        try:
            state = load_file(weights)
        except Exception as err:  # missing file, not safetensors
            raise ConfigError(f"{weights}: cannot read the pipeline weights ({err})") from None
        if weights.parent.name == "denoiser" and weights.name == COMPONENT_WEIGHTS:
            state = {f"denoiser.{key}": value for key, value in state.items()}
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            raise ConfigError(f"{path}: cannot read the checkpoint ({err})") from None
        state = checkpoint.get("state_dict", {})
    if REGISTER_BANK_KEY not in state:
        raise ConfigError(f"{path}: holds no register bank ('{REGISTER_BANK_KEY}' missing); is it a baseline?")
    return state[REGISTER_BANK_KEY]


def class_registers(names: Sequence[str], class_names: Sequence[str], register_groups: Sequence[Sequence[int]] | None,
                    association: Tensor | np.ndarray | Callable[[], Tensor] | None, per_class: int) -> list[int]:
    """The registers an edit of classes ``names`` touches, each once, in order.

    With ``register_groups`` (registers bound to the foreground classes in training) a class's own
    group; otherwise the ``per_class`` registers that carry it in the ``(K, C)`` ``association``
    table (or a callable computing it on first use; see :func:`registers_for_class`).

    Raises:
        ValueError: an edit of the background under bound registers (it owns none).
        NoRegisterForClassError: no register carries a named class.
    """
    class_names = list(class_names)
    if register_groups is not None:
        if class_names[0] in names:
            raise ValueError(f"'{class_names[0]}' owns no registers under register_supervision; "
                             "edit the foreground classes")
        return list(dict.fromkeys(k for name in names for k in register_groups[class_names.index(name) - 1]))
    table = association() if callable(association) else association
    if table is None:
        raise ValueError("edits by class need the register-class association of the model")
    return list(dict.fromkeys(k for name in names
                              for k in registers_for_class(table, class_names, name, per_class)))


@dataclass(frozen=True)
class EditedRegisters:
    """The ``(K, D)`` bank after the edits, and the registers each edit by class touched
    (``[{"classes": [...], "registers": [...]}]``, in edit order)."""

    tokens: Tensor
    applied: list[dict] = field(default_factory=list)


def edit_registers(tokens: Tensor, edits: Sequence[RegisterEdit],
                   resolve_classes: Callable[[Sequence[str]], list[int]] | None = None,
                   load_bank: Callable[[str], Tensor] = load_register_bank) -> EditedRegisters:
    """Apply ``edits`` in order to ``tokens`` (:func:`~anatldm.models.registers.apply_register_edits`);
    ``resolve_classes(names)`` gives the registers of an edit by class (e.g. a partial of
    :func:`class_registers`). Pure: the input bank is not changed, and what was applied is returned."""
    applied: list[dict] = []

    def resolve(names: Sequence[str]) -> list[int]:
        chosen = resolve_classes(names)
        applied.append({"classes": list(names), "registers": chosen})
        logger.info("edit of %s: registers %s", ", ".join(names), chosen)
        return chosen

    edited = apply_register_edits(tokens, list(edits), load_bank, resolve if resolve_classes is not None else None)
    return EditedRegisters(edited, applied)
