"""The anatomy loss (Dice + cross-entropy) and its progressive weight schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from anatldm.errors import ConfigError

__all__ = ["AnatomyGradientBalance", "AnatomyLoss", "AnatomyLossConfig", "AnatomyWeightSchedule", "TimestepWeighting"]

TimestepWeightingMode = Literal["none", "alpha_bar", "snr_cutoff"]
Decay = Literal["cosine", "linear", "constant"]


@dataclass
class AnatomyLossConfig:
    """The anatomy loss and its progressive weight (YAML ``model.init_args.anatomy_loss``).

    The training objective is ``L_diffusion + lambda(step) * DiceCE_w(head logits, mask)`` with
    ``lambda`` the :class:`AnatomyWeightSchedule` of ``weight``, ``weight_min``,
    ``warmup_fraction`` and ``decay``. ``weight: 0`` switches the loss *and the head* off (the
    standard LDM baseline): the head exists exactly when this loss does.

    Args:
        weight: ``lambda_max``, held for the warm-up; 0 builds no head (baseline).
        weight_min: ``lambda_min`` reached at the end of training (capped at ``weight``).
        warmup_fraction: fraction of training steps held at ``lambda_max``, in [0, 1].
        decay: ``"cosine"``, ``"linear"`` or ``"constant"``.
        timestep_weighting: per-sample weight of the anatomy (and register-attention) loss by
            timestep: ``"none"`` (``w = 1``), ``"alpha_bar"`` (``w = alpha_bar_t``) or
            ``"snr_cutoff"`` (``w = 1[SNR(t) >= snr_cutoff]``); see :class:`TimestepWeighting`.
        snr_cutoff: the SNR threshold of ``"snr_cutoff"``.
        dice_batch: Dice over the whole batch (MONAI ``DiceCELoss(batch=True)``): a class absent
            from a slice adds no near-constant per-slice term. Off by default: measured by the
            ablation (docs/results/ablation.json, same protocol), batch Dice gave a pooled
            plausibility change of -24.8 % vs +0.5 % for per-slice Dice, KID ratio 1.37 vs 1.07.
        max_gradient_ratio: keep ``||grad(anatomy term)|| / ||grad(diffusion term)||`` at most
            this value (:class:`AnatomyGradientBalance`: a running scale on the anatomy term,
            measured every ``gradient_balance_every_n_steps`` steps), so that ``lambda(step)``
            sets the balance it means to; ``None``: off.
        gradient_balance_every_n_steps: steps between two measurements of the two gradient
            norms (each costs two extra backward passes); read with ``max_gradient_ratio``.
    """

    #: where these settings sit in a config: errors name ``<key>.<field>``
    key = "model.anatomy_loss"

    weight: float = 2.0
    weight_min: float = 0.5
    warmup_fraction: float = 0.2
    decay: Decay = "cosine"
    timestep_weighting: TimestepWeightingMode = "none"
    snr_cutoff: float = 0.05
    dice_batch: bool = False
    max_gradient_ratio: float | None = None
    gradient_balance_every_n_steps: int = 10

    def __post_init__(self) -> None:
        key = self.key
        if not (self.weight >= 0 and self.weight_min >= 0):
            raise ConfigError(f"{key}.weight and {key}.weight_min must be >= 0, got {self.weight}, {self.weight_min}")
        if not 0 <= self.warmup_fraction <= 1:
            raise ConfigError(f"{key}.warmup_fraction must lie in [0, 1], got {self.warmup_fraction}")
        if self.decay not in ("cosine", "linear", "constant"):
            raise ConfigError(f"{key}.decay must be 'cosine', 'linear' or 'constant', got '{self.decay}'")
        if self.timestep_weighting not in ("none", "alpha_bar", "snr_cutoff"):
            raise ConfigError(f"{key}.timestep_weighting must be 'none', 'alpha_bar' or 'snr_cutoff', "
                              f"got '{self.timestep_weighting}'")
        if not self.snr_cutoff > 0:
            raise ConfigError(f"{key}.snr_cutoff must be positive, got {self.snr_cutoff}")
        if self.max_gradient_ratio is not None and not self.max_gradient_ratio > 0:
            raise ConfigError(f"{key}.max_gradient_ratio must be positive (or null: off), got {self.max_gradient_ratio}")
        if self.gradient_balance_every_n_steps < 1:
            raise ConfigError(f"{key}.gradient_balance_every_n_steps must be at least 1, "
                              f"got {self.gradient_balance_every_n_steps}")

    @property
    def enabled(self) -> bool:
        """Whether the loss, and so the anatomy head, exists (``weight > 0``)."""
        return self.weight > 0


class AnatomyLoss(nn.Module):
    """MONAI ``DiceCELoss`` on the head's logits ``(B, C, *S)`` against a label map ``(B, *S)``.

    Computed in float32 whatever the autocast precision. With per-sample ``weights`` (the
    timestep weighting of :class:`TimestepWeighting`) the same loss is a weighted average over
    the batch, written out because MONAI's losses take no sample weights: with ``p`` the softmax,
    ``g`` the one-hot mask, ``w_b`` the weights and ``s = 1e-5`` (MONAI's smoothing)::

        Dice_c = 1 - (2 sum_b w_b sum_x p g + s) / (sum_b w_b sum_x (p + g) + s)   (batch=True)
        Dice_c = sum_b w_b [1 - (2 sum_x p g + s) / (sum_x (p + g) + s)] / sum_b w_b   (batch=False)
        CE     = sum_b w_b mean_x(-log p_y) / sum_b w_b
        L      = lambda_dice * mean_c Dice_c + lambda_ce * CE

    Equal weights give MONAI's ``DiceCELoss`` (tested); all-zero weights give 0 (with a gradient
    graph).

    Args:
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        batch: Dice over the whole batch (one intersection / union per class) instead of one
            per slice; a class absent from a slice then no longer contributes a near-constant
            per-slice Dice term (MONAI ``DiceCELoss(batch=True)``).
    """

    smooth = 1e-5  # MONAI DiceLoss's smooth_nr and smooth_dr

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, batch: bool = False) -> None:
        super().__init__()
        self.lambda_dice, self.lambda_ce, self.batch = lambda_dice, lambda_ce, batch
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                               batch=batch)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``logits (B, C, *S)``, ``mask (B, *S)`` integer, optional ``weights (B,) >= 0``."""
        if weights is None:
            return self.loss(logits.float(), mask.unsqueeze(1))  # mask (B, 1, *S)
        logits, weights = logits.float(), weights.float().to(logits.device)
        total = weights.sum()
        if not total > 0:
            return logits.sum() * 0.0
        dims = tuple(range(2, logits.ndim))
        log_p = torch.log_softmax(logits, dim=1)  # (B, C, *S)
        p = log_p.exp()
        g = F.one_hot(mask.long(), logits.shape[1]).movedim(-1, 1).to(p)  # (B, C, *S)
        intersection, cardinality = (p * g).sum(dims), (p + g).sum(dims)  # (B, C)
        if self.batch:
            dice = 1 - (2 * (weights[:, None] * intersection).sum(0) + self.smooth) / (
                (weights[:, None] * cardinality).sum(0) + self.smooth)  # (C,)
        else:
            per_sample = 1 - (2 * intersection + self.smooth) / (cardinality + self.smooth)  # (B, C)
            dice = (weights[:, None] * per_sample).sum(0) / total  # (C,)
        ce = -(log_p * g).sum(1).flatten(1).mean(1)  # (B,)
        return self.lambda_dice * dice.mean() + self.lambda_ce * (weights * ce).sum() / total


