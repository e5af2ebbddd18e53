"""Quality filter of an export: which generated (image, mask) pairs are worth keeping (no Lightning).

A pair is kept only if its mask passes every criterion that is switched on
(:class:`QualityFilterConfig`, YAML ``DatasetWriter.quality_filter``):

- **agreement with a segmenter**: the mean foreground Dice between the sample's mask (the
  generator's anatomy head) and the mask a segmenter draws on the sample's image is at least
  ``min_dice``. Dice per class is :func:`anatldm.metrics.segmentation.per_class_dice`: a class
  absent from both masks carries no information and is left out of the mean (NaN), as in
  :class:`~anatldm.metrics.SelfConsistencyDice`. A sample whose two masks are both all background
  has no Dice at all; the criterion then passes (the two agree: there is nothing to draw).
- **anatomy rules**: the mask obeys :class:`~anatldm.metrics.AnatomyRules` fitted on the
  ground-truth masks of the training split the generator was trained on.

The segmenter must be one the user trained on their own training split (``anatldm fit`` with a
``SegmenterTask`` on the generator's training data), **never the evaluation judge**: a filter that
selects samples by the judge's opinion makes every later evaluation with that judge meaningless.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from anatldm.errors import ConfigError, check_checkpoint_file
from anatldm.metrics.rules import AnatomyRules, RulesConfig
from anatldm.metrics.segmentation import per_class_dice

__all__ = ["FilterDecision", "FilterRulesConfig", "QualityFilterConfig", "drops_by_criterion", "filter_decisions",
           "filter_summary"]


@dataclass(frozen=True)
class FilterRulesConfig(RulesConfig):
    """:class:`~anatldm.metrics.RulesConfig` of the quality filter: the same settings, read from
    YAML ``DatasetWriter.quality_filter.rules_config`` (errors name that key)."""

    key = "DatasetWriter.quality_filter.rules_config"


@dataclass
class QualityFilterConfig:
    """Which generated pairs ``DatasetWriter`` keeps (YAML ``DatasetWriter.quality_filter``).

    Set ``segmenter`` with ``min_dice``, ``rules: true``, or both; a sample must pass all that are set.

    Args:
        segmenter: ``SegmenterTask`` checkpoint trained on **your own training split** (the
            generator's training data); never the evaluation judge (refused when ``DatasetWriter.report``
            names it). Needs ``min_dice``.
        min_dice: keep a sample only if the mean foreground Dice between its mask and the
            segmenter's mask of its image is >= ``min_dice``, in [0, 1] (classes absent from both
            masks are left out of the mean; two all-background masks pass).
        rules: keep a sample only if its mask passes the anatomy rules fitted on the ground-truth
            masks of the generator's training split (the data the memorisation audit reads).
        rules_config: how those rules are fitted (``None``: the :class:`~anatldm.metrics.RulesConfig`
            defaults); needs ``rules: true``.
    """

    #: where these settings sit in a config: errors name ``<key>.<field>``
    key = "DatasetWriter.quality_filter"

    segmenter: str | None = None
    min_dice: float | None = None
    rules: bool = False
    rules_config: FilterRulesConfig | None = None

    def __post_init__(self) -> None:
        key = self.key
        if self.segmenter is None and not self.rules:
            raise ConfigError(f"{key}: no criterion set: name a segmenter with min_dice, and/or set rules: true "
                              f"(or remove {key})")
        if self.segmenter is None and self.min_dice is not None:
            raise ConfigError(f"{key}.min_dice needs {key}.segmenter (a SegmenterTask checkpoint trained on your "
                              f"own training split)")
        if self.segmenter is not None:
            if self.min_dice is None:
                raise ConfigError(f"{key}.min_dice: set the Dice threshold in [0, 1] for {key}.segmenter")
            if isinstance(self.min_dice, bool) or not isinstance(self.min_dice, (int, float)) \
                    or not 0.0 <= self.min_dice <= 1.0:
                raise ConfigError(f"{key}.min_dice must lie in [0, 1] (Dice cannot exceed 1), got {self.min_dice!r}")
            check_checkpoint_file(self.segmenter, f"{key}.segmenter")
        if self.rules_config is not None:
            if not self.rules:
                raise ConfigError(f"{key}.rules_config is only used with {key}.rules: true")
            if not isinstance(self.rules_config, FilterRulesConfig):  # a RulesConfig or a dict from Python
                fields = (dataclasses.asdict(self.rules_config) if isinstance(self.rules_config, RulesConfig)
                          else dict(self.rules_config))
                self.rules_config = FilterRulesConfig(**fields)

    @property
    def fitted_rules(self) -> RulesConfig:
        """The settings the rules are fitted with."""
        return self.rules_config if self.rules_config is not None else FilterRulesConfig()

    def describe(self) -> dict:
        """The settings as the data card records them."""
        return {"segmenter": self.segmenter, "min_dice": self.min_dice, "rules": self.rules,
                "rules_config": dataclasses.asdict(self.fitted_rules) if self.rules else None}


@dataclass(frozen=True)
class FilterDecision:
    """The quality filter's verdict on one sample.

    Args:
        keep: the sample passes every criterion that is set.
        dice: mean foreground Dice of its mask vs the segmenter's; ``None`` without a segmenter or
            when both masks are all background.
        reasons: why it is dropped, e.g. ``("dice 0.410 < 0.6", "rules: kidney/components, cooccurrence")``;
            empty when kept.
    """

    keep: bool
    dice: float | None
    reasons: tuple[str, ...]


def filter_decisions(masks: np.ndarray | Tensor, num_classes: int, config: QualityFilterConfig,
                     segmenter_masks: np.ndarray | Tensor | None = None,
                     rules: AnatomyRules | None = None) -> list[FilterDecision]:
    """Keep or drop each of a batch of samples, with the reasons.

    Args:
        masks: the samples' label maps ``(B, H, W)`` (the head's), class indices in ``[0, num_classes)``.
        num_classes: classes including background.
        config: the filter's settings.
        segmenter_masks: the segmenter's label maps of the same samples' images ``(B, H, W)``;
            needed when ``config.segmenter`` is set.
        rules: the anatomy rules fitted on the training split's ground truth; needed when ``config.rules``.
    """
    masks = torch.as_tensor(np.asarray(masks) if not isinstance(masks, Tensor) else masks).long()  # (B, H, W)
    if masks.ndim != 3:
        raise ValueError(f"masks must be label maps (B, H, W), got shape {tuple(masks.shape)}")
    size = masks.shape[0]
    dice: list[float | None] = [None] * size
    reasons: list[list[str]] = [[] for _ in range(size)]
    if config.segmenter is not None:
        if segmenter_masks is None:
            raise ValueError("the filter has a segmenter: pass segmenter_masks")
        other = torch.as_tensor(np.asarray(segmenter_masks) if not isinstance(segmenter_masks, Tensor)
                                else segmenter_masks).long().to(masks.device)
        if other.shape != masks.shape:
            raise ValueError(f"segmenter_masks {tuple(other.shape)} and masks {tuple(masks.shape)} differ in shape")
        values = per_class_dice(masks, other, num_classes).nanmean(dim=1)  # (B,), NaN: both all background
        for index, value in enumerate(values.tolist()):
            if math.isnan(value):
                continue
            dice[index] = value
            if value < config.min_dice:
                reasons[index].append(f"dice {value:.3f} < {config.min_dice:g}")
    if config.rules:
        if rules is None:
            raise ValueError("the filter checks anatomy rules: pass the fitted rules")
        _, violations = rules.check_batch(masks.cpu().numpy())
        for index in range(size):
            broken = [name for name, fails in violations.items() if fails[index]]
            if broken:
                reasons[index].append(f"rules: {', '.join(broken)}")
    return [FilterDecision(not why, value, tuple(why)) for value, why in zip(dice, reasons, strict=True)]


def drops_by_criterion(decisions: Sequence[FilterDecision]) -> dict[str, int]:
    """How many samples each criterion (``dice``, ``rules``) dropped; a sample may count for both."""
    counts: Counter[str] = Counter()
    for decision in decisions:
        counts.update({reason.split(" ")[0].rstrip(":") for reason in decision.reasons})
    return {name: counts[name] for name in ("dice", "rules") if counts[name]}


def filter_summary(config: QualityFilterConfig, decisions: Sequence[FilterDecision], case_ids: Sequence[str],
                   seeds: Sequence[int], rules: AnatomyRules | None = None,
                   segmenter_sha256: str | None = None) -> dict:
    """The data card's ``quality_filter`` section: settings, counts, every dropped sample and why.

    Args:
        config: the filter's settings.
        decisions: one per generated sample, in generation order.
        case_ids: the samples' case ids, aligned with ``decisions``.
        seeds: their seeds.
        rules: the fitted rules (their source and size are recorded).
        segmenter_sha256: the segmenter checkpoint's hash.
    """
    dropped = [{"case": case, "seed": int(seed), "dice": decision.dice, "reasons": list(decision.reasons)}
               for decision, case, seed in zip(decisions, case_ids, seeds, strict=True) if not decision.keep]
    kept_dice = [d.dice for d in decisions if d.keep and d.dice is not None]
    return {
        "settings": {**config.describe(), "segmenter_sha256": segmenter_sha256},
        "rules_fitted_on": (f"{rules.source} ({rules.num_fitted} masks)" if rules is not None else None),
        "num_generated": len(decisions), "num_kept": len(decisions) - len(dropped), "num_dropped": len(dropped),
        "dropped_by_criterion": drops_by_criterion(decisions),
        "kept_dice_median": float(np.median(kept_dice)) if kept_dice else None,
        "dropped": dropped,
    }
