"""Evaluation metrics (docs/method.md, 'Metric definitions'), each a ``torchmetrics.Metric`` that syncs across DDP ranks.

- Anatomical accuracy (primary): :class:`PlausibilityRate` against :class:`AnatomyRules` fitted
  once on the judge's labels of real calibration slices (or on ground-truth masks).
- Segmentation statistics: :class:`FrechetSegmentationDistance`, :class:`AreaWasserstein`,
  :class:`SelfConsistencyDice`.
- Realism: FID / KID on a domain encoder (:func:`make_fid_kid`, :class:`PooledEncoderFeatures`).
- Diversity and memorisation: :class:`PairwiseMSSSIM`, :class:`Memorisation`.
- Uncertainty: :func:`bootstrap_ci`, :func:`relative_change_ci`; paired and hierarchical (training
  seeds) designs: :func:`paired_change_ci`, :func:`hierarchical_ci`, :func:`hierarchical_change_ci`,
  :func:`per_pair_changes`.
"""

from anatldm.metrics.base import SampleMetric, area_fractions, gather_state
from anatldm.metrics.bootstrap import (
    bootstrap_ci,
    bootstrap_replicates,
    hierarchical_change_ci,
    hierarchical_ci,
    paired_change_ci,
    paired_change_replicates,
    per_pair_changes,
    relative_change_ci,
)
from anatldm.metrics.diversity import MSSSIMSettings, PairwiseMSSSIM, msssim_settings
from anatldm.metrics.features import (
    InceptionFeatures,
    PooledEncoderFeatures,
    RealismMetrics,
    SeededKernelInceptionDistance,
    frechet_feature_distance,
    kernel_feature_distance,
    make_fid_kid,
)
from anatldm.metrics.layout import LayoutRule, layout_features
from anatldm.metrics.memorisation import Memorisation, nearest_rmse
from anatldm.metrics.plausibility import PlausibilityRate
from anatldm.metrics.rules import (
    AnatomyFeatures,
    AnatomyRules,
    RulesConfig,
    anatomy_features,
    remove_small_components,
)
from anatldm.metrics.segmentation import (
    AreaWasserstein,
    FrechetSegmentationDistance,
    SelfConsistencyDice,
    frechet_distance,
    gaussian_statistics,
    per_class_dice,
    wasserstein_1d,
)

__all__ = [
    "AnatomyFeatures",
    "AnatomyRules",
    "AreaWasserstein",
    "FrechetSegmentationDistance",
    "InceptionFeatures",
    "LayoutRule",
    "MSSSIMSettings",
    "Memorisation",
    "PairwiseMSSSIM",
    "PlausibilityRate",
    "PooledEncoderFeatures",
    "RealismMetrics",
    "RulesConfig",
    "SampleMetric",
    "SeededKernelInceptionDistance",
    "SelfConsistencyDice",
    "anatomy_features",
    "area_fractions",
    "bootstrap_ci",
    "bootstrap_replicates",
    "frechet_distance",
    "frechet_feature_distance",
    "gather_state",
    "gaussian_statistics",
    "hierarchical_change_ci",
    "hierarchical_ci",
    "kernel_feature_distance",
    "layout_features",
    "make_fid_kid",
    "msssim_settings",
    "nearest_rmse",
    "paired_change_ci",
    "paired_change_replicates",
    "per_class_dice",
    "per_pair_changes",
    "relative_change_ci",
    "remove_small_components",
    "wasserstein_1d",
]
