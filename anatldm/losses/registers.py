"""Binding registers to organs: the register-attention supervision loss."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RegisterAttentionLoss", "class_register_groups"]


def class_register_groups(num_registers: int, num_classes: int, per_class: int) -> list[list[int]]:
    """Registers assigned to each foreground class: class ``c >= 1`` owns registers
    ``(c - 1) * per_class ... c * per_class - 1``; the remaining ones are free (background and
    whatever the model wants to store). At least one register must stay free."""
    if per_class < 1:
        raise ValueError(f"registers per class must be at least 1, got {per_class}")
    assigned = (num_classes - 1) * per_class
    if assigned >= num_registers:
        raise ValueError(f"{num_classes - 1} classes x {per_class} registers need more than {assigned} "
                         f"registers (one stays free for the background); the bank has {num_registers}")
    return [list(range((c - 1) * per_class, c * per_class)) for c in range(1, num_classes)]


class RegisterAttentionLoss(nn.Module):
    """Aligns each class's registers' attention with that class's mask.

    For a register level with attention ``a_k(x)`` (softmax over the ``K`` registers at feature
    position ``x``, mean over heads), the attention of class ``c``'s registers is
    ``A_c(x) = sum_{k in R_c} a_k(x)`` and the free registers' ``A_0(x) = sum_{k free} a_k(x)``
    (``sum_c A_c = 1``). With ``M_c(x)`` the fraction of class ``c`` in the patch of the mask under
    ``x`` (area-downsampled one-hot mask, ``sum_c M_c = 1``)::

        L = mean_levels  sum_b w_b [ mean_x  - sum_c M_c(x) log A_c(x) ] / sum_b w_b

    a cross-entropy that routes attention to a class's registers where the class is (and to the
    free registers on background). ``w_b`` are the timestep weights of the anatomy loss (1 by
    default). An edit of class ``c``'s registers then acts where class ``c`` is.

    Args:
        groups: registers of each foreground class (:func:`class_register_groups`).
        num_registers: ``K``.
    """

    def __init__(self, groups: list[list[int]], num_registers: int) -> None:
        super().__init__()
        assignment = torch.zeros(len(groups) + 1, num_registers)  # (C, K): row 0 = free registers
        for c, registers in enumerate(groups, start=1):
            assignment[c, registers] = 1.0
        assignment[0] = 1.0 - assignment[1:].sum(0)
        self.register_buffer("assignment", assignment, persistent=False)

    def forward(self, attention: Mapping[str, torch.Tensor], mask: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """``attention``: per level ``(B, K, *s)``; ``mask (B, *S)`` integer; ``weights (B,)``."""
        if not attention:
            raise ValueError("register supervision needs the register attention maps")
        num_classes = self.assignment.shape[0]
        onehot = F.one_hot(mask.long(), num_classes).movedim(-1, 1).float()  # (B, C, *S)
        losses = []
        for maps in attention.values():
            target = F.interpolate(onehot, size=maps.shape[2:], mode="area")  # (B, C, *s)
            grouped = torch.einsum("ck,bk...->bc...", self.assignment.to(maps), maps.float())  # (B, C, *s)
            per_sample = -(target * grouped.clamp_min(1e-6).log()).sum(1).flatten(1).mean(1)  # (B,)
            if weights is None:
                losses.append(per_sample.mean())
            else:
                weights = weights.to(per_sample)
                total = weights.sum()
                losses.append((weights * per_sample).sum() / total if total > 0 else per_sample.sum() * 0.0)
        return torch.stack(losses).mean()
