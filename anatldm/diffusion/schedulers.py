"""diffusers noise schedulers: one training schedule, five samplers built from its config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from anatldm.errors import ConfigError

__all__ = ["SAMPLERS", "NoiseScheduleConfig", "SamplerName", "make_sampler", "make_train_scheduler",
           "min_snr_weights"]

SamplerName = Literal["ddpm", "ddim", "dpm_solver++", "dpm_solver++_sde", "unipc"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm_solver++", "dpm_solver++_sde", "unipc")
PredictionType = Literal["epsilon", "v_prediction"]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]


@dataclass
class NoiseScheduleConfig:
    """The forward (noising) process and the loss weighting of training (YAML
    ``model.init_args.noise_schedule``); latent-diffusion defaults of Rombach et al.

    Args:
        num_train_timesteps: diffusion steps of the forward process.
        beta_schedule: diffusers beta schedule.
        beta_start: first beta.
        beta_end: last beta.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        min_snr_gamma: Min-SNR-gamma loss weighting (Hang et al., ICCV 2023); ``None`` for the plain MSE.
    """

    #: where these settings sit in a config: errors name ``<key>.<field>``
    key = "model.noise_schedule"

    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction_type: PredictionType = "epsilon"
    min_snr_gamma: float | None = 5.0

    def __post_init__(self) -> None:
        key = self.key
        if self.num_train_timesteps < 1:
            raise ConfigError(f"{key}.num_train_timesteps must be at least 1, got {self.num_train_timesteps}")
        if self.beta_schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            raise ConfigError(f"{key}.beta_schedule must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2', "
                              f"got '{self.beta_schedule}'")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ConfigError(f"{key}.beta_start and {key}.beta_end must satisfy 0 < beta_start <= beta_end < 1, "
                              f"got {self.beta_start}, {self.beta_end}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"{key}.prediction_type must be 'epsilon' or 'v_prediction', got '{self.prediction_type}'")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ConfigError(f"{key}.min_snr_gamma must be positive or null, got {self.min_snr_gamma}")

    def scheduler_kwargs(self) -> dict:
        """The arguments of :func:`make_train_scheduler` (what a pipeline folder stores)."""
        kwargs = asdict(self)
        del kwargs["min_snr_gamma"]
        return kwargs


def make_train_scheduler(
    num_train_timesteps: int = NoiseScheduleConfig.num_train_timesteps,
    beta_schedule: BetaSchedule = NoiseScheduleConfig.beta_schedule,
    beta_start: float = NoiseScheduleConfig.beta_start,
    beta_end: float = NoiseScheduleConfig.beta_end,
    prediction_type: PredictionType = NoiseScheduleConfig.prediction_type,
) -> DDPMScheduler:
    """The DDPM forward process used in training (latent-diffusion defaults of Rombach et al.).

    ``clip_sample`` is off: latents are not bounded to [-1, 1].
    """
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         beta_start=beta_start, beta_end=beta_end, prediction_type=prediction_type,
                         clip_sample=False)


def make_sampler(name: SamplerName, train_scheduler: DDPMScheduler) -> SchedulerMixin:
    """A fresh sampler sharing the training schedule's betas and prediction type.

    ``ddpm``: ancestral sampling (Ho et al., 2020); ``ddim``: deterministic DDIM, eta 0 (Song et
    al., 2021); ``dpm_solver++``: second-order multistep DPM-Solver++ (Lu et al., 2022), and
    ``dpm_solver++_sde`` its stochastic variant (SDE-DPM-Solver++(2M), noise per step);
    ``unipc``: UniPC, second-order predictor-corrector (Zhao et al., 2023). All use trailing
    timestep spacing (the last step starts at t = T - 1). Samplers keep state between steps,
    so build one per sampling run.
    """
    config = train_scheduler.config
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, timestep_spacing="trailing",
                                         set_alpha_to_one=False)
    if name == "dpm_solver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       timestep_spacing="trailing")
    if name == "dpm_solver++_sde":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="sde-dpmsolver++", solver_order=2,
                                                       timestep_spacing="trailing")
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(config, solver_order=2, timestep_spacing="trailing")
    raise ValueError(f"unknown sampler '{name}'; expected one of {SAMPLERS}")


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al., ICCV 2023), shape ``(B,)``.

    ``min(SNR, gamma) / SNR`` for epsilon prediction, ``min(SNR, gamma) / (SNR + 1)`` for v.
    """
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]  # (B,)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    clipped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr
