from __future__ import annotations

import pytest
import torch

from anatldm.errors import ConfigError
from anatldm.losses import (
    AnatomyGradientBalance,
    AnatomyLoss,
    AnatomyLossConfig,
    AnatomyWeightSchedule,
)


@pytest.mark.parametrize("decay, halfway", [("cosine", 1.25), ("linear", 1.25), ("constant", 2.0)])
def test_schedule_values(decay: str, halfway: float) -> None:
    schedule = AnatomyWeightSchedule(lambda_max=2.0, lambda_min=0.5, warmup_fraction=0.2, decay=decay,
                                     total_steps=1000)
    assert schedule(0) == 2.0
    assert schedule(200) == 2.0  # end of the warm-up
    assert schedule(600) == pytest.approx(halfway)  # halfway through the decay
    assert schedule(1000) == pytest.approx(0.5 if decay != "constant" else 2.0)
    assert schedule(5000) == pytest.approx(0.5 if decay != "constant" else 2.0)


def test_cosine_decays_monotonically_and_differs_from_linear() -> None:
    cosine = AnatomyWeightSchedule(decay="cosine", total_steps=100)
    linear = AnatomyWeightSchedule(decay="linear", total_steps=100)
    values = [cosine(s) for s in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert cosine(40) > linear(40) and cosine(90) < linear(90)


@pytest.mark.parametrize("kwargs, match", [
    ({"lambda_max": -1.0}, "must be >= 0"),
    ({"lambda_min": 3.0}, "must not exceed"),
    ({"warmup_fraction": 1.5}, "warmup_fraction"),
    ({"decay": "step"}, "decay must be"),
    ({"total_steps": 0}, "total_steps"),
])
def test_schedule_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AnatomyWeightSchedule(**kwargs)


def test_anatomy_loss_prefers_the_right_mask() -> None:
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[:, 2:6, 2:6] = 1
    perfect = torch.nn.functional.one_hot(mask, 2).permute(0, 3, 1, 2).float() * 20 - 10
    loss = AnatomyLoss()
    assert loss(perfect, mask) < 0.05 < loss(-perfect, mask)


@pytest.mark.parametrize("batch", [True, False])
def test_equal_weights_give_monai_dice_ce(batch: bool) -> None:
    torch.manual_seed(0)
    logits, mask = torch.randn(3, 4, 8, 8), torch.randint(0, 4, (3, 8, 8))
    mask[0][mask[0] == 2] = 0  # a class absent from one slice
    loss = AnatomyLoss(batch=batch)
    torch.testing.assert_close(loss(logits, mask, torch.full((3,), 0.7)), loss(logits, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [True, False])
def test_zero_weight_drops_a_sample(batch: bool) -> None:
    torch.manual_seed(1)
    logits, mask = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randint(0, 3, (2, 8, 8))
    loss = AnatomyLoss(batch=batch)
    weighted = loss(logits, mask, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(weighted, loss(logits[:1], mask[:1]), rtol=1e-5, atol=1e-6)
    weighted.backward()
    assert logits.grad[1].abs().max() == 0 and logits.grad[0].abs().max() > 0
    zero = loss(logits, mask, torch.zeros(2))
    assert zero.item() == 0.0 and zero.requires_grad


def test_timestep_weighting_modes() -> None:
    from anatldm.diffusion import make_train_scheduler
    from anatldm.losses import TimestepWeighting

    alphas = make_train_scheduler().alphas_cumprod
    t = torch.tensor([0, 300, 590, 999])
    assert TimestepWeighting("none", alphas)(t) is None
    torch.testing.assert_close(TimestepWeighting("alpha_bar", alphas)(t), alphas[t].float())
    kept = TimestepWeighting("snr_cutoff", alphas, snr_cutoff=0.05)(t)
    assert kept.tolist() == [1.0, 1.0, 1.0, 0.0]
    snr = alphas / (1 - alphas)
    first_dropped = int((snr < 0.05).nonzero()[0])
    assert 550 < first_dropped < 700  # the default schedule's SNR falls below 0.05 near t = 600
    with pytest.raises(ValueError, match="snr_cutoff must be positive"):
        TimestepWeighting("snr_cutoff", alphas, snr_cutoff=0.0)
    with pytest.raises(ValueError, match="timestep weighting"):
        TimestepWeighting("sigmoid", alphas)


def test_register_groups_and_attention_loss() -> None:
    from anatldm.losses import RegisterAttentionLoss, class_register_groups

    groups = class_register_groups(num_registers=6, num_classes=3, per_class=2)
    assert groups == [[0, 1], [2, 3]]  # registers 4 and 5 are free
    with pytest.raises(ValueError, match="one stays free"):
        class_register_groups(num_registers=4, num_classes=3, per_class=2)
    loss = RegisterAttentionLoss(groups, 6)
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[:, :4] = 1
    mask[:, 4:, :4] = 2
    aligned = torch.full((2, 6, 8, 8), 1e-4)
    aligned[:, 0][mask == 1] = aligned[:, 2][mask == 2] = aligned[:, 4][mask == 0] = 1.0
    aligned = aligned / aligned.sum(1, keepdim=True)
    uniform = torch.full((2, 6, 8, 8), 1 / 6)
    swapped = aligned[:, [2, 3, 0, 1, 4, 5]]  # class 1's attention on class 2's registers
    values = [loss({"up0": maps}, mask).item() for maps in (aligned, uniform, swapped)]
    assert values[0] < 0.01 < values[1] < values[2]
    # coarser maps compare with the area-downsampled mask
    assert loss({"up1": torch.nn.functional.avg_pool2d(aligned, 2)}, mask).item() < 0.01
    weights = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(loss({"up0": aligned}, mask, weights), loss({"up0": aligned[:1]}, mask[:1]))


@pytest.mark.parametrize(("settings", "message"), [
    ({"weight": -1.0}, "model.anatomy_loss.weight and model.anatomy_loss.weight_min must be >= 0"),
    ({"warmup_fraction": 1.5}, "model.anatomy_loss.warmup_fraction must lie in \\[0, 1\\]"),
    ({"decay": "step"}, "model.anatomy_loss.decay must be 'cosine', 'linear' or 'constant'"),
    ({"timestep_weighting": "snr"}, "model.anatomy_loss.timestep_weighting must be"),
    ({"snr_cutoff": 0.0}, "model.anatomy_loss.snr_cutoff must be positive"),
])
def test_a_bad_anatomy_loss_setting_names_its_key(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AnatomyLossConfig(**settings)


def test_the_schedule_of_a_config_caps_its_minimum_at_its_maximum() -> None:
    schedule = AnatomyWeightSchedule.from_config(AnatomyLossConfig(weight=0.3, weight_min=0.5, decay="linear"), 0)
    assert (schedule.lambda_max, schedule.lambda_min, schedule.total_steps) == (0.3, 0.3, 1)
    assert not AnatomyLossConfig(weight=0.0).enabled and AnatomyLossConfig().enabled


def test_gradient_balance_scales_only_a_dominant_anatomy_term() -> None:
    balance = AnatomyGradientBalance.from_config(AnatomyLossConfig(max_gradient_ratio=2.0,
                                                                   gradient_balance_every_n_steps=5))
    assert balance.due(3)  # never measured: due at once (a new or resumed run)
    assert balance.update(anatomy_norm=24.0, diffusion_norm=1.0) == pytest.approx((2.0 / 24.0, 2.0))
    assert not balance.due(3) and balance.due(10)
    assert balance.update(anatomy_norm=1.5, diffusion_norm=1.0) == pytest.approx((1.0, 1.5))  # back to 1
    assert AnatomyGradientBalance.from_config(AnatomyLossConfig()) is None
    with pytest.raises(ValueError, match="max_ratio must be positive"):
        AnatomyGradientBalance(0.0)
