"""Interpretability and control through the register bank: attention maps, register-class
association, edits chosen by anatomy."""

from anatldm.interpret.association import (
    NoRegisterForClassError,
    RegisterAssociation,
    load_association,
    registers_for_class,
    save_association,
)
from anatldm.interpret.attention import attention_at_image_size, save_attention_panels

__all__ = [
    "NoRegisterForClassError",
    "RegisterAssociation",
    "attention_at_image_size",
    "load_association",
    "registers_for_class",
    "save_association",
    "save_attention_panels",
]
