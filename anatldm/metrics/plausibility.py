"""The plausibility rate: the primary anatomical-accuracy metric (docs/method.md, 'Metric definitions')."""

from __future__ import annotations

import torch
from torch import Tensor

from anatldm.metrics.base import SampleMetric, check_masks
from anatldm.metrics.rules import AnatomyRules

__all__ = ["PlausibilityRate"]


class PlausibilityRate(SampleMetric):
    """Fraction of samples whose label map obeys every anatomy rule learned from real masks.

    ``rate = (1 / N) * sum_n 1[mask_n obeys all rules of AnatomyRules]``, where the masks are the
    downstream segmenter's predictions on generated images. The rules (per-class range rules, class
    co-occurrence, optionally the joint layout rule) are fitted once on real calibration masks, see
    :mod:`anatldm.metrics.rules`. Higher is better; real test slices pass at about the layout
    rule's conformal level (0.95 in the claim's configuration).

    States (``"cat"``, synced across DDP ranks): ``passed`` ``(N,)`` float 0/1 per sample and
    ``violations`` ``(N, R)`` float 0/1 per sample and rule (``R = len(rules.rule_names)``).

    Args:
        rules: the fitted :class:`~anatldm.metrics.rules.AnatomyRules`.
        **kwargs: ``torchmetrics.Metric`` options (``sync_on_compute``, ``process_group``, ...).
    """

    is_differentiable = False
    higher_is_better = True

    def __init__(self, rules: AnatomyRules, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(rules, AnatomyRules):
            raise ValueError(f"rules must be AnatomyRules, got {type(rules).__name__}")
        self.rules = rules
        self.add_state("passed", default=[], dist_reduce_fx="cat")
        self.add_state("violations", default=[], dist_reduce_fx="cat")

    def update(self, masks: Tensor) -> None:
        """Add label maps ``(B, H, W)`` (int, classes ``0 .. C - 1``)."""
        masks = check_masks(masks, self.rules.num_classes)
        plausible, violations = self.rules.check_batch(masks.cpu().numpy())
        self.passed.append(torch.as_tensor(plausible, dtype=torch.float32, device=self.device))  # (B,)
        broken = torch.stack([torch.as_tensor(violations[r]) for r in self.rules.rule_names], dim=1)  # (B, R)
        self.violations.append(broken.to(device=self.device, dtype=torch.float32))

    def compute(self) -> Tensor:
        """The plausibility rate, a scalar in [0, 1]."""
        passed = self.gathered("passed")
        if passed.numel() == 0:
            raise RuntimeError("PlausibilityRate.compute() needs at least one update with masks")
        return passed.mean()

    def per_sample(self) -> Tensor:
        """``(N,)`` 1.0 where a sample obeys all rules, 0.0 otherwise (for the bootstrap)."""
        return self.gathered("passed")

    def violation_rates(self) -> dict[str, float]:
        """``{rule name: fraction of samples that break it}`` for the report."""
        violations = self.gathered("violations")  # (N, R)
        if violations.numel() == 0:
            return {rule: float("nan") for rule in self.rules.rule_names}
        rates = violations.reshape(-1, len(self.rules.rule_names)).mean(dim=0)  # (R,)
        return {rule: float(rate) for rule, rate in zip(self.rules.rule_names, rates, strict=True)}
