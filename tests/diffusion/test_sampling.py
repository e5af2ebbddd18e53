"""The sampling loop: the head's mask at t = 0, batch independence, a known one-step case."""

from __future__ import annotations

import pytest
import torch

from anatldm.diffusion import make_sampler, make_train_scheduler, sample_latents
from anatldm.diffusion.sampling import (
    GuidanceConfig,
    SamplingConfig,
    guided_prediction,
    initial_noise,
    step_generators,
)
from anatldm.errors import ConfigError
from anatldm.models.denoiser import AnatomicalDenoiser
from anatldm.models.registers import RegisterEdit

TINY = {"in_channels": 4, "channels": (8, 16), "attention_levels": (False, False), "norm_num_groups": 4,
        "num_head_channels": 4, "num_registers": 4, "register_dim": 8, "register_levels": (1,),
        "register_heads": 2, "head_levels": (0, 1), "head_channels": 8, "num_classes": 3}


def _denoiser() -> AnatomicalDenoiser:
    torch.manual_seed(0)
    model = AnatomicalDenoiser(**TINY).eval()
    for module in model.register_attention.values():  # non-zero output: the registers matter
        torch.nn.init.normal_(module.to_out.weight, std=0.1)
    return model


def test_head_mask_is_read_from_the_clean_latents_at_t0() -> None:
    model = _denoiser()
    noise = initial_noise([0, 1], (4, 8, 8))
    out = sample_latents(model, make_sampler("ddim", make_train_scheduler()), noise, 5, mask_size=(16, 16))
    with torch.no_grad():
        expected = model(out.latents, torch.zeros(2, dtype=torch.long), mask_size=(16, 16)).anatomy_logits
    torch.testing.assert_close(out.anatomy_logits, expected)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver++_sde", "unipc"])
def test_a_sample_does_not_depend_on_its_batch(sampler: str) -> None:
    model, train = _denoiser(), make_train_scheduler()

    def run(seeds: list[int]) -> torch.Tensor:
        out = sample_latents(model, make_sampler(sampler, train), initial_noise(seeds, (4, 8, 8)), 4,
                             generator=step_generators(seeds))
        return out.latents

    alone, first, second = run([7]), run([7, 3]), run([5, 7])
    torch.testing.assert_close(first[0], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second[1], alone[0], rtol=1e-4, atol=1e-5)


def test_step_noise_differs_from_the_initial_noise() -> None:
    draw = torch.randn((4, 8, 8), generator=step_generators([3])[0])
    assert not torch.allclose(draw, initial_noise([3], (4, 8, 8))[0])


def test_one_ddim_step_is_the_closed_form() -> None:
    """One DDIM step (eta 0) from the last training timestep T to the end of the chain, whose
    ``alpha_bar`` is ``alphas_cumprod[0]`` (``set_alpha_to_one=False``)::

        x0 = (x - sqrt(1 - a_T) eps) / sqrt(a_T);  out = sqrt(a_0) x0 + sqrt(1 - a_0) eps
    """
    model, train = _denoiser(), make_train_scheduler()
    noise = initial_noise([0], (4, 8, 8))
    out = sample_latents(model, make_sampler("ddim", train), noise, 1)
    t = torch.tensor([train.config.num_train_timesteps - 1])
    with torch.no_grad():
        eps = model(noise, t).sample
    alpha, final = train.alphas_cumprod[t], train.alphas_cumprod[0]
    x0 = (noise - (1 - alpha).sqrt() * eps) / alpha.sqrt()
    expected = final.sqrt() * x0 + (1 - final).sqrt() * eps
    torch.testing.assert_close(out.latents, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("settings", "message"), [
    ({"num_inference_steps": 0}, "model.sampling.num_inference_steps must be at least 1, got 0"),
    ({"sampler": "euler"}, "model.sampling.sampler must be one of"),
    ({"attention_steps": 0}, "model.sampling.attention_steps must be at least 1"),
    ({"anatomy_edits": {"liver": -1.0}}, "model.sampling.anatomy_edits.liver: the factor must be >= 0"),
    ({"register_edits": [{"operation": "scale", "factr": 2}]}, "model.sampling.register_edits: .* is not a register edit"),
    ({"guidance": {"kind": "cfg"}}, "model.sampling.guidance.kind must be 'none', 'registers' or 'autoguidance'"),
    ({"guidance": {"kind": "registers", "weight": -1.0}}, "model.sampling.guidance.weight must be >= 0, got -1.0"),
    ({"guidance": {"kind": "autoguidance"}}, "model.sampling.guidance.guide: autoguidance needs a guide"),
    ({"guidance": {"kind": "registers", "guide": "early.ckpt"}}, "model.sampling.guidance.guide is only read with"),
    ({"guidance": {"wieght": 2.0}}, "model.sampling.guidance: unknown key\\(s\\) wieght"),
])
def test_a_bad_sampling_setting_is_one_config_error_naming_its_key(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**settings)


