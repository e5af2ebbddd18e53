"""The sampler factory and Min-SNR weights."""

from __future__ import annotations

import pytest
import torch

from anatldm.diffusion import SAMPLERS, make_sampler, make_train_scheduler, min_snr_weights
from anatldm.diffusion.schedulers import NoiseScheduleConfig
from anatldm.diffusion.training import TrainingOptions
from anatldm.errors import ConfigError


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_shares_the_training_schedule(name: str) -> None:
    train = make_train_scheduler(prediction_type="v_prediction")
    sampler = make_sampler(name, train)
    torch.testing.assert_close(sampler.alphas_cumprod, train.alphas_cumprod)
    assert sampler.config.prediction_type == "v_prediction"
    sampler.set_timesteps(20)
    assert len(sampler.timesteps) == 20 and int(sampler.timesteps[0]) == (999 if name != "ddpm" else 950)
    assert make_sampler(name, train) is not sampler  # a fresh one per run


def test_unknown_sampler() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        make_sampler("euler", make_train_scheduler())


def test_min_snr_weights() -> None:
    train = make_train_scheduler()
    t = torch.tensor([0, 500, 999])
    snr = train.alphas_cumprod[t] / (1 - train.alphas_cumprod[t])
    torch.testing.assert_close(min_snr_weights(train, t, 5.0), torch.clamp(snr, max=5.0) / snr)
    assert min_snr_weights(train, t, 5.0)[0] < 0.01 and min_snr_weights(train, t, 5.0)[2] == 1.0
    v = make_train_scheduler(prediction_type="v_prediction")
    torch.testing.assert_close(min_snr_weights(v, t, 5.0), torch.clamp(snr, max=5.0) / (snr + 1))


@pytest.mark.parametrize(("config", "settings", "message"), [
    (NoiseScheduleConfig, {"num_train_timesteps": 0}, "model.noise_schedule.num_train_timesteps must be at least 1"),
    (NoiseScheduleConfig, {"beta_start": 0.1, "beta_end": 0.01}, "model.noise_schedule.beta_start and"),
    (NoiseScheduleConfig, {"prediction_type": "sample"}, "model.noise_schedule.prediction_type must be"),
    (NoiseScheduleConfig, {"min_snr_gamma": 0.0}, "model.noise_schedule.min_snr_gamma must be positive or null"),
    (TrainingOptions, {"max_nonfinite_steps": 0}, "model.training.max_nonfinite_steps must be at least 1"),
    (TrainingOptions, {"grad_norm_every_n_steps": -1}, "model.training.grad_norm_every_n_steps must be >= 0"),
])
def test_a_bad_schedule_or_training_setting_names_its_key(config, settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**settings)


def test_the_schedule_config_builds_the_training_scheduler() -> None:
    config = NoiseScheduleConfig(num_train_timesteps=10, prediction_type="v_prediction")
    scheduler = make_train_scheduler(**config.scheduler_kwargs())
    assert scheduler.config.num_train_timesteps == 10 and scheduler.config.prediction_type == "v_prediction"
