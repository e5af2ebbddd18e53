"""The denoiser's config dataclasses: each bad value is one ConfigError naming its YAML key."""

from __future__ import annotations

import pytest

from anatldm.errors import ConfigError
from anatldm.models.anatomy_head import HeadConfig
from anatldm.models.denoiser import AnatomicalDenoiser, DenoiserConfig
from anatldm.models.registers import RegisterConfig

CASES = [
    (RegisterConfig, {"num_registers": -1}, "model.denoiser.registers.num_registers must be >= 0, got -1"),
    (RegisterConfig, {"dim": 0}, "model.denoiser.registers.dim must be at least 1"),
    (RegisterConfig, {"init_std": 0.0}, "model.denoiser.registers.init_std must be positive"),
    (RegisterConfig, {"mode": "write"}, "model.denoiser.registers.mode must be 'read' or 'read_write'"),
    (RegisterConfig, {"supervision": "mask"}, "model.denoiser.registers.supervision must be 'none' or 'attention'"),
    (RegisterConfig, {"num_registers": 0, "supervision": "attention"},
     "model.denoiser.registers.supervision needs a register bank"),
    (RegisterConfig, {"supervision_weight": -1.0}, "model.denoiser.registers.supervision_weight must be >= 0"),
    (RegisterConfig, {"dropout": 1.5}, "model.denoiser.registers.dropout must lie in \\[0, 1\\], got 1.5"),
    (RegisterConfig, {"dropout": -0.1}, "model.denoiser.registers.dropout must lie in \\[0, 1\\]"),
    (RegisterConfig, {"num_registers": 0, "dropout": 0.1}, "model.denoiser.registers.dropout needs a register bank"),
    (HeadConfig, {"levels": []}, "model.denoiser.head.levels must name at least one level"),
    (HeadConfig, {"channels": 0}, "model.denoiser.head.channels must be at least 1"),
    (HeadConfig, {"output_stride": 3}, "model.denoiser.head.output_stride must be a power of 2"),
    (HeadConfig, {"clean_fraction": 1.0}, "model.denoiser.head.clean_fraction must lie in \\[0, 1\\)"),
    (HeadConfig, {"image_features": True, "clean_fraction": 0.25},
     "model.denoiser.head.image_features needs learned upsampling stages .*output_stride, got None"),
    (HeadConfig, {"image_features": True, "output_stride": 1}, "clean_fraction > 0, got 0.0, or refine_steps > 0"),
    (HeadConfig, {"refine_steps": -1}, "model.denoiser.head.refine_steps must be >= 0 and refine_lr > 0"),
    (HeadConfig, {"refine_lr": 0.0}, "model.denoiser.head.refine_steps must be >= 0 and refine_lr > 0"),
    (DenoiserConfig, {"attention_levels": [False]}, "model.denoiser.attention_levels has 1 entries for the 3 levels"),
    (DenoiserConfig, {"num_res_blocks": 0}, "model.denoiser.num_res_blocks must be at least 1"),
    (DenoiserConfig, {"head": {"levels": [3]}}, "model.denoiser.head.levels \\[3\\] out of range for the 3 levels"),
    (DenoiserConfig, {"registers": {"heds": 2}}, "model.denoiser.registers: unknown key\\(s\\) heds"),
    (DenoiserConfig, {"head": {"refine_steps": 10}, "registers": {"anatomy_conditioning": True}},
     "model.denoiser.head.refine_steps: anatomy-conditioned registers read the head at every sampling step"),
]


@pytest.mark.parametrize(("config", "settings", "message"), CASES)
def test_a_bad_setting_is_one_config_error_naming_its_key(config, settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**settings)


def test_the_denoiser_is_built_from_its_config() -> None:
    config = DenoiserConfig(channels=[8, 16], attention_levels=[False, True], norm_num_groups=4, num_head_channels=8,
                            registers={"num_registers": 3, "dim": 8, "levels": [1], "heads": 2},
                            head={"levels": [0, 1], "channels": 8})
    denoiser = AnatomicalDenoiser.from_config(config, spatial_dims=2, in_channels=4, num_classes=3)
    assert denoiser.registers.tokens.shape == (3, 8) and denoiser.head_levels == (0, 1)
    assert set(denoiser.register_attention) == {"up1"}
    baseline = AnatomicalDenoiser.from_config(DenoiserConfig(channels=[8, 16], attention_levels=[False, True],
                                                             norm_num_groups=4, num_head_channels=8,
                                                             registers={"num_registers": 0, "levels": [1]},
                                                             head={"levels": [0, 1]}), 2, 4, num_classes=0)
    assert baseline.registers is None and baseline.head is None


def test_head_upsample_stages_reach_the_output_stride() -> None:
    assert HeadConfig(output_stride=1).upsample_stages(4) == 2
    assert HeadConfig(output_stride=1).upsample_stages(8) == 3
    assert HeadConfig(output_stride=2).upsample_stages(4) == 1
    assert HeadConfig(output_stride=4).upsample_stages(4) == 0
    assert HeadConfig().upsample_stages(4) == 0
    with pytest.raises(ConfigError, match="output_stride 8 is coarser than the latent grid"):
        HeadConfig(output_stride=8).upsample_stages(4)