def test_anatomy_edits_follow_the_register_edits() -> None:
    sampling = SamplingConfig(register_edits=[{"operation": "ablate", "registers": [0]}], anatomy_edits={"liver": 0.0})
    assert sampling.edits == [RegisterEdit("ablate", registers=[0]), RegisterEdit("scale", classes=["liver"], factor=0.0)]


def test_attention_is_a_mean_over_the_recorded_steps() -> None:
    out = sample_latents(_denoiser(), make_sampler("ddim", make_train_scheduler()), initial_noise([0], (4, 8, 8)), 2,
                         attention_steps=5)  # more than the 2 steps: averaged over 2
    torch.testing.assert_close(out.attention["up1"].sum(1), torch.ones(1, 4, 4))


def _sample(model: AnatomicalDenoiser, guidance: GuidanceConfig | None = None, guide=None, seeds=(3, 4)):
    seeds = list(seeds)
    return sample_latents(model, make_sampler("dpm_solver++_sde", make_train_scheduler()),
                          initial_noise(seeds, (4, 8, 8)), 5, mask_size=(16, 16), generator=step_generators(seeds),
                          guidance=guidance, guide=guide)


def _awake(model: AnatomicalDenoiser, seed: int = 0) -> AnatomicalDenoiser:
    """Non-zero output conv (MONAI starts it at zero): predictions then differ between models."""
    torch.manual_seed(seed)
    for p in model.unet.out.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model


def test_register_guidance_with_weight_one_is_the_unguided_sample_bit_for_bit() -> None:
    model = _awake(_denoiser())
    unguided = _sample(model)
    guided = _sample(model, GuidanceConfig(kind="registers", weight=1.0))
    assert torch.equal(guided.latents, unguided.latents)
    assert torch.equal(guided.anatomy_logits, unguided.anatomy_logits)
    assert (unguided.nfe, guided.nfe) == (5 + 1, 2 * 5 + 1)  # the head's t = 0 call is the model's alone
    stronger = _sample(model, GuidanceConfig(kind="registers", weight=2.0))
    assert not torch.allclose(stronger.latents, unguided.latents)


def _copy(model: AnatomicalDenoiser) -> AnatomicalDenoiser:
    """Another network with the same weights (a deep copy would share the hooks' state)."""
    other = AnatomicalDenoiser(**TINY).eval()
    other.load_state_dict(model.state_dict())
    return other


def test_autoguidance_by_the_model_itself_is_the_unguided_sample_for_any_weight() -> None:
    model = _awake(_denoiser())
    twin = _copy(model)
    unguided = _sample(model)
    for weight in (0.0, 2.5):
        guided = _sample(model, GuidanceConfig(kind="autoguidance", weight=weight, guide="twin"), twin)
        assert torch.equal(guided.latents, unguided.latents)
    weaker = _awake(_copy(model), seed=1)  # a worse guide: another output layer
    guided = _sample(model, GuidanceConfig(kind="autoguidance", weight=2.0, guide="weaker"), weaker)
    assert not torch.allclose(guided.latents, unguided.latents)


def test_guided_prediction_is_the_guidance_equation() -> None:
    model = _awake(_denoiser())
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    with torch.no_grad():
        eps, null = model(x, t).sample, model(x, t, use_registers=False).sample
        guided = guided_prediction(model, x, t, GuidanceConfig(kind="registers", weight=3.0)).sample
    assert not torch.allclose(eps, null)
    torch.testing.assert_close(guided, null + 3.0 * (eps - null))


def test_guidance_needs_what_it_guides_with() -> None:
    baseline = AnatomicalDenoiser(**{**TINY, "num_registers": 0}).eval()
    with pytest.raises(ConfigError, match="model.sampling.guidance.kind: register guidance needs a register bank"):
        _sample(baseline, GuidanceConfig(kind="registers"))
    with pytest.raises(ConfigError, match="model.sampling.guidance.guide: autoguidance needs the guide network"):
        _sample(baseline, GuidanceConfig(kind="autoguidance", guide="early.ckpt"))


def test_guidance_of_anatomy_conditioned_registers() -> None:
    """The guide sees the same anatomy condition as the model: guided by itself, unguided."""
    torch.manual_seed(0)
    model = _awake(AnatomicalDenoiser(**TINY, anatomy_conditioning=True).eval())
    for module in model.register_attention.values():
        torch.nn.init.normal_(module.to_out.weight, std=0.1)
    twin = AnatomicalDenoiser(**TINY, anatomy_conditioning=True).eval()
    twin.load_state_dict(model.state_dict())
    unguided = _sample(model)
    assert torch.equal(_sample(model, GuidanceConfig(kind="registers", weight=1.0)).latents, unguided.latents)
    assert torch.equal(_sample(model, GuidanceConfig(kind="autoguidance", weight=3.0, guide="twin"), twin).latents,
                       unguided.latents)
    assert not torch.allclose(_sample(model, GuidanceConfig(kind="registers", weight=2.0)).latents, unguided.latents)
