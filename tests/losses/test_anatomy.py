from __future__ import annotations

import pytest
import torch

from anatldm.losses import AnatomyLoss, AnatomyWeightSchedule


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
