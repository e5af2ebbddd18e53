"""The anatomical register bank and the edits used for controllable generation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

__all__ = [
    "DEFAULT_REGISTER_INIT_STD",
    "AnatomicalRegisterBank",
    "RegisterEdit",
    "ablate_registers",
    "apply_register_edits",
    "interpolate_registers",
    "replace_registers",
    "scale_registers",
]

#: standard deviation of the registers' normal initialisation: the one default of the bank, of
#: ``AnatomicalDenoiser`` and of ``AnatomicalLDMTask`` (see ``AnatomicalDenoiser``'s docstring)
DEFAULT_REGISTER_INIT_STD = 1.0


class AnatomicalRegisterBank(nn.Module):
    """``K`` learnable tokens of width ``D``: the implicit anatomical memory of the denoiser.

    The same bank is the cross-attention context of every sample (no mask, no condition at
    inference); what each sample reads from it depends on its own features. Registers in the
    spirit of Darcet et al., "Vision Transformers Need Registers" (ICLR 2024), used here as a
    memory the UNet attends to, as in the Anatomical LDM method (docs/method.md, section 5).

    Args:
        num_registers: number of tokens ``K`` (at least 1).
        dim: token width ``D``.
        init_std: standard deviation of the normal initialisation.
    """

    def __init__(self, num_registers: int, dim: int, init_std: float = DEFAULT_REGISTER_INIT_STD) -> None:
        super().__init__()
        if num_registers < 1:
            raise ValueError(f"num_registers must be at least 1, got {num_registers}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.tokens = nn.Parameter(torch.randn(num_registers, dim) * init_std)  # (K, D)

    @property
    def num_registers(self) -> int:
        return self.tokens.shape[0]

    @property
    def dim(self) -> int:
        return self.tokens.shape[1]

    def forward(self, batch_size: int, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The bank (or edited ``tokens`` of the same shape) expanded to ``(B, K, D)``."""
        tokens = self.tokens if tokens is None else tokens
        if tokens.shape != self.tokens.shape:
            raise ValueError(f"edited registers have shape {tuple(tokens.shape)}, "
                             f"the bank {tuple(self.tokens.shape)}")
        return tokens.unsqueeze(0).expand(batch_size, -1, -1)  # (B, K, D)


def _select(tokens: torch.Tensor, indices: Sequence[int] | None) -> torch.Tensor:
    """Boolean row mask ``(K, 1)`` of the chosen registers (all when ``indices`` is None)."""
    rows = torch.zeros(tokens.shape[0], 1, dtype=torch.bool, device=tokens.device)
    if indices is None:
        rows[:] = True
        return rows
    for index in indices:
        if not -tokens.shape[0] <= index < tokens.shape[0]:
            raise ValueError(f"register index {index} out of range for a bank of {tokens.shape[0]}")
        rows[index] = True
    return rows


def scale_registers(tokens: torch.Tensor, factor: float, indices: Sequence[int] | None = None) -> torch.Tensor:
    """Multiply the chosen registers by ``factor`` (1.0 leaves them bit-identical)."""
    return torch.where(_select(tokens, indices), tokens * factor, tokens)


def ablate_registers(tokens: torch.Tensor, indices: Sequence[int] | None = None) -> torch.Tensor:
    """Set the chosen registers to zero."""
    return torch.where(_select(tokens, indices), torch.zeros_like(tokens), tokens)


def replace_registers(tokens: torch.Tensor, source: torch.Tensor,
                      indices: Sequence[int] | None = None) -> torch.Tensor:
    """Take the chosen registers from another bank ``source`` of the same shape."""
    if source.shape != tokens.shape:
        raise ValueError(f"source bank has shape {tuple(source.shape)}, expected {tuple(tokens.shape)}")
    return torch.where(_select(tokens, indices), source.to(tokens), tokens)


def interpolate_registers(tokens: torch.Tensor, other: torch.Tensor, alpha: float,
                          indices: Sequence[int] | None = None) -> torch.Tensor:
    """Linear interpolation ``(1 - alpha) * tokens + alpha * other`` on the chosen registers."""
    if other.shape != tokens.shape:
        raise ValueError(f"other bank has shape {tuple(other.shape)}, expected {tuple(tokens.shape)}")
    return torch.where(_select(tokens, indices), torch.lerp(tokens, other.to(tokens), alpha), tokens)


@dataclass
class RegisterEdit:
    """One edit of the register bank, applied at sampling time.

    Args:
        operation: ``"scale"`` (by ``factor``), ``"ablate"`` (set to zero), ``"replace"`` (take
            the registers of the bank in ``source``) or ``"interpolate"`` (towards the bank in
            ``source`` by ``alpha``).
        registers: indices of the edited registers; ``None`` (and no ``classes``) edits all.
        classes: edit the registers most associated with these classes instead of giving
            indices (controllable generation by anatomy; see :mod:`anatldm.interpret`).
        factor: scale factor of ``"scale"``.
        alpha: interpolation weight of ``"interpolate"`` (0 keeps the bank, 1 is ``source``).
        source: checkpoint holding the other bank of ``"replace"`` and ``"interpolate"``.
    """

    operation: Literal["scale", "ablate", "replace", "interpolate"]
    registers: list[int] | None = None
    classes: list[str] | None = None
    factor: float = 1.0
    alpha: float = 0.5
    source: str | None = None


def apply_register_edits(tokens: torch.Tensor, edits: Sequence[RegisterEdit],
                         load_bank: Callable[[str], torch.Tensor],
                         resolve_classes: Callable[[Sequence[str]], list[int]] | None = None) -> torch.Tensor:
    """Apply ``edits`` in order to the ``(K, D)`` bank ``tokens``; ``load_bank(source)`` reads
    another bank for ``replace`` and ``interpolate``; ``resolve_classes(names)`` gives the
    registers of an edit that names ``classes``."""
    for edit in edits:
        if edit.classes:
            if edit.registers is not None:
                raise ValueError("an edit names either 'registers' or 'classes', not both")
            if resolve_classes is None:
                raise ValueError("edits by class need the register-class association of the model")
            edit = replace(edit, registers=resolve_classes(edit.classes), classes=None)
        if edit.operation == "scale":
            tokens = scale_registers(tokens, edit.factor, edit.registers)
        elif edit.operation == "ablate":
            tokens = ablate_registers(tokens, edit.registers)
        elif edit.operation in ("replace", "interpolate"):
            if edit.source is None:
                raise ValueError(f"the '{edit.operation}' edit needs a 'source' checkpoint")
            other = load_bank(edit.source)
            tokens = (replace_registers(tokens, other, edit.registers) if edit.operation == "replace"
                      else interpolate_registers(tokens, other, edit.alpha, edit.registers))
        else:
            raise ValueError(f"unknown register edit '{edit.operation}'; expected scale, ablate, "
                             f"replace or interpolate")
    return tokens
