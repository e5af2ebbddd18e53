"""The training forward of the LDM stage, :func:`anatldm.diffusion.training.diffusion_losses`, on
tiny real networks (MONAI ``AutoencoderKL`` and the anatomical denoiser)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL

from anatldm.diffusion import make_train_scheduler, min_snr_weights
from anatldm.diffusion.schedulers import NoiseScheduleConfig
from anatldm.diffusion.training import diffusion_losses
from anatldm.losses import AnatomyLoss, TimestepWeighting
from anatldm.models.denoiser import AnatomicalDenoiser

NUM_CLASSES = 3
SCALE = torch.tensor(0.7)


def _networks(num_classes: int) -> tuple[AutoencoderKL, AnatomicalDenoiser]:
    torch.manual_seed(0)
    autoencoder = AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 8), latent_channels=4,
                                num_res_blocks=1, norm_num_groups=4, attention_levels=(False, False),
                                with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False).eval()
    denoiser = AnatomicalDenoiser(in_channels=4, channels=(8, 16), attention_levels=(False, False), norm_num_groups=4,
                                  num_head_channels=8, num_registers=2, register_dim=8, register_levels=(0,),
                                  register_heads=2, num_classes=num_classes, head_levels=(0, 1), head_channels=8)
    for p in denoiser.parameters():  # away from the zero-initialised projections
        torch.nn.init.normal_(p, std=0.2)
    return autoencoder, denoiser


def _batch(size: int) -> dict:
    generator = torch.Generator().manual_seed(size)
    return {"image": torch.rand(size, 1, 16, 16, generator=generator) * 2 - 1,
            "mask": torch.randint(0, NUM_CLASSES, (size, 16, 16), generator=generator)}


def _losses(batch: dict, head: bool, seeds, schedule: NoiseScheduleConfig | None = None, **kwargs):
    schedule = schedule or NoiseScheduleConfig(min_snr_gamma=None)
    autoencoder, denoiser = _networks(NUM_CLASSES if head else 0)
    scheduler = make_train_scheduler(**schedule.scheduler_kwargs())
    return diffusion_losses(
        batch, autoencoder=autoencoder, scale_factor=SCALE, denoiser=denoiser, scheduler=scheduler,
        noise_schedule=schedule, timestep_weighting=TimestepWeighting("none", scheduler.alphas_cumprod),
        anatomy_loss=AnatomyLoss() if head else None, register_loss=None, seeds=seeds, **kwargs), \
        (autoencoder, denoiser, scheduler)


@pytest.mark.parametrize("min_snr_gamma", [None, 5.0])
def test_a_seeded_sample_gives_the_mse_of_its_own_noise_and_timestep(min_snr_gamma: float | None) -> None:
    batch = _batch(2)
    schedule = NoiseScheduleConfig(min_snr_gamma=min_snr_gamma)
    (losses, _), (autoencoder, denoiser, scheduler) = _losses(batch, True, [11, 12], schedule)
    expected = []
    for index, seed in enumerate([11, 12]):  # eps, noise, timestep: drawn in this order from the seed
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            mu, sigma = autoencoder.encode(batch["image"][index:index + 1])
        eps = torch.randn(mu.shape[1:], generator=generator)
        noise = torch.randn(mu.shape[1:], generator=generator)[None]
        t = torch.randint(0, 1000, (1,), generator=generator)
        latent = (mu + sigma * eps) * SCALE
        prediction = denoiser(scheduler.add_noise(latent, noise, t), t).sample
        mse = F.mse_loss(prediction, noise)
        expected.append(mse * (min_snr_weights(scheduler, t, min_snr_gamma)[0] if min_snr_gamma else 1.0))
    torch.testing.assert_close(losses["diffusion_loss"], torch.stack(expected).mean())


@pytest.mark.parametrize("head", [True, False])
def test_the_anatomy_term_is_there_exactly_with_a_head(head: bool) -> None:
    (losses, logits), _ = _losses(_batch(2), head, [1, 2])
    assert set(losses) == ({"diffusion_loss", "anatomy_loss"} if head else {"diffusion_loss"})
    assert (logits is not None) == head
    if head:
        assert logits.shape == (2, NUM_CLASSES, 16, 16) and torch.isfinite(losses["anatomy_loss"])


def test_the_seeded_per_slice_losses_do_not_depend_on_the_batch() -> None:
    batch = _batch(3)
    (together, _), _ = _losses(batch, True, [5, 6, 7], per_slice=True)
    alone = [_losses({k: v[i:i + 1] for k, v in batch.items()}, True, [seed], per_slice=True)[0][0]
             for i, seed in enumerate([5, 6, 7])]
    for name in ("diffusion_loss", "anatomy_loss"):
        torch.testing.assert_close(together[name], torch.stack([a[name] for a in alone]).mean(), rtol=1e-5, atol=1e-6)


def test_v_prediction_targets_the_velocity() -> None:
    batch = _batch(1)
    schedule = NoiseScheduleConfig(prediction_type="v_prediction", min_snr_gamma=None)
    (losses, _), (autoencoder, denoiser, scheduler) = _losses(batch, False, [3], schedule)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        mu, sigma = autoencoder.encode(batch["image"])
    latent = (mu + sigma * torch.randn(mu.shape[1:], generator=generator)) * SCALE
    noise = torch.randn(mu.shape[1:], generator=generator)[None]
    t = torch.randint(0, 1000, (1,), generator=generator)
    prediction = denoiser(scheduler.add_noise(latent, noise, t), t).sample
    torch.testing.assert_close(losses["diffusion_loss"], F.mse_loss(prediction, scheduler.get_velocity(latent, noise, t)))
