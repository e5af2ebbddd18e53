"""Bootstrap confidence intervals of metrics and of their relative change against a baseline.

Percentile bootstrap (Efron and Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13):
every sample set (e.g. per-sample pass/fail of the plausibility rate, or the real and the
generated area fractions of the FSD) is resampled independently, with replacement and at its own
size; the statistic is recomputed on each replicate, and the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` quantiles of the replicates are the interval. The point estimate is the
statistic of the original samples.

``statistic="mean"`` (one sample set) takes a vectorised fast path: replicate means come from
blocks of resampled indices, with no Python call per replicate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from torch import Tensor

__all__ = ["bootstrap_ci", "bootstrap_replicates", "relative_change_ci"]

Statistic = Callable[..., float | Tensor | np.ndarray] | Literal["mean"]
_FAST_PATH_BLOCK = 4_000_000  # resampled indices held at once by the mean fast path


def _checked(statistic: Statistic, samples: Sequence[np.ndarray | Tensor]) -> list[np.ndarray]:
    """The sample sets as numpy arrays, after checking them against the statistic."""
    if not (callable(statistic) or statistic == "mean"):
        raise ValueError(f"statistic must be callable or 'mean', got {statistic!r}")
    arrays = _as_arrays(samples)
    if statistic == "mean" and len(arrays) != 1:
        raise ValueError(f"statistic='mean' takes one sample set, got {len(arrays)}")
    return arrays


def _as_arrays(samples: Sequence[np.ndarray | Tensor]) -> list[np.ndarray]:
    if isinstance(samples, (np.ndarray, Tensor)):
        raise ValueError("samples must be a sequence of sample sets, e.g. [values] or [real, generated]")
    arrays = [(s.detach().cpu().double() if s.is_floating_point() else s.detach().cpu()).numpy()
              if isinstance(s, Tensor) else np.asarray(s) for s in samples]
    if not arrays:
        raise ValueError("samples must hold at least one sample set")
    empty = [k for k, a in enumerate(arrays) if a.ndim == 0 or a.shape[0] == 0]
    if empty:
        raise ValueError(f"sample sets {empty} are empty or scalars; each needs shape (N, ...) with N >= 1")
    return arrays


def _evaluate(statistic: Statistic, arrays: Sequence[np.ndarray]) -> float:
    if statistic == "mean":
        return float(np.mean(arrays[0]))
    value = statistic(*arrays)
    return float(value.item() if isinstance(value, (Tensor, np.ndarray)) else value)


def bootstrap_replicates(statistic: Statistic, samples: Sequence[np.ndarray | Tensor],
                         num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """The statistic on ``num_resamples`` bootstrap replicates: ``(num_resamples,)`` float64.

    Args:
        statistic: ``statistic(*sample_sets) -> scalar`` (float, 0-d tensor or array), or ``"mean"``
            for the mean of a single sample set (fast path).
        samples: the sample sets; each has the samples along its first axis.
        num_resamples: number of replicates.
        seed: seed of the resampling (``numpy.random.default_rng``).
    """
    arrays = _checked(statistic, samples)
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be positive, got {num_resamples}")
    rng = np.random.default_rng(seed)
    if statistic == "mean":
        values = arrays[0].reshape(arrays[0].shape[0], -1).astype(np.float64).mean(axis=1)  # (N,)
        block = max(1, _FAST_PATH_BLOCK // values.shape[0])
        means = [values[rng.integers(0, values.shape[0], size=(min(block, num_resamples - start),
                                                                 values.shape[0]))].mean(axis=1)
                 for start in range(0, num_resamples, block)]
        return np.concatenate(means)
    replicates = np.empty(num_resamples)
    for r in range(num_resamples):
        resampled = [a[rng.integers(0, a.shape[0], size=a.shape[0])] for a in arrays]
        replicates[r] = _evaluate(statistic, resampled)
    return replicates


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.nanpercentile(replicates, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def bootstrap_ci(statistic: Statistic, samples: Sequence[np.ndarray | Tensor], num_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and percentile-bootstrap interval ``(point, low, high)`` of a statistic.

    Each sample set is resampled independently with replacement (see the module docstring).
    Example: ``bootstrap_ci("mean", [plausibility.per_sample()])`` or
    ``bootstrap_ci(FrechetSegmentationDistance.statistic, [*fsd.areas()])``.
    """
    _check_confidence(confidence)
    point = _evaluate(statistic, _checked(statistic, samples))
    low, high = _interval(bootstrap_replicates(statistic, samples, num_resamples, seed), confidence)
    return point, low, high


def relative_change_ci(stat_model: Statistic, model_samples: Sequence[np.ndarray | Tensor],
                       stat_baseline: Statistic, baseline_samples: Sequence[np.ndarray | Tensor],
                       num_resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float, float]:
    """Relative change ``(model - baseline) / |baseline|`` with its percentile-bootstrap interval.

    The model's and the baseline's sample sets are resampled independently (different seeds
    derived from ``seed``); replicate ``r`` of the change pairs replicate ``r`` of each. The
    result is a fraction (0.1 = 10 % higher than the baseline).

    Raises:
        ValueError: if the baseline's point estimate is 0 (the relative change is undefined).
    """
    _check_confidence(confidence)
    model_point = _evaluate(stat_model, _checked(stat_model, model_samples))
    baseline_point = _evaluate(stat_baseline, _checked(stat_baseline, baseline_samples))
    if baseline_point == 0:
        raise ValueError("the baseline's statistic is 0: its relative change is undefined")
    model_seed, baseline_seed = np.random.SeedSequence(seed).generate_state(2)
    model_reps = bootstrap_replicates(stat_model, model_samples, num_resamples, int(model_seed))
    baseline_reps = bootstrap_replicates(stat_baseline, baseline_samples, num_resamples, int(baseline_seed))
    with np.errstate(divide="ignore", invalid="ignore"):
        change = (model_reps - baseline_reps) / np.abs(baseline_reps)  # replicates with a 0 baseline -> inf/NaN
    low, high = _interval(change[np.isfinite(change)] if np.isfinite(change).any() else change, confidence)
    return (model_point - baseline_point) / abs(baseline_point), low, high
