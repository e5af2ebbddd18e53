"""The autoencoder's domain perceptual loss: its config's errors, its two targets, where its gradient goes."""

from __future__ import annotations

import pytest
import torch

from anatldm.errors import ConfigError
from anatldm.losses.anatomy import AnatomyLoss
from anatldm.losses.anatomy_perceptual import AnatomyPerceptualConfig, AnatomyPerceptualLoss


def make_loss(**overrides) -> AnatomyPerceptualLoss:
    torch.manual_seed(0)
    return AnatomyPerceptualLoss(AnatomyPerceptualConfig(**{"weight": 1.0, "num_classes": 3, "channels": (4, 8),
                                                            **overrides}))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"weight": -1.0}, "weight must be >= 0"),
    ({"weight": 1.0}, "num_classes must be at least 2"),
    ({"weight": 1.0, "num_classes": 3, "warmup_steps": 0}, "warmup_steps must be at least 1"),
    ({"weight": 1.0, "num_classes": 3, "channels": (8,)}, "channels needs at least two"),
    ({"weight": 1.0, "num_classes": 3, "lr": 0.0}, "lr must be positive"),
    ({"target": "judge"}, "target must be 'segmenter' or 'mask'"),
])
def test_config_errors_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"model.anatomy_perceptual.*{message}"):
        AnatomyPerceptualConfig(**overrides)


def test_off_by_default_and_nothing_checked_when_off() -> None:
    config = AnatomyPerceptualConfig()
    assert not config.enabled and config.num_classes == 0


def test_segmenter_target_is_zero_for_a_perfect_reconstruction_and_positive_otherwise() -> None:
    loss = make_loss()
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    masks = torch.randint(0, 3, (2, 16, 16))
    assert loss(images, images, masks).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(images.flip(-1), images, masks).item() > 1e-4


def test_mask_target_is_the_segmenters_dice_ce_on_the_reconstruction() -> None:
    loss = make_loss(target="mask")
    reconstruction, masks = torch.rand(2, 1, 16, 16) * 2 - 1, torch.randint(0, 3, (2, 16, 16))
    expected = AnatomyLoss()(loss.segmenter(reconstruction), masks, None)
    assert loss(reconstruction, torch.zeros_like(reconstruction), masks).item() == pytest.approx(expected.item())
    assert loss.segmenter_loss(reconstruction, masks).item() == pytest.approx(expected.item())


def test_gradient_reaches_the_reconstruction_not_the_frozen_segmenter() -> None:
    loss = make_loss()
    loss.segmenter.requires_grad_(False)  # as the generator step leaves it (Lightning toggles the other optimisers)
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    reconstruction = (images + 0.3 * torch.randn_like(images)).requires_grad_(True)
    loss(reconstruction, images, torch.zeros(2, 16, 16, dtype=torch.long)).backward()
    assert reconstruction.grad is not None and reconstruction.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.segmenter.parameters())
