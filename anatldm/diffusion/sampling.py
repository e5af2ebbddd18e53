"""The reverse-diffusion loop: mask-free sampling, the head's mask read from the clean latents."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from anatldm.models.denoiser import AnatomicalDenoiser

__all__ = ["SampleOutput", "initial_noise", "sample_latents", "step_generators"]

#: mixed with a sample's seed to seed its step noise, a stream distinct from its initial noise (the
#: same seed would repeat the initial noise as the first step's noise; torch's CPU generator reads
#: only the low 32 bits of a seed, so an offset such as 2**40 would not change the stream)
STEP_SEED_KEY = 0x5EED


@dataclass
class SampleOutput:
    """``latents (B, C, *S)`` at t = 0; ``anatomy_logits (B, classes, *mask_size)`` of one extra
    head call on those clean latents at t = 0, or ``None`` for a model without a head; per-level
    register ``attention`` maps averaged over the recorded steps, when asked for."""

    latents: torch.Tensor
    anatomy_logits: torch.Tensor | None
    attention: dict[str, torch.Tensor] | None = None


def initial_noise(seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise ``(B, *shape)`` where sample ``i`` depends only on ``seeds[i]`` (not on the batch)."""
    noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    return torch.stack(noise).to(device)


def step_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample for the step noise of stochastic samplers (DDPM, SDE solvers).

    diffusers draws sample ``i``'s noise from ``generators[i]`` (``randn_tensor`` with a list), so
    a sample does not depend on its batch; seeded from ``(seed, STEP_SEED_KEY)`` by NumPy's ``SeedSequence``, a stream
    distinct from the sample's initial noise. CPU generators give the same numbers on every device.
    """
    states = [np.random.SeedSequence((int(seed), STEP_SEED_KEY)).generate_state(1)[0] for seed in seeds]
    return [torch.Generator().manual_seed(int(state)) for state in states]


@torch.no_grad()
def sample_latents(
    denoiser: AnatomicalDenoiser,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    num_inference_steps: int,
    mask_size: Sequence[int] | None = None,
    registers: torch.Tensor | None = None,
    attention_steps: int = 0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SampleOutput:
    """Run the sampler from ``noise`` to clean latents; no mask or condition is needed.

    The head's mask comes from one more denoiser call on the final (clean) latents at t = 0, not
    from the last step's input (still noisy at t = 19 for DDIM-50): the mask describes the
    image that is decoded. The extra call costs one step.

    Args:
        denoiser: the trained denoiser (EMA weights in practice), in eval mode.
        scheduler: a fresh sampler from :func:`~anatldm.diffusion.make_sampler`.
        noise: initial latents ``(B, C, *S)``.
        num_inference_steps: denoiser calls.
        mask_size: spatial size of the head's mask (the image size).
        registers: edited ``(K, D)`` register tokens, or ``None`` for the learned bank.
        attention_steps: record register attention over the last this many steps (0: none).
        generator: randomness of stochastic samplers (DDPM): one generator, or one per sample
            (:func:`step_generators`, batch-independent samples).
        progress: called with ``(step, total)`` after each step.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    output = None
    attention: dict[str, torch.Tensor] = {}
    timesteps = scheduler.timesteps
    recorded = min(attention_steps, len(timesteps))  # maps are averaged over the steps recorded
    # deterministic samplers (UniPC) take no generator
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for index, t in enumerate(timesteps):
        record = index >= len(timesteps) - attention_steps
        model_input = scheduler.scale_model_input(latents, t)
        output = denoiser(model_input, t.expand(latents.shape[0]), mask_size=mask_size, registers=registers,
                          return_attention=record)
        if record:
            for name, maps in output.attention.items():
                attention[name] = attention.get(name, 0) + maps / recorded
        latents = scheduler.step(output.sample, t, latents, **step_kwargs).prev_sample
        if progress is not None:
            progress(index + 1, len(timesteps))
    logits = None
    if output is not None and output.anatomy_logits is not None:
        clean = torch.zeros(latents.shape[0], dtype=torch.long, device=latents.device)  # t = 0
        logits = denoiser(latents, clean, mask_size=mask_size, registers=registers).anatomy_logits
    return SampleOutput(latents, logits, attention or None)
