"""diffusers noise schedulers: one training schedule, five samplers built from its config."""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

__all__ = ["SAMPLERS", "SamplerName", "make_sampler", "make_train_scheduler", "min_snr_weights"]

SamplerName = Literal["ddpm", "ddim", "dpm_solver++", "dpm_solver++_sde", "unipc"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm_solver++", "dpm_solver++_sde", "unipc")
PredictionType = Literal["epsilon", "v_prediction"]


def make_train_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear",
    beta_start: float = 0.0015,
    beta_end: float = 0.0195,
    prediction_type: PredictionType = "epsilon",
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
