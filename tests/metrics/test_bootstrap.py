from __future__ import annotations

import numpy as np
import pytest
import torch

from anatldm.metrics import (
    FrechetSegmentationDistance,
    bootstrap_ci,
    bootstrap_replicates,
    relative_change_ci,
)


def test_interval_contains_the_point_and_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 2000):
        values = rng.normal(1.0, 1.0, n)
        point, low, high = bootstrap_ci("mean", [values], num_resamples=500)
        assert low <= point <= high and point == pytest.approx(values.mean())
        widths.append(high - low)
    assert widths[1] < 0.3 * widths[0]
    assert widths[0] == pytest.approx(2 * 1.96 / np.sqrt(50), rel=0.25)  # normal theory


def test_fast_path_agrees_with_a_generic_statistic() -> None:
    values = torch.from_numpy(np.random.default_rng(1).random(300) < 0.8).float()  # pass/fail
    fast = bootstrap_ci("mean", [values], num_resamples=2000)
    slow = bootstrap_ci(lambda x: x.mean(), [values], num_resamples=2000)
    assert fast[0] == pytest.approx(slow[0])
    assert fast[1] == pytest.approx(slow[1], abs=0.01) and fast[2] == pytest.approx(slow[2], abs=0.01)
    np.testing.assert_array_equal(bootstrap_replicates("mean", [values], 50, seed=3),
                                  bootstrap_replicates("mean", [values], 50, seed=3))


def test_several_sample_sets_are_resampled_independently() -> None:
    rng = np.random.default_rng(2)
    real, fake = rng.dirichlet(np.ones(4), 200)[:, :3], rng.dirichlet(np.ones(4), 150)[:, :3]
    point, low, high = bootstrap_ci(FrechetSegmentationDistance.statistic, [real, fake], num_resamples=100)
    assert point == pytest.approx(FrechetSegmentationDistance.statistic(torch.from_numpy(real),
                                                                        torch.from_numpy(fake)).item())
    assert 0 <= low < high
    difference = bootstrap_ci(lambda a, b: a.mean() - b.mean(), [rng.normal(1, 1, 400), rng.normal(0, 1, 100)])
    assert difference[1] < 1.0 < difference[2]


def test_relative_change() -> None:
    rng = np.random.default_rng(3)
    model, baseline = rng.normal(1.2, 0.5, 500), rng.normal(1.0, 0.5, 500)
    point, low, high = relative_change_ci("mean", [model], "mean", [baseline], num_resamples=500)
    assert point == pytest.approx((model.mean() - baseline.mean()) / abs(baseline.mean()))
    assert low < point < high and low > 0.05 and high < 0.35
    with pytest.raises(ValueError, match="baseline's statistic is 0"):
        relative_change_ci("mean", [model], "mean", [np.zeros(5)])


@pytest.mark.parametrize("kwargs, match", [
    ({"samples": np.ones(5)}, "sequence of sample sets"),
    ({"samples": [np.ones(0)]}, "empty"),
    ({"samples": [np.ones(3), np.ones(3)]}, "one sample set"),
    ({"num_resamples": 0}, "num_resamples"),
    ({"confidence": 1.5}, "confidence"),
    ({"statistic": "median"}, "callable or 'mean'"),
])
def test_errors(kwargs: dict, match: str) -> None:
    arguments = {"statistic": "mean", "samples": [np.ones(5)]} | kwargs
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(**arguments)
