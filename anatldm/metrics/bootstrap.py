"""Bootstrap confidence intervals of metrics and of their relative change against a baseline.

Percentile bootstrap (Efron and Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13):
every sample set (e.g. per-sample pass/fail of the plausibility rate, or the real and the
generated area fractions of the FSD) is resampled independently, with replacement and at its own
size; the statistic is recomputed on each replicate, and the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` quantiles of the replicates are the interval. The point estimate is the
statistic of the original samples.

``statistic="mean"`` (one sample set) takes a vectorised fast path: replicate means come from
blocks of resampled indices, with no Python call per replicate.

Paired and hierarchical designs (:func:`paired_change_ci`, :func:`hierarchical_ci`,
:func:`hierarchical_change_ci`, :func:`per_pair_changes`): when the model and the baseline were
sampled with the same seeds, sample ``i`` of both arms is resampled together (one index vector per
replicate for both arms), and sample sets common to both arms (``shared``, e.g. the real features
of FID / KID) are resampled once per replicate for both; with several trained models per arm the
training seeds are resampled first, then the samples within each drawn seed (two-stage bootstrap,
Davison and Hinkley, "Bootstrap Methods and their Application", 1997, sec. 3.8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from torch import Tensor

__all__ = [
    "bootstrap_ci",
    "bootstrap_replicates",
    "hierarchical_change_ci",
    "hierarchical_ci",
    "paired_change_ci",
    "paired_change_replicates",
    "per_pair_changes",
    "relative_change_ci",
]

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


def _as_arrays(samples: Sequence[np.ndarray | Tensor], name: str = "samples") -> list[np.ndarray]:
    if isinstance(samples, (np.ndarray, Tensor)):
        raise ValueError(f"{name} must be a sequence of sample sets, e.g. [values] or [real, generated]")
    arrays = [(s.detach().cpu().double() if s.is_floating_point() else s.detach().cpu()).numpy()
              if isinstance(s, Tensor) else np.asarray(s) for s in samples]
    if not arrays:
        raise ValueError(f"{name} must hold at least one sample set")
    empty = [k for k, a in enumerate(arrays) if a.ndim == 0 or a.shape[0] == 0]
    if empty:
        raise ValueError(f"{name}: sample sets {empty} are empty or scalars; each needs shape (N, ...) with N >= 1")
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


# ----------------------------------------------------------------------------------------------
# Paired and hierarchical bootstrap
# ----------------------------------------------------------------------------------------------
#
# Internally every estimator below is one "arm set": ``arms[a][g]`` is the list of sample sets of
# arm ``a`` (model, baseline) in group ``g`` (training seed); all arms share the groups, and group
# ``g`` has the same sample count ``N_g`` in every arm and every set (aligned by sampling seed).
# The paired interval is the case of one group.

Groups = Sequence[Sequence[np.ndarray | Tensor]]


def _shared_arrays(shared: Sequence[np.ndarray | Tensor]) -> list[np.ndarray]:
    if not isinstance(shared, (np.ndarray, Tensor)) and len(shared) == 0:
        return []
    return _as_arrays(shared, "shared")


def _checked_arms(statistic: Statistic, shared: Sequence[np.ndarray | Tensor],
                  arms: dict[str, Groups],
                  grouped: bool = True) -> tuple[list[np.ndarray], list[list[list[np.ndarray]]]]:
    """Check and convert the shared sets and the arms' groups (see the block comment above).

    ``grouped=False``: each arm is one group (paired design), named without a group index.
    """
    if not (callable(statistic) or statistic == "mean"):
        raise ValueError(f"statistic must be callable or 'mean', got {statistic!r}")
    shared_arrays = _shared_arrays(shared)
    counts = {name: len(groups) for name, groups in arms.items()}
    if any(c == 0 for c in counts.values()):
        raise ValueError(f"every arm needs at least one group, got group counts {counts}")
    if len(set(counts.values())) > 1:
        raise ValueError(f"{' and '.join(counts)} must have the same number of groups (seed pairs), "
                         f"got {' and '.join(str(c) for c in counts.values())}")
    converted = {name: [_as_arrays(group, f"{name}[{g}]" if grouped else name) for g, group in enumerate(groups)]
                 for name, groups in arms.items()}
    num_sets = {len(group) for groups in converted.values() for group in groups}
    if len(num_sets) > 1:
        raise ValueError(f"every group of every arm must hold the same number of sample sets, got {sorted(num_sets)}")
    if statistic == "mean" and (shared_arrays or num_sets != {1}):
        raise ValueError("statistic='mean' takes no shared set and one sample set per arm, got "
                         f"{len(shared_arrays)} shared and {num_sets.pop()} per arm")
    for g in range(next(iter(counts.values()))):
        sizes = {f"{name}[{g}][{k}]" if grouped else f"{name}[{k}]": a.shape[0]
                 for name, groups in converted.items()
                 for k, a in enumerate(groups[g])}
        if len(set(sizes.values())) > 1:
            raise ValueError("paired sample sets must all have the same first dimension N (sample i of every "
                             f"set and arm comes from the same sampling seed), got sizes {sizes}")
    return shared_arrays, list(converted.values())


def _check_resampling(num_resamples: int, confidence: float | None = None) -> None:
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be positive, got {num_resamples}")
    if confidence is not None:
        _check_confidence(confidence)


def _arm_points(statistic: Statistic, shared: list[np.ndarray],
                arms: list[list[list[np.ndarray]]]) -> np.ndarray:
    """``(A,)``: per arm, the mean over groups of ``statistic(*shared, *group_sets)``."""
    return np.array([np.mean([_evaluate(statistic, [*shared, *group]) for group in groups]) for groups in arms])


def _arm_replicates(statistic: Statistic, shared: list[np.ndarray], arms: list[list[list[np.ndarray]]],
                    num_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(A, num_resamples)`` hierarchical replicates of every arm's pooled statistic.

    Replicate ``r``: draw ``G`` group indices ``g_1..g_G`` with replacement (trivially ``0`` when
    ``G = 1``) and one index vector per shared set; for every slot ``j`` draw one index vector
    ``i_j`` of size ``N_{g_j}`` used by every arm and set of group ``g_j``; then
    ``T_a^(r) = (1/G) sum_j statistic(*shared^(r), *arms[a][g_j][i_j])``.
    """
    num_groups = len(arms[0])
    draws = rng.integers(0, num_groups, size=(num_resamples, num_groups))
    if statistic == "mean":  # per-sample values; the within-group resampling is vectorised per group
        values = [[groups[g][0].reshape(groups[g][0].shape[0], -1).astype(np.float64).mean(axis=1)
                   for g in range(num_groups)] for groups in arms]
        within = np.empty((len(arms), num_resamples, num_groups))
        for g in range(num_groups):
            slots = draws == g
            size = values[0][g].shape[0]
            block = max(1, _FAST_PATH_BLOCK // size)
            count = int(slots.sum())
            means = [[] for _ in arms]
            for start in range(0, count, block):
                index = rng.integers(0, size, size=(min(block, count - start), size))
                for a in range(len(arms)):
                    means[a].append(values[a][g][index].mean(axis=1))
            for a in range(len(arms)):
                within[a][slots] = np.concatenate(means[a]) if means[a] else np.empty(0)
        return within.mean(axis=2)
    replicates = np.zeros((len(arms), num_resamples))
    for r in range(num_resamples):
        shared_r = [s[rng.integers(0, s.shape[0], size=s.shape[0])] for s in shared]
        for g in draws[r]:
            size = arms[0][g][0].shape[0]
            index = rng.integers(0, size, size=size)
            for a, groups in enumerate(arms):
                replicates[a, r] += _evaluate(statistic, [*shared_r, *(s[index] for s in groups[g])])
    return replicates / num_groups


def _change(model: np.ndarray | float, baseline: np.ndarray | float, relative: bool) -> np.ndarray:
    """``(m - b) / |b|`` if ``relative`` else ``m - b``; a 0 baseline gives inf/NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.subtract(model, baseline) / np.abs(baseline)) if relative else np.subtract(model, baseline)


def _change_interval(change: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the change replicates, dropping those with a 0 baseline (non-finite)."""
    finite = np.isfinite(change)
    return _interval(change[finite] if finite.any() else change, confidence)


def _point_change(points: np.ndarray, relative: bool) -> float:
    if relative and points[1] == 0:
        raise ValueError("the baseline's statistic is 0: its relative change is undefined")
    return float(_change(points[0], points[1], relative))


def paired_change_replicates(statistic: Statistic, model: Sequence[np.ndarray | Tensor],
                             baseline: Sequence[np.ndarray | Tensor],
                             shared: Sequence[np.ndarray | Tensor] = (), relative: bool = True,
                             num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Paired-bootstrap replicates of the change of a statistic: ``(num_resamples,)`` float64.

    ``model`` and ``baseline`` are sample sets aligned by sampling seed: every array in both has the
    same first dimension ``N`` and sample ``i`` of both arms used the same seed. ``shared`` holds
    sample sets common to both arms (e.g. the real features of FID / KID, the real areas of the
    FSD), each at its own size. Replicate ``r`` draws one index vector ``i^(r)`` of size ``N`` for
    both arms and one index vector per shared set, so that

        m^(r) = statistic(*shared^(r), *model[i^(r)]),   b^(r) = statistic(*shared^(r), *baseline[i^(r)]),
        change^(r) = (m^(r) - b^(r)) / |b^(r)|   (relative)   or   m^(r) - b^(r).

    Pairing cancels the variance the arms share through the sampling seed (and through the shared
    sets): ``Var(m - b) = Var(m) + Var(b) - 2 Cov(m, b)``. Replicates with a 0 baseline give
    inf/NaN when ``relative``.

    Args:
        statistic: ``statistic(*shared, *arm_sets) -> scalar`` (float, 0-d tensor or array), or
            ``"mean"`` when there is no shared set and each arm has one set (fast path).
        model, baseline: the arms' sample sets, the same number of sets in each.
        shared: the sample sets common to both arms.
        relative: relative change (a fraction) rather than the difference.
        num_resamples: number of replicates.
        seed: seed of the resampling (``numpy.random.default_rng``).
    """
    _check_resampling(num_resamples)
    shared_arrays, arms = _checked_arms(statistic, shared, {"model": [model], "baseline": [baseline]},
                                         grouped=False)
    model_reps, baseline_reps = _arm_replicates(statistic, shared_arrays, arms, num_resamples,
                                                np.random.default_rng(seed))
    return _change(model_reps, baseline_reps, relative)


def paired_change_ci(statistic: Statistic, model: Sequence[np.ndarray | Tensor],
                     baseline: Sequence[np.ndarray | Tensor], shared: Sequence[np.ndarray | Tensor] = (),
                     relative: bool = True, num_resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """Change of a statistic against a baseline with its paired-bootstrap interval ``(point, low, high)``.

    The point is ``(m - b) / |b|`` (``relative``) or ``m - b`` on the original samples, with
    ``m = statistic(*shared, *model)`` and ``b = statistic(*shared, *baseline)``; the interval is
    the percentile interval of :func:`paired_change_replicates`, replicates with a 0 baseline
    dropped. Use it instead of :func:`relative_change_ci` when both arms were sampled with the
    same seeds.

    Raises:
        ValueError: if the arms' sizes differ, or the baseline's point is 0 with ``relative``.
    """
    _check_resampling(num_resamples, confidence)
    shared_arrays, arms = _checked_arms(statistic, shared, {"model": [model], "baseline": [baseline]},
                                         grouped=False)
    point = _point_change(_arm_points(statistic, shared_arrays, arms), relative)
    model_reps, baseline_reps = _arm_replicates(statistic, shared_arrays, arms, num_resamples,
                                                np.random.default_rng(seed))  # = paired_change_replicates
    return (point, *_change_interval(_change(model_reps, baseline_reps, relative), confidence))


def hierarchical_ci(statistic: Statistic, groups: Groups, shared: Sequence[np.ndarray | Tensor] = (),
                    num_resamples: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> tuple[float, float, float]:
    """Pooled statistic over several trained models with its hierarchical-bootstrap interval.

    ``groups[g]`` holds the sample sets of model ``g`` (one per training seed); the sets of a group
    are per-sample quantities of the same ``N_g`` samples (aligned, resampled by one index vector).
    The pooled value is ``T = (1/G) sum_g statistic(*shared, *groups[g])``. Replicate ``r``
    resamples the ``G`` groups with replacement, then the samples within each drawn group (a fresh
    index vector per draw), and each shared set once:

        T^(r) = (1/G) sum_j statistic(*shared^(r), *groups[g_j][i_j]).

    The interval thus covers both the spread between training seeds and the sampling noise within
    each model (Davison and Hinkley, "Bootstrap Methods and their Application", 1997, sec. 3.8).
    With few groups (``G`` < 5 or so) the between-seed part is poorly estimated and the interval
    tends to be too narrow.

    Returns:
        ``(point, low, high)``.
    """
    _check_resampling(num_resamples, confidence)
    shared_arrays, arms = _checked_arms(statistic, shared, {"groups": groups})
    point = float(_arm_points(statistic, shared_arrays, arms)[0])
    replicates = _arm_replicates(statistic, shared_arrays, arms, num_resamples, np.random.default_rng(seed))[0]
    return (point, *_interval(replicates, confidence))


def hierarchical_change_ci(statistic: Statistic, model_groups: Groups, baseline_groups: Groups,
                           shared: Sequence[np.ndarray | Tensor] = (), relative: bool = True,
                           num_resamples: int = 1000, confidence: float = 0.95,
                           seed: int = 0) -> tuple[float, float, float]:
    """Pooled change over seed pairs with its hierarchical paired-bootstrap interval.

    ``model_groups[g]`` and ``baseline_groups[g]`` are a seed pair: the same training seed and the
    same sampling seeds, so aligned by sample index. With ``m_g = statistic(*shared,
    *model_groups[g])`` and ``b_g`` alike, the pooled change is

        (mean_g m_g - mean_g b_g) / |mean_g b_g|   (relative)   or   mean_g m_g - mean_g b_g.

    Replicate ``r`` resamples the pairs with replacement (the same drawn ``g`` for both arms), then
    one index vector within each drawn pair for both arms, and each shared set once; the change is
    recomputed from the replicate's pooled means. Replicates with a 0 pooled baseline are dropped.

    Raises:
        ValueError: on different numbers of model and baseline groups, a pair whose sizes differ,
            or a pooled baseline of 0 with ``relative``.
    """
    _check_resampling(num_resamples, confidence)
    shared_arrays, arms = _checked_arms(statistic, shared, {"model_groups": model_groups,
                                                           "baseline_groups": baseline_groups})
    point = _point_change(_arm_points(statistic, shared_arrays, arms), relative)
    model_reps, baseline_reps = _arm_replicates(statistic, shared_arrays, arms, num_resamples,
                                                np.random.default_rng(seed))
    return (point, *_change_interval(_change(model_reps, baseline_reps, relative), confidence))


def per_pair_changes(statistic: Statistic, model_groups: Groups, baseline_groups: Groups,
                     shared: Sequence[np.ndarray | Tensor] = (), relative: bool = True,
                     num_resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> list[tuple[float, float, float]]:
    """One :func:`paired_change_ci` ``(point, low, high)`` per seed pair ``(model_groups[g], baseline_groups[g])``.

    Pair ``g`` is resampled with the ``g``-th seed drawn from ``numpy.random.SeedSequence(seed)``.
    The intervals show whether the seeds agree; they are not corrected for multiplicity.
    """
    _check_resampling(num_resamples, confidence)
    _checked_arms(statistic, shared, {"model_groups": model_groups, "baseline_groups": baseline_groups})
    seeds = np.random.SeedSequence(seed).generate_state(len(model_groups))
    return [paired_change_ci(statistic, model, baseline, shared, relative, num_resamples, confidence, int(s))
            for model, baseline, s in zip(model_groups, baseline_groups, seeds, strict=True)]
