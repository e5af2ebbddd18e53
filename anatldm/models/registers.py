"""The anatomical register bank and the edits used for controllable generation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from anatldm.errors import ConfigError

__all__ = [
    "DEFAULT_REGISTER_DIM",
    "DEFAULT_REGISTER_INIT_STD",
    "AnatomicalRegisterBank",
    "RegisterConfig",
    "RegisterEdit",
    "RegisterMode",
    "ablate_registers",
    "apply_register_edits",
    "interpolate_registers",
    "replace_registers",
    "scale_registers",
]

#: standard deviation of the registers' normal initialisation: the one default of the bank, of
#: ``AnatomicalDenoiser`` and of ``AnatomicalLDMTask`` (see ``AnatomicalDenoiser``'s docstring)
DEFAULT_REGISTER_INIT_STD = 1.0
#: register token width ``D``
DEFAULT_REGISTER_DIM = 256

RegisterMode = Literal["read", "read_write"]


@dataclass
class RegisterConfig:
    """The register bank of the denoiser (YAML ``model.init_args.denoiser.registers``).

    Args:
        num_registers: register tokens ``K``; 0 builds the standard LDM baseline (no bank).
        dim: register width ``D``.
        init_std: standard deviation of the registers' normal initialisation. Tokens enter the
            keys without a norm, so small tokens give near-uniform attention (every register
            read everywhere, a bias rather than a memory); 1.0 gives attention logits of about
            unit scale at the start.
        levels: UNet levels (0 = latent resolution) whose decoder blocks cross-attend to the registers.
        heads: heads of the register cross-attention.
        encoder: the encoder blocks of ``levels`` cross-attend too.
        mode: ``"read"`` (the same bank for every sample, the method's literal form) or
            ``"read_write"`` (the tokens first read each register level's features, then the
            features read the updated tokens; :class:`~anatldm.models.denoiser.RegisterWrite`).
        supervision: ``"none"``, or ``"attention"``: class ``c`` owns ``supervised_per_class``
            registers (the rest are free) and :class:`~anatldm.losses.RegisterAttentionLoss`
            aligns their attention with the class's mask; edits by class then use these
            registers (no association calibration). Needs the anatomy head.
        supervision_weight: weight of that loss in the training objective.
        supervised_per_class: registers owned by each foreground class with ``supervision: attention``.
        dropout: register dropout, in [0, 1]: in training, each sample's register path (every
            register cross-attention residual) is dropped with this probability, so the denoiser
            also learns the register-free ("null") prediction that register guidance needs
            (:class:`~anatldm.diffusion.sampling.GuidanceConfig`, ``kind: registers``). 0: off.
        anatomy_conditioning: the tokens respond to the sample: at each denoiser call they are
            the bank plus an offset computed from the anatomy head's soft prediction of the
            previous sampling step (:class:`~anatldm.models.anatomy_conditioning.AnatomyTokenConditioner`;
            zeros at the first step). Trained with self-conditioning (``self_condition_rate``).
            Needs the anatomy head. Off by default (the method's literal form).
        self_condition_rate: with ``anatomy_conditioning``, the share of training batches whose
            condition is the head's prediction of a first no-grad pass on the same noisy latents
            (Chen et al. 2023, "Analog Bits"); the others get zeros, as the first sampling step.
    """

    #: where these settings sit in a config: errors name ``<key>.<field>``
    key = "model.denoiser.registers"

    num_registers: int = 16
    dim: int = DEFAULT_REGISTER_DIM
    init_std: float = DEFAULT_REGISTER_INIT_STD
    levels: tuple[int, ...] = (1, 2)
    heads: int = 4
    encoder: bool = False
    mode: RegisterMode = "read"
    supervision: Literal["none", "attention"] = "none"
    supervision_weight: float = 0.5
    supervised_per_class: int = 2
    dropout: float = 0.0
    anatomy_conditioning: bool = False
    self_condition_rate: float = 0.5

    def __post_init__(self) -> None:
        self.levels = tuple(int(level) for level in self.levels)
        key = self.key
        if self.num_registers < 0:
            raise ConfigError(f"{key}.num_registers must be >= 0, got {self.num_registers}")
        for name in ("dim", "heads", "supervised_per_class"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be at least 1, got {getattr(self, name)}")
        if not self.init_std > 0:
            raise ConfigError(f"{key}.init_std must be positive, got {self.init_std}")
        if self.mode not in ("read", "read_write"):
            raise ConfigError(f"{key}.mode must be 'read' or 'read_write', got '{self.mode}'")
        if self.supervision not in ("none", "attention"):
            raise ConfigError(f"{key}.supervision must be 'none' or 'attention', got '{self.supervision}'")
        if self.supervision != "none" and not self.num_registers:
            raise ConfigError(f"{key}.supervision needs a register bank, but num_registers is 0")
        if self.supervision_weight < 0:
            raise ConfigError(f"{key}.supervision_weight must be >= 0, got {self.supervision_weight}")
        if not 0 <= self.dropout <= 1:
            raise ConfigError(f"{key}.dropout must lie in [0, 1], got {self.dropout}")
        if self.dropout and not self.num_registers:
            raise ConfigError(f"{key}.dropout needs a register bank, but num_registers is 0")
        if self.anatomy_conditioning and not self.num_registers:
            raise ConfigError(f"{key}.anatomy_conditioning needs a register bank, but num_registers is 0")
        if not 0 <= self.self_condition_rate <= 1:
            raise ConfigError(f"{key}.self_condition_rate must lie in [0, 1], got {self.self_condition_rate}")


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
