"""Anatomy-conditioned registers: tokens from the head's previous prediction, self-conditioning."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import AutoencoderKL

from anatldm.diffusion.sampling import sample_latents
from anatldm.diffusion.schedulers import make_sampler, make_train_scheduler
from anatldm.diffusion.training import diffusion_losses
from anatldm.errors import ConfigError
from anatldm.models.anatomy_conditioning import AnatomyTokenConditioner, soft_mask_statistics
from anatldm.models.denoiser import AnatomicalDenoiser
from anatldm.models.registers import RegisterConfig

TINY = {"in_channels": 4, "channels": (16, 32), "attention_levels": (False, True), "norm_num_groups": 8,
        "num_head_channels": 8, "num_registers": 4, "register_dim": 16, "register_levels": (0, 1),
        "num_classes": 3, "head_levels": (0, 1), "head_channels": 16}


def conditioned(seed: int = 0) -> AnatomicalDenoiser:
    """A conditioned denoiser whose conditioner is no longer zero (as after training)."""
    torch.manual_seed(seed)
    model = AnatomicalDenoiser(**TINY, anatomy_conditioning=True).eval()
    for p in [*model.anatomy_conditioner.parameters(), *model.register_attention.parameters(),
              *model.unet.out.parameters()]:
        torch.nn.init.normal_(p, std=0.3)
    return model


def test_statistics_are_area_centroid_and_spread() -> None:
    p = torch.zeros(1, 2, 8, 8)
    p[0, 0] = 1.0
    p[0, 1, 0:2, 6:8], p[0, 0, 0:2, 6:8] = 1.0, 0.0  # a 2x2 class-1 blob in the top right corner
    area, y, sy, x, sx = soft_mask_statistics(p)[0].tolist()
    assert area == pytest.approx(4 / 64)
    assert y < -0.7 and x > 0.7 and 0 < sy < 0.2 and 0 < sx < 0.2
    assert torch.equal(soft_mask_statistics(torch.zeros(3, 4, 8, 8)), torch.zeros(3, 3 * 5))


def test_a_new_conditioner_is_the_plain_bank_and_a_trained_one_responds_per_sample() -> None:
    bank = torch.randn(4, 16)
    fresh = AnatomyTokenConditioner(3, 4, 16)
    probabilities = torch.softmax(torch.randn(2, 3, 8, 8), 1)
    assert torch.equal(fresh(bank, probabilities), bank.expand(2, -1, -1))
    model = conditioned()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        plain = model(x, t).sample
        other = model(x, t, anatomy=probabilities).sample
        swapped = model(x, t, anatomy=probabilities.flip(0)).sample
    assert not torch.allclose(plain, other)
    assert not torch.allclose(other[0], swapped[0])  # sample 0's tokens follow sample 0's anatomy


def test_sampling_feeds_each_step_the_previous_prediction() -> None:
    model, seen = conditioned(), []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("anatomy")), with_kwargs=True)
    scheduler = make_sampler("ddim", make_train_scheduler())
    out = sample_latents(model, scheduler, torch.randn(2, 4, 8, 8), 3, mask_size=(16, 16))
    assert len(seen) == 4 and seen[0] is None  # three steps and the head's t = 0 call
    assert all(a is not None and a.shape == (2, 3, 16, 16) for a in seen[1:])
    assert torch.allclose(seen[1].sum(1), torch.ones(2, 16, 16))  # a soft label map
    assert out.anatomy_logits.shape == (2, 3, 16, 16)


def test_self_conditioning_is_a_no_grad_first_pass() -> None:
    model, calls = conditioned().train(), []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs.get("anatomy")), with_kwargs=True)
    scheduler = make_train_scheduler()
    batch = {"image": torch.randn(2, 1, 32, 32), "mask": torch.randint(0, 3, (2, 32, 32))}
    autoencoder = AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16), latent_channels=4,
                                num_res_blocks=1, norm_num_groups=8, attention_levels=(False, False),
                                with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)

    def losses(flag: bool):
        calls.clear()
        return diffusion_losses(batch, autoencoder=autoencoder, scale_factor=torch.tensor(1.0), denoiser=model,
                                scheduler=scheduler, noise_schedule=make_noise_schedule(), timestep_weighting=lambda t: None,
                                anatomy_loss=None, register_loss=None, generator=torch.Generator().manual_seed(0),
                                self_condition=flag)

    losses(False)
    assert calls == [None]
    losses(True)
    assert len(calls) == 2 and calls[0] is None and calls[1] is not None and not calls[1].requires_grad


def make_noise_schedule():
    from anatldm.diffusion.schedulers import NoiseScheduleConfig

    return NoiseScheduleConfig()


@pytest.mark.parametrize("kwargs, match", [
    ({"num_registers": 0, "anatomy_conditioning": True}, "anatomy_conditioning needs a register bank"),
    ({"self_condition_rate": 1.5}, "self_condition_rate must lie in \\[0, 1\\]"),
])
def test_config_errors_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=f"model.denoiser.registers.{match}"):
        RegisterConfig(**kwargs)


def test_the_denoiser_refuses_conditioning_without_a_head() -> None:
    with pytest.raises(ValueError, match="anatomy_conditioning needs a register bank and a head"):
        AnatomicalDenoiser(**{**TINY, "num_classes": 0}, anatomy_conditioning=True)
