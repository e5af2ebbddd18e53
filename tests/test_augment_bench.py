"""The closed-world augmentation benchmark's statistics: pooled Dice and the hierarchical bootstrap."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SPEC = importlib.util.spec_from_file_location("augment_bench", Path(__file__).parents[1] / "benchmarks" / "augment_bench.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def _counts(dice_per_seed: list[float], slices: int = 20) -> np.ndarray:
    """(S, N, 1, 2) overlap counts whose pooled Dice per seed is ``dice_per_seed``."""
    counts = np.zeros((len(dice_per_seed), slices, 1, 2))
    for s, dice in enumerate(dice_per_seed):
        counts[s, :, 0, 0] = dice * 50  # intersection; size sum 100 -> Dice = 2 * 50 d / 100 = d
        counts[s, :, 0, 1] = 100
    return counts


def test_pooled_dice_of_known_counts() -> None:
    assert np.allclose(bench.pooled_dice(_counts([0.5, 0.8])), [[0.5], [0.8]])


def test_hierarchical_bootstrap_carries_the_seed_spread() -> None:
    real = _counts([0.6, 0.6, 0.6])
    same_gain = _counts([0.65, 0.65, 0.65])  # +0.05 in every seed: no spread
    mixed = _counts([0.75, 0.60, 0.60])  # the same mean gain, all from one seed
    boot = bench.hierarchical_means({"real": real, "same": same_gain, "mixed": mixed}, num_bootstrap=400)
    same, spread = boot["same"] - boot["real"], boot["mixed"] - boot["real"]
    assert np.allclose(same, 0.05)  # identical slices and seeds: every replicate the same gain
    assert np.isclose(spread.mean(), 0.05, atol=0.01)
    low, high = np.percentile(spread, [2.5, 97.5])
    assert low <= 0.0 + 1e-9 and high >= 0.15 - 1e-9  # resampling seeds reaches the seeds without a gain
