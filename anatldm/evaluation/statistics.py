"""The statistics of an evaluation: per model, pooled per arm, per seed pair, and the gate.

Inputs are per-sample arrays (:class:`ModelRecord`, one per trained model, every model sampled
with the same seeds, so sample ``i`` of two models is a pair) and the real reference sets shared
by all models (:class:`RealRecord`). Intervals are percentile bootstraps
(:mod:`anatldm.metrics.bootstrap`):

- one model: samples resampled (``bootstrap_ci``);
- an arm of several training seeds, pooled: mean over its models of the metric, hierarchical
  bootstrap (training seeds, then samples; ``hierarchical_ci``);
- a change against the baseline arm: paired by sampling seed (one index vector for both arms per
  replicate, the shared real set resampled once per replicate); per seed pair
  (``per_pair_changes``) and pooled over pairs (``hierarchical_change_ci``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from anatldm.metrics import (
    AreaWasserstein,
    FrechetSegmentationDistance,
    bootstrap_ci,
    frechet_feature_distance,
    hierarchical_change_ci,
    hierarchical_ci,
    kernel_feature_distance,
    per_pair_changes,
)

__all__ = ["METRICS", "MetricSpec", "ModelRecord", "RealRecord", "Statistics"]


@dataclass
class ModelRecord:
    """Per-sample results of one model, sample ``i`` drawn with seed ``seed + i``.

    ``passed`` ``(N,)`` 0/1 plausibility; ``violations`` ``{rule: (N,) 0/1}``; ``areas``
    ``(N, C - 1)`` judge area fractions; ``features`` ``(N, F)`` judge features; ``consistency``
    ``(N,)`` head-vs-judge Dice or ``None``; ``memorisation`` ``(N,)`` nearest-training RMSE;
    ``diversity`` ``(P,)`` MS-SSIM of sample pairs; ``checkpoint`` the file it came from;
    ``consistency_per_class`` the head-vs-judge Dice of each class over the samples where it is
    present, and ``head_dice_real`` the head's Dice against ground truth on real test slices by
    timestep (:class:`~anatldm.evaluation.head.HeadDice`), both ``None`` without a head;
    ``consistency_reconstructions`` the head's t = 0 mask vs the judge's on the decoded latents of
    the real test slices, per class and ``mean`` (the ceiling of ``consistency``), or ``None``.
    ``nfe`` network evaluations per sample; ``guidance`` the guidance it was sampled with (plain).
    """

    passed: np.ndarray
    violations: dict[str, np.ndarray]
    areas: np.ndarray
    features: np.ndarray
    memorisation: np.ndarray
    diversity: np.ndarray
    consistency: np.ndarray | None = None
    checkpoint: str = ""
    consistency_per_class: dict[str, float] | None = None
    head_dice_real: dict[str, dict[str, float]] | None = None
    consistency_reconstructions: dict[str, float] | None = None
    nfe: int = 0
    guidance: dict | None = None


@dataclass
class RealRecord:
    """The real reference: test-slice judge areas ``(M, C - 1)`` and features ``(M, F)``."""

    areas: np.ndarray
    features: np.ndarray


@dataclass(frozen=True)
class MetricSpec:
    """How one metric is computed from a :class:`ModelRecord` (``field``) and the real set."""

    label: str
    higher_is_better: bool
    field: str
    shared: str | None = None  # RealRecord field passed first to the statistic
    statistic: str = "mean"  # "mean", "fsd", "area_w1", "fid", "kid"
    paired: bool = True  # per-sample aligned across models (a change vs the baseline is meaningful)


#: metric -> how it is computed; the order of the report's rows
METRICS: dict[str, MetricSpec] = {
    "plausibility_rate": MetricSpec("Plausibility rate (primary)", True, "passed"),
    "fsd": MetricSpec("Fréchet segmentation distance", False, "areas", "areas", "fsd"),
    "area_w1": MetricSpec("Area Wasserstein-1 (mean over classes)", False, "areas", "areas", "area_w1"),
    "fid": MetricSpec("FID (judge features)", False, "features", "features", "fid"),
    "kid": MetricSpec("KID (judge features)", False, "features", "features", "kid"),
    "self_consistency_dice": MetricSpec("Self-consistency Dice (head vs judge)", True, "consistency"),
    "diversity_msssim": MetricSpec("Pairwise MS-SSIM (lower = more diverse)", False, "diversity", paired=False),
    "memorisation_rmse": MetricSpec("Nearest-training-slice RMSE (higher = less copying)", True, "memorisation"),
}


@dataclass
class Statistics:
    """Interval settings and the statistics of :data:`METRICS`.

    Args:
        num_bootstrap: replicates of mean statistics.
        num_bootstrap_costly: replicates of statistics that fit Gaussians or kernels (FSD, FID, KID).
        confidence: interval level.
        seed: resampling seed.
        kid_subset_size: samples per KID subset.
        kid_subsets: KID subsets per replicate.
    """

    num_bootstrap: int = 1000
    num_bootstrap_costly: int = 200
    confidence: float = 0.95
    seed: int = 0
    kid_subset_size: int = 100
    kid_subsets: int = 10

    def statistic(self, spec: MetricSpec) -> str | Callable:
        if spec.statistic == "mean":
            return "mean"
        if spec.statistic == "fsd":
            return FrechetSegmentationDistance.statistic
        if spec.statistic == "area_w1":
            return AreaWasserstein.statistic
        if spec.statistic == "fid":
            return frechet_feature_distance

        def kid(real: np.ndarray, fake: np.ndarray):
            return kernel_feature_distance(real, fake, self.kid_subset_size, self.kid_subsets, self.seed)

        return kid

    def resamples(self, spec: MetricSpec) -> int:
        return self.num_bootstrap if spec.statistic in ("mean", "area_w1") else self.num_bootstrap_costly

    # -- the pieces --------------------------------------------------------------------------
    @staticmethod
    def available(spec: MetricSpec, records: list[ModelRecord]) -> bool:
        values = [getattr(r, spec.field) for r in records]
        return all(v is not None and len(v) > 0 for v in values)

    def _sets(self, spec: MetricSpec, record: ModelRecord, real: RealRecord) -> tuple[list, list]:
        shared = [getattr(real, spec.shared)] if spec.shared else []
        return shared, [getattr(record, spec.field)]

    def model(self, spec: MetricSpec, record: ModelRecord, real: RealRecord) -> dict[str, float]:
        """One model's value and interval."""
        shared, arm = self._sets(spec, record, real)
        point, low, high = bootstrap_ci(self.statistic(spec), shared + arm, self.resamples(spec), self.confidence,
                                        self.seed)
        return {"value": point, "low": low, "high": high, "n": int(len(arm[0]))}

    def pooled(self, spec: MetricSpec, records: list[ModelRecord], real: RealRecord) -> dict[str, float]:
        """An arm's mean over its models, hierarchical interval (seeds, then samples)."""
        shared = [getattr(real, spec.shared)] if spec.shared else []
        groups = [[getattr(r, spec.field)] for r in records]
        point, low, high = hierarchical_ci(self.statistic(spec), groups, shared, self.resamples(spec),
                                           self.confidence, self.seed)
        return {"value": point, "low": low, "high": high, "num_models": len(records)}

    def changes(self, spec: MetricSpec, models: list[ModelRecord], baselines: list[ModelRecord], real: RealRecord,
                relative: bool = True) -> dict[str, Any]:
        """Paired change of an arm against another: pooled (hierarchical) and per seed pair."""
        shared = [getattr(real, spec.shared)] if spec.shared else []
        model_groups = [[getattr(r, spec.field)] for r in models]
        base_groups = [[getattr(r, spec.field)] for r in baselines]
        statistic, resamples = self.statistic(spec), self.resamples(spec)
        point, low, high = hierarchical_change_ci(statistic, model_groups, base_groups, shared, relative, resamples,
                                                  self.confidence, self.seed)
        pairs = per_pair_changes(statistic, model_groups, base_groups, shared, relative, resamples,
                                 self.confidence, self.seed)
        return {"value": point, "low": low, "high": high, "relative": relative,
                "pairs": [{"value": p, "low": lo, "high": hi} for p, lo, hi in pairs]}

    def real_floor(self, train_features: np.ndarray, real: RealRecord) -> dict[str, dict[str, float]]:
        """FID and KID between real training and real test slices (same counts): the floor."""
        out = {}
        for name in ("fid", "kid"):
            spec = METRICS[name]
            point, low, high = bootstrap_ci(self.statistic(spec), [real.features, train_features],
                                            self.resamples(spec), self.confidence, self.seed)
            out[name] = {"value": point, "low": low, "high": high, "n": int(len(train_features))}
        return out

    def rate(self, passed: np.ndarray) -> dict[str, float]:
        """A pass rate with its interval."""
        point, low, high = bootstrap_ci("mean", [passed], self.num_bootstrap, self.confidence, self.seed)
        return {"value": point, "low": low, "high": high, "n": int(len(passed))}


def violation_rates(record: ModelRecord) -> dict[str, float]:
    """``{rule: fraction of samples that break it}``."""
    return {rule: float(np.mean(v)) for rule, v in record.violations.items()}