class TimestepWeighting:
    """Per-sample weight of the anatomy supervision at diffusion timestep ``t``.

    With ``alpha_bar_t`` the training schedule's cumulative signal fraction and
    ``SNR(t) = alpha_bar_t / (1 - alpha_bar_t)``:

    - ``none``: ``w(t) = 1`` (the method's literal form: every timestep supervised alike);
    - ``alpha_bar``: ``w(t) = alpha_bar_t = SNR / (1 + SNR)``, the share of signal in the noisy
      latent: full weight at low noise, about 0 where the head cannot see the anatomy;
    - ``snr_cutoff``: ``w(t) = 1[SNR(t) >= snr_cutoff]``: supervision only where the latent still
      holds some signal (``snr_cutoff = 0.05`` drops ``t > ~600`` of the default schedule).

    The weighted loss is a weighted *average* over the batch (:class:`AnatomyLoss`), so the
    weighting changes which timesteps the head learns from, not the loss scale.

    Args:
        mode: ``"none"``, ``"alpha_bar"`` or ``"snr_cutoff"``.
        alphas_cumprod: ``alpha_bar_t`` of the training schedule, ``(T,)``.
        snr_cutoff: the threshold of ``snr_cutoff``, > 0.
    """

    def __init__(self, mode: Literal["none", "alpha_bar", "snr_cutoff"], alphas_cumprod: torch.Tensor,
                 snr_cutoff: float = 0.05) -> None:
        if mode not in ("none", "alpha_bar", "snr_cutoff"):
            raise ValueError(f"timestep weighting must be 'none', 'alpha_bar' or 'snr_cutoff', got '{mode}'")
        if not snr_cutoff > 0:
            raise ValueError(f"snr_cutoff must be positive, got {snr_cutoff}")
        self.mode, self.snr_cutoff = mode, float(snr_cutoff)
        self.alphas_cumprod = alphas_cumprod.double()

    def __call__(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Weights ``(B,)`` of ``timesteps (B,)``, or ``None`` for ``none`` (plain MONAI loss)."""
        if self.mode == "none":
            return None
        alpha = self.alphas_cumprod.to(timesteps.device)[timesteps]  # (B,)
        if self.mode == "alpha_bar":
            return alpha.float()
        return (alpha / (1 - alpha) >= self.snr_cutoff).float()


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

    @classmethod
    def from_config(cls, config: AnatomyLossConfig, total_steps: int) -> AnatomyWeightSchedule:
        """The schedule of ``config`` over ``total_steps`` (at least 1) training steps."""
        return cls(lambda_max=config.weight, lambda_min=min(config.weight_min, config.weight),
                   warmup_fraction=config.warmup_fraction, decay=config.decay, total_steps=max(int(total_steps), 1))

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


class AnatomyGradientBalance:
    """A running scale ``s`` on the anatomy term that keeps its gradient within ``max_ratio`` of
    the diffusion term's.

    Every ``every_n_steps`` steps (and on the first step it sees) the gradient norms ``a`` of the
    weighted anatomy term ``lambda(step) * L_anat`` and ``d`` of ``L_diffusion`` are measured
    over the denoiser's parameters, and::

        s = min(1, max_ratio * d / a)        # the term entering the loss: s * lambda(step) * L_anat

    so the measured ratio of the term as trained, ``s * a / d``, is at most ``max_ratio``; ``s``
    is held until the next measurement (no extra backward pass on the other steps) and returns
    to 1 once the anatomy gradient falls below the bound.

    Args:
        max_ratio: the bound on ``||grad anatomy|| / ||grad diffusion||``, > 0.
        every_n_steps: steps between two measurements, >= 1.
    """

    def __init__(self, max_ratio: float, every_n_steps: int = 10) -> None:
        if not max_ratio > 0:
            raise ValueError(f"max_ratio must be positive, got {max_ratio}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.max_ratio, self.every_n_steps = float(max_ratio), int(every_n_steps)
        self.scale: float | None = None  # None: not measured yet (a new or resumed run)

    @classmethod
    def from_config(cls, config: AnatomyLossConfig) -> AnatomyGradientBalance | None:
        """The balance of ``config``, or ``None`` when ``max_gradient_ratio`` is off."""
        if config.max_gradient_ratio is None:
            return None
        return cls(config.max_gradient_ratio, config.gradient_balance_every_n_steps)

    def due(self, step: int) -> bool:
        """Whether ``step`` measures the two norms."""
        return self.scale is None or step % self.every_n_steps == 0

    def update(self, anatomy_norm: float, diffusion_norm: float) -> tuple[float, float]:
        """The new scale from the two measured norms, and the ratio of the scaled term ``s * a / d``."""
        anatomy_norm, diffusion_norm = float(anatomy_norm), float(diffusion_norm)
        if not (math.isfinite(anatomy_norm) and math.isfinite(diffusion_norm)) or anatomy_norm <= 0:
            self.scale = 1.0 if self.scale is None else self.scale
        else:
            self.scale = min(1.0, self.max_ratio * diffusion_norm / anatomy_norm)
        ratio = self.scale * anatomy_norm / diffusion_norm if diffusion_norm > 0 else math.inf
        return self.scale, ratio
