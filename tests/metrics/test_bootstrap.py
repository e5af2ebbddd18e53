from __future__ import annotations

import numpy as np
import pytest
import torch

from anatldm.metrics import (
    FrechetSegmentationDistance,
    bootstrap_ci,
    bootstrap_replicates,
    hierarchical_change_ci,
    hierarchical_ci,
    paired_change_ci,
    paired_change_replicates,
    per_pair_changes,
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


def _seed_paired_arms(rng: np.random.Generator, n: int, effect: float, noise: float = 0.05,
                      offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample values of two arms sampled with the same seeds: latent quality u_i shared by both."""
    quality = rng.normal(0.0, 1.0, n)
    model = offset + quality + effect + rng.normal(0.0, noise, n)
    baseline = offset + quality + rng.normal(0.0, noise, n)
    return model, baseline


def test_paired_difference_is_much_narrower_than_the_unpaired_one_and_covers_the_effect() -> None:
    model, baseline = _seed_paired_arms(np.random.default_rng(4), 200, effect=0.2)
    point, low, high = paired_change_ci("mean", [model], [baseline], relative=False, num_resamples=500)
    assert point == pytest.approx(model.mean() - baseline.mean())
    assert low < 0.2 < high
    unpaired = bootstrap_ci(lambda a, b: a.mean() - b.mean(), [model, baseline], num_resamples=500)
    assert unpaired[1] < 0.2 < unpaired[2]
    assert high - low < 0.2 * (unpaired[2] - unpaired[1])
    # the generic path draws the same indices as the vectorised one
    generic = paired_change_ci(lambda x: x.mean(), [torch.from_numpy(model)], [baseline], relative=False,
                               num_resamples=500)
    assert generic == pytest.approx((point, low, high))


def test_paired_relative_change_is_much_narrower_than_relative_change_ci() -> None:
    model, baseline = _seed_paired_arms(np.random.default_rng(5), 200, effect=0.5, offset=5.0)
    truth = 0.5 / 5.0
    point, low, high = paired_change_ci("mean", [model], [baseline], num_resamples=500)
    assert point == pytest.approx((model.mean() - baseline.mean()) / abs(baseline.mean()))
    assert low < point < high and abs(point - truth) < 0.01
    unpaired = relative_change_ci("mean", [model], "mean", [baseline], num_resamples=500)
    assert unpaired[0] == pytest.approx(point)
    assert high - low < 0.2 * (unpaired[2] - unpaired[1])
    replicates = paired_change_replicates("mean", [model], [baseline], num_resamples=500)
    assert replicates.shape == (500,)
    assert (low, high) == pytest.approx(tuple(np.percentile(replicates, [2.5, 97.5])))


def test_paired_interval_coverage_without_effect() -> None:
    rng = np.random.default_rng(6)
    covered = 0
    for trial in range(200):
        model, baseline = _seed_paired_arms(rng, 40, effect=0.0, noise=0.3)
        _, low, high = paired_change_ci("mean", [model], [baseline], relative=False, num_resamples=200,
                                        seed=trial)
        covered += low <= 0.0 <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_shared_sets_are_resampled_once_per_replicate_for_both_arms() -> None:
    rng = np.random.default_rng(7)
    real, generated = rng.normal(0.0, 1.0, 80), rng.normal(0.5, 1.0, 60)

    def statistic(shared: np.ndarray, x: np.ndarray) -> float:
        return x.mean() - shared.mean()

    for relative in (False, True):
        replicates = paired_change_replicates(statistic, [generated], [generated], shared=[real],
                                              relative=relative, num_resamples=200)
        np.testing.assert_array_equal(replicates, 0.0)
        assert paired_change_ci(statistic, [generated], [generated], shared=[real], relative=relative,
                                num_resamples=200) == (0.0, 0.0, 0.0)
    # a constant shift survives exactly: same arm indices and same shared indices in both arms
    shifted = paired_change_replicates(statistic, [generated + 1.0], [generated], shared=[real],
                                       relative=False, num_resamples=200)
    np.testing.assert_allclose(shifted, 1.0, atol=1e-12)
    groups = [[generated], [generated[:30]]]
    assert hierarchical_change_ci(statistic, groups, groups, shared=[real], relative=False,
                                  num_resamples=100) == (0.0, 0.0, 0.0)
    # resampling the arms (and their copies of the shared set) independently does not cancel
    _, low, high = relative_change_ci(statistic, [real, generated], statistic, [real, generated],
                                      num_resamples=200)
    assert high - low > 0.1


def test_hierarchical_interval_widens_when_seeds_disagree() -> None:
    rng = np.random.default_rng(8)
    agreeing = [[rng.normal(0.0, 1.0, 100)] for _ in range(5)]
    disagreeing = [[rng.normal(offset, 1.0, 100)] for offset in (-2.0, -1.0, 0.0, 1.0, 2.0)]
    _, low_a, high_a = hierarchical_ci("mean", agreeing, num_resamples=500)
    point, low_d, high_d = hierarchical_ci("mean", disagreeing, num_resamples=500)
    assert point == pytest.approx(np.mean([g[0].mean() for g in disagreeing]))
    assert low_d < point < high_d
    assert high_d - low_d > 5 * (high_a - low_a)
    # generic statistic: the point is the mean of the per-group statistics
    point, low, high = hierarchical_ci(lambda x: np.median(x), disagreeing, num_resamples=200)
    assert point == pytest.approx(np.mean([np.median(g[0]) for g in disagreeing]))
    assert high - low > 5 * (high_a - low_a)
    fast = hierarchical_ci("mean", disagreeing, num_resamples=1000)
    slow = hierarchical_ci(lambda x: x.mean(), disagreeing, num_resamples=1000)
    assert fast[0] == pytest.approx(slow[0])
    assert fast[1:] == pytest.approx(slow[1:], abs=0.25)


def test_hierarchical_change_and_per_pair_changes() -> None:
    rng = np.random.default_rng(9)
    pairs = [_seed_paired_arms(rng, 100, effect=effect, offset=5.0) for effect in (0.2, 0.5, 0.8)]
    model_groups, baseline_groups = [[m] for m, _ in pairs], [[b] for _, b in pairs]
    point, low, high = hierarchical_change_ci("mean", model_groups, baseline_groups, num_resamples=500)
    pooled_model = np.mean([m.mean() for m, _ in pairs])
    pooled_baseline = np.mean([b.mean() for _, b in pairs])
    assert point == pytest.approx((pooled_model - pooled_baseline) / abs(pooled_baseline))
    assert low < point < high
    difference = hierarchical_change_ci(lambda x: x.mean(), model_groups, baseline_groups, relative=False,
                                        num_resamples=200)
    assert difference[0] == pytest.approx(pooled_model - pooled_baseline)
    assert difference[1] < 0.3 and difference[2] > 0.7  # covers the spread of the per-pair effects
    per_pair = per_pair_changes("mean", model_groups, baseline_groups, relative=False, num_resamples=500)
    assert len(per_pair) == 3
    for (m, b), effect, (p, lo, hi) in zip(pairs, (0.2, 0.5, 0.8), per_pair, strict=True):
        assert p == pytest.approx(m.mean() - b.mean()) and lo < effect < hi and hi - lo < 0.1


@pytest.mark.parametrize("call, match", [
    (lambda: paired_change_ci("mean", [np.ones(5)], [np.ones(4)]), "same first dimension N"),
    (lambda: paired_change_ci(lambda a, b: 0.0, [np.ones(5), np.ones(4)], [np.ones(5), np.ones(5)]),
     "same first dimension N"),
    (lambda: paired_change_ci(lambda a: 0.0, [np.ones(5)], [np.ones(5), np.ones(5)]), "same number of sample sets"),
    (lambda: paired_change_ci("mean", np.ones(5), [np.ones(5)]), "model must be a sequence"),
    (lambda: paired_change_ci("mean", [np.ones(5)], [np.ones(5)], shared=[np.ones(3)]), "no shared set"),
    (lambda: paired_change_ci("mean", [np.ones(5)], [np.zeros(5)]), "baseline's statistic is 0"),
    (lambda: paired_change_ci("mean", [np.ones(5)], [np.ones(5)], num_resamples=0), "num_resamples"),
    (lambda: paired_change_ci("mean", [np.ones(5)], [np.ones(5)], confidence=0.0), "confidence"),
    (lambda: hierarchical_ci("mean", []), "at least one group"),
    (lambda: hierarchical_ci("mean", [[np.ones(3)], []]), r"groups\[1\] must hold at least one sample set"),
    (lambda: hierarchical_ci("mean", [[np.ones(3)], [np.ones(0)]]), r"groups\[1\].*empty"),
    (lambda: hierarchical_change_ci("mean", [[np.ones(3)], [np.ones(3)]], [[np.ones(3)]]),
     "same number of groups"),
    (lambda: hierarchical_change_ci("mean", [[np.ones(3)]], [[np.ones(4)]]), "same first dimension N"),
    (lambda: hierarchical_change_ci("mean", [[np.ones(3)]], [[np.zeros(3)]]), "baseline's statistic is 0"),
    (lambda: per_pair_changes("mean", [[np.ones(3)]], [[np.ones(3)], [np.ones(3)]]), "same number of groups"),
])
def test_paired_and_hierarchical_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
