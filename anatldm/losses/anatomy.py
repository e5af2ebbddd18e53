"""The anatomy loss (Dice + cross-entropy) and its progressive weight schedule."""

from __future__ import annotations

import math
from typing import Literal

import torch
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["AnatomyLoss", "AnatomyWeightSchedule"]


class AnatomyLoss(nn.Module):
    """MONAI ``DiceCELoss`` on the head's logits ``(B, C, *S)`` against a label map ``(B, *S)``.

    Computed in float32 whatever the autocast precision.

    Args:
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        batch: Dice over the whole batch (one intersection / union per class) instead of one
            per slice; a class absent from a slice then no longer contributes a near-constant
            per-slice Dice term (MONAI ``DiceCELoss(batch=True)``).
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, batch: bool = False) -> None:
        super().__init__()
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                               batch=batch)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), mask.unsqueeze(1))  # mask (B, 1, *S)


class AnatomyWeightSchedule:
    """Progressive weight ``lambda(step)`` of the anatomy loss.

    ``lambda_max`` is held for the first ``warmup_fraction`` of ``total_steps``, then decays to
    ``lambda_min`` at ``total_steps`` (cosine by default, or linear), and stays there; ``constant``
    keeps ``lambda_max`` throughout. With ``lambda_max = 0`` the anatomy loss is off (baseline).

    Args:
        lambda_max: initial weight (2.0: anatomy emphasised first).
        lambda_min: final weight.
        warmup_fraction: fraction of the steps at ``lambda_max``, in [0, 1].
        decay: ``"cosine"``, ``"linear"`` or ``"constant"``.
        total_steps: steps of the whole run (the trainer's estimate when training).
    """

    def __init__(self, lambda_max: float = 2.0, lambda_min: float = 0.5, warmup_fraction: float = 0.2,
                 decay: Literal["cosine", "linear", "constant"] = "cosine", total_steps: int = 1000) -> None:
        if lambda_max < 0 or lambda_min < 0:
            raise ValueError(f"anatomy weights must be >= 0, got lambda_max={lambda_max}, lambda_min={lambda_min}")
        if lambda_min > lambda_max:
            raise ValueError(f"lambda_min ({lambda_min}) must not exceed lambda_max ({lambda_max})")
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must lie in [0, 1], got {warmup_fraction}")
        if decay not in ("cosine", "linear", "constant"):
            raise ValueError(f"decay must be 'cosine', 'linear' or 'constant', got '{decay}'")
        if total_steps < 1:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.lambda_max, self.lambda_min = float(lambda_max), float(lambda_min)
        self.warmup_fraction, self.decay, self.total_steps = float(warmup_fraction), decay, int(total_steps)

    def __call__(self, step: int) -> float:
        if self.decay == "constant":
            return self.lambda_max
        warmup_steps = self.warmup_fraction * self.total_steps
        if step <= warmup_steps:
            return self.lambda_max
        progress = min(1.0, (step - warmup_steps) / max(self.total_steps - warmup_steps, 1e-12))
        if self.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lambda_min + (self.lambda_max - self.lambda_min) * shape
