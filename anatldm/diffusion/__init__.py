"""Noise schedules and samplers (diffusers), the sampling loop, min-SNR weighting."""

from anatldm.diffusion.sampling import SampleOutput, sample_latents
from anatldm.diffusion.schedulers import (
    SAMPLERS,
    make_sampler,
    make_train_scheduler,
    min_snr_weights,
)

__all__ = ["SAMPLERS", "SampleOutput", "make_sampler", "make_train_scheduler", "min_snr_weights", "sample_latents"]
