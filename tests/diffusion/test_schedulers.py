"""The sampler factory and Min-SNR weights."""

from __future__ import annotations

import pytest
import torch

from anatldm.diffusion import SAMPLERS, make_sampler, make_train_scheduler, min_snr_weights


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
