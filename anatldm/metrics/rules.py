"""Anatomy rules learned once from real calibration masks: what a plausible label map looks like.

For a judge of generated anatomy the calibration masks are the judge's own labels of held-out
real slices (so real and generated slices face the same judge noise), and the joint organ layout
is checked by :class:`~anatldm.metrics.layout.LayoutRule`; see ``EvaluationTask``.

The rules are the reference of the primary anatomical-accuracy metric, the plausibility rate
(docs/method.md, 'Plausibility rules'): for every foreground class, over the real slices where it is present, the
range between the ``low`` and ``high`` percentiles of

- its number of connected components (8-connectivity),
- its number of holes (4-connected components of "not this class" that do not reach the slice
  border, i.e. what ``scipy.ndimage.binary_fill_holes`` fills; 4-connectivity is the
  topological dual of 8-connected foreground),
- its area fraction (pixels of the class / pixels of the slice),
- its centroid row and column, normalised to [0, 1] (pixel centres at ``(i + 0.5) / H``);

plus class co-occurrence: the set of class pairs seen together in at least one real slice (the
diagonal holds the classes seen at all). Anatomical-plausibility checks of this kind follow the
topological and shape priors used to judge segmentations, e.g. Painchaud et al., "Cardiac
Segmentation with Strong Anatomical Guarantees" (IEEE TMI 2020), here learned from data rather
than written by hand.

A range is ``[percentile(values, low, method="lower"), percentile(values, high,
method="higher")]``: both ends are observed real values, the range is inclusive and widened by
``tolerance`` against floating-point round-off. A rule of a class applies only where the class is
present; a class never seen in real slices has no ranges (its presence breaks co-occurrence).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from torch import Tensor

from anatldm.errors import ConfigError
from anatldm.metrics.layout import LayoutRule

__all__ = ["AnatomyFeatures", "AnatomyRules", "RulesConfig", "anatomy_features", "remove_small_components"]

logger = logging.getLogger(__name__)

# Structures that connect pixels within a slice only, so a stack (N, H, W) is labelled at once.
_EIGHT_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED[1] = True
_FOUR_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_FOUR_CONNECTED[1] = ndimage.generate_binary_structure(2, 1)

_RANGE_FEATURES = ("components", "holes", "area", "centroid_row", "centroid_col")
_RULE_FEATURES = {"components": ("components",), "holes": ("holes",), "area": ("area",),
                  "centroid": ("centroid_row", "centroid_col")}


@dataclass(frozen=True)
class RulesConfig:
    """How :meth:`AnatomyRules.fit` learns the rules (YAML ``model.rules`` of ``EvaluationTask``).

    Args:
        low: lower percentile of every range, in [0, 100).
        high: upper percentile, in (low, 100].
        tolerance: absolute widening of every range when checking.
        range_rules: which per-class range rules to check, among ``components``, ``holes``,
            ``area`` and ``centroid``.
        min_component_pixels: components smaller than this are ignored (fit and check).
        layout: also fit the joint-layout rule (:class:`~anatldm.metrics.layout.LayoutRule`).
        layout_neighbours: ``k`` of the layout rule (nearest calibration slices), at least 1.
        layout_quantile: conformal level of the layout threshold, in (0, 1].
        layout_floor_pixels: smallest feature scale of the layout rule, in pixels.
    """

    #: where these settings sit in a config: errors name ``<key>.<field>``
    key = "model.rules"

    low: float = 0.5
    high: float = 99.5
    tolerance: float = 1e-6
    range_rules: tuple[str, ...] = tuple(_RULE_FEATURES)
    min_component_pixels: int = 0
    layout: bool = False
    layout_neighbours: int = 3
    layout_quantile: float = 0.975
    layout_floor_pixels: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "range_rules", tuple(self.range_rules))  # a YAML list
        key = self.key
        if not 0.0 <= self.low < 100.0:
            raise ConfigError(f"{key}.low must lie in [0, 100), got {self.low}")
        if not self.low < self.high <= 100.0:
            raise ConfigError(f"{key}.high must lie in ({key}.low = {self.low}, 100], got {self.high}")
        if self.tolerance < 0:
            raise ConfigError(f"{key}.tolerance must be >= 0, got {self.tolerance}")
        if unknown := [rule for rule in self.range_rules if rule not in _RULE_FEATURES]:
            raise ConfigError(f"{key}.range_rules: {unknown} are not among {list(_RULE_FEATURES)}")
        if self.min_component_pixels < 0:
            raise ConfigError(f"{key}.min_component_pixels must be >= 0, got {self.min_component_pixels}")
        if self.layout_neighbours < 1:
            raise ConfigError(f"{key}.layout_neighbours must be at least 1, got {self.layout_neighbours}")
        if not 0.0 < self.layout_quantile <= 1.0:
            raise ConfigError(f"{key}.layout_quantile must lie in (0, 1], got {self.layout_quantile}")
        if self.layout_floor_pixels < 0:
            raise ConfigError(f"{key}.layout_floor_pixels must be >= 0, got {self.layout_floor_pixels}")


#: the defaults of every setting the rules are saved with
_DEFAULTS = RulesConfig()


@dataclass
class AnatomyFeatures:
    """Per-slice, per-foreground-class shape features, each ``(N, C - 1)``.

    ``present`` is bool; ``components`` and ``holes`` are counts (0 where absent); ``area`` is a
    fraction in [0, 1]; ``centroid_row`` / ``centroid_col`` lie in (0, 1) and are NaN where the
    class is absent.
    """

    present: np.ndarray
    components: np.ndarray
    holes: np.ndarray
    area: np.ndarray
    centroid_row: np.ndarray
    centroid_col: np.ndarray


def _components_per_slice(labels: np.ndarray, num_slices: int) -> np.ndarray:
    """Number of distinct non-zero labels in each slice of a stack labelled slice by slice."""
    flat = labels.reshape(num_slices, -1)  # (N, H * W)
    slice_index, pixel = np.nonzero(flat)
    if slice_index.size == 0:
        return np.zeros(num_slices, dtype=np.int64)
    _, first = np.unique(flat[slice_index, pixel], return_index=True)  # one entry per component
    return np.bincount(slice_index[first], minlength=num_slices)  # (N,)


def _holes_per_slice(binary: np.ndarray) -> np.ndarray:
    """Holes of every slice of ``(N, H, W)``: 4-connected background components off the border.

    The same holes as ``binary_fill_holes(binary) & ~binary`` (what fill-holes fills), counted.
    """
    background, count = ndimage.label(~binary, structure=_FOUR_CONNECTED)  # (N, H, W)
    touches_border = np.zeros(count + 1, dtype=bool)
    touches_border[0] = True  # the class itself
    for edge in (background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1]):
        touches_border[edge] = True
    enclosed = np.where(touches_border[background], 0, background)
    return _components_per_slice(enclosed, binary.shape[0])


def remove_small_components(masks: np.ndarray, num_classes: int, min_pixels: int) -> np.ndarray:
    """Label maps with every 8-connected component smaller than ``min_pixels`` set to background.

    A judge's stray pixels are not anatomy; removing them from real and generated maps alike keeps
    them from failing a slice (``min_pixels <= 1`` returns the maps unchanged).
    """
    if min_pixels <= 1:
        return masks
    masks = masks.copy()
    for c in range(1, num_classes):
        labels, count = ndimage.label(masks == c, structure=_EIGHT_CONNECTED)
        if count == 0:
            continue
        small = np.bincount(labels.ravel(), minlength=count + 1) < min_pixels
        small[0] = False
        masks[small[labels]] = 0
    return masks


def anatomy_features(masks: np.ndarray | Tensor, num_classes: int) -> AnatomyFeatures:
    """Shape features of label maps ``(N, H, W)`` for classes ``1 .. num_classes - 1``.

    Vectorised over slices: every class and its complement are labelled once on the whole stack
    with structures that never connect two slices (``scipy.ndimage.label``).
    """
    masks = masks.cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}")
    num_slices, height, width = masks.shape
    rows = (np.arange(height) + 0.5) / height  # (H,)
    cols = (np.arange(width) + 0.5) / width  # (W,)
    shape = (num_slices, num_classes - 1)
    present = np.zeros(shape, dtype=bool)
    components = np.zeros(shape, dtype=np.int64)
    holes = np.zeros(shape, dtype=np.int64)
    area = np.zeros(shape, dtype=np.float64)
    centroid_row = np.full(shape, np.nan)
    centroid_col = np.full(shape, np.nan)
    for c in range(1, num_classes):
        binary = masks == c  # (N, H, W)
        count = binary.sum(axis=(1, 2))  # (N,)
        k = c - 1
        present[:, k] = count > 0
        area[:, k] = count / (height * width)
        if not present[:, k].any():
            continue
        labels, _ = ndimage.label(binary, structure=_EIGHT_CONNECTED)
        components[:, k] = _components_per_slice(labels, num_slices)
        holes[:, k] = _holes_per_slice(binary)
        with np.errstate(invalid="ignore", divide="ignore"):
            centroid_row[:, k] = binary.sum(axis=2) @ rows / count  # (N,)
            centroid_col[:, k] = binary.sum(axis=1) @ cols / count  # (N,)
    centroid_row[~present] = np.nan
    centroid_col[~present] = np.nan
    return AnatomyFeatures(present, components, holes, area, centroid_row, centroid_col)


class AnatomyRules:
    """Anatomy rules fitted once on real calibration masks and saved with the evaluation report.

    Build with :meth:`fit`; save with :meth:`to_dict` (JSON-able) and load with :meth:`from_dict`.
    Rule names are ``"<class>/<feature>"`` for each foreground class and each of ``range_rules``
    (from ``components``, ``holes``, ``area``, ``centroid``), ``"cooccurrence"`` and, when fitted
    with one, ``"layout"`` (:class:`~anatldm.metrics.layout.LayoutRule`, the joint organ layout).
    See the module docstring for their definitions.

    Args:
        class_names: names of all classes, background (index 0) included.
        ranges: ``{class name: {feature: (low, high)} or None}`` for foreground classes, with the
            features ``components``, ``holes``, ``area``, ``centroid_row``, ``centroid_col``;
            ``None`` for a class never present in the real masks.
        cooccurrence: ``(C - 1, C - 1)`` symmetric bool matrix; ``[i, j]`` is True when classes
            ``i + 1`` and ``j + 1`` were seen in the same real slice (diagonal: seen at all).
        low: lower percentile the ranges were fitted with (kept for the report).
        high: upper percentile.
        tolerance: absolute widening of every range when checking.
        num_fitted: number of real masks the rules were fitted on.
        range_rules: the per-class range rules that are checked.
        min_component_pixels: components smaller than this are removed (set to background) before
            any feature is measured, in fitting and checking alike.
        layout: the joint-layout rule, or ``None``.
        source: what the rules were fitted on (e.g. ``"judge predictions of 64 calibration
            subjects"``), kept for the report.
    """

    def __init__(self, class_names: Sequence[str], ranges: dict[str, dict[str, tuple[float, float]] | None],
                 cooccurrence: np.ndarray, low: float = _DEFAULTS.low, high: float = _DEFAULTS.high,
                 tolerance: float = _DEFAULTS.tolerance, num_fitted: int = 0,
                 range_rules: Sequence[str] = _DEFAULTS.range_rules,
                 min_component_pixels: int = _DEFAULTS.min_component_pixels, layout: LayoutRule | None = None,
                 source: str = "") -> None:
        self.class_names = _check_class_names(class_names)
        foreground = self.class_names[1:]
        if set(ranges) != set(foreground):
            raise ValueError(f"ranges must have one entry per foreground class {foreground}, got {sorted(ranges)}")
        cooccurrence = np.asarray(cooccurrence, dtype=bool)
        if cooccurrence.shape != (len(foreground), len(foreground)):
            raise ValueError(f"cooccurrence must have shape {(len(foreground), len(foreground))}, "
                             f"got {cooccurrence.shape}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        unknown = [rule for rule in range_rules if rule not in _RULE_FEATURES]
        if unknown:
            raise ValueError(f"range_rules {unknown} are not among {list(_RULE_FEATURES)}")
        if min_component_pixels < 0:
            raise ValueError(f"min_component_pixels must be >= 0, got {min_component_pixels}")
        for name, value in ranges.items():
            if value is not None and set(value) != set(_RANGE_FEATURES):
                raise ValueError(f"ranges of '{name}' must give {list(_RANGE_FEATURES)}, got {sorted(value)}")
        self.ranges = {name: None if value is None else {f: (float(value[f][0]), float(value[f][1]))
                                                         for f in _RANGE_FEATURES}
                       for name, value in ranges.items()}
        self.cooccurrence = cooccurrence | cooccurrence.T
        self.low, self.high, self.tolerance, self.num_fitted = float(low), float(high), float(tolerance), num_fitted
        self.range_rules = [rule for rule in _RULE_FEATURES if rule in range_rules]
        self.min_component_pixels, self.layout, self.source = int(min_component_pixels), layout, source
        # Dense (C - 1,) bounds per feature for the vectorised check; NaN bounds never fail.
        self._lower = {f: np.array([np.nan if self.ranges[n] is None else self.ranges[n][f][0] for n in foreground])
                       for f in _RANGE_FEATURES}
        self._upper = {f: np.array([np.nan if self.ranges[n] is None else self.ranges[n][f][1] for n in foreground])
                       for f in _RANGE_FEATURES}

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.class_names)

    @property
    def rule_names(self) -> list[str]:
        """All rule names, in a fixed order: per class (the range rules), co-occurrence, layout."""
        names = [f"{name}/{rule}" for name in self.class_names[1:] for rule in self.range_rules] + ["cooccurrence"]
        return names + (["layout"] if self.layout is not None else [])

    @classmethod
    def fit(cls, masks: np.ndarray | Tensor, class_names: Sequence[str], config: RulesConfig | None = None,
            subjects: np.ndarray | None = None, source: str = "") -> AnatomyRules:
        """Learn the rules from real calibration label maps ``(N, H, W)`` (see the module docstring).

        Args:
            masks: real calibration masks, integer class indices in ``[0, len(class_names))``.
            class_names: names of all classes, background first.
            config: how the rules are learned (``None``: the :class:`RulesConfig` defaults).
            subjects: subject of every mask (the layout rule's leave-one-subject-out calibration).
            source: what the masks are, for the report.
        """
        config = config if config is not None else _DEFAULTS
        class_names = _check_class_names(class_names)
        masks = _as_label_array(masks, len(class_names))
        if masks.shape[0] == 0:
            raise ValueError("cannot fit anatomy rules on zero masks")
        masks = remove_small_components(masks, len(class_names), config.min_component_pixels)
        features = anatomy_features(masks, len(class_names))
        ranges: dict[str, dict[str, tuple[float, float]] | None] = {}
        for k, name in enumerate(class_names[1:]):
            where = features.present[:, k]
            if not where.any():
                logger.warning("class '%s' is absent from all %d real masks: any presence will break "
                               "co-occurrence", name, masks.shape[0])
                ranges[name] = None
                continue
            ranges[name] = {}
            for feature in _RANGE_FEATURES:
                values = getattr(features, feature)[where, k]
                ranges[name][feature] = (float(np.percentile(values, config.low, method="lower")),
                                         float(np.percentile(values, config.high, method="higher")))
        present = features.present.astype(np.int64)  # (N, C - 1)
        cooccurrence = (present.T @ present) > 0  # (C - 1, C - 1)
        layout_rule = LayoutRule.fit(masks, len(class_names), subjects, k=config.layout_neighbours,
                                     quantile=config.layout_quantile,
                                     floor_pixels=config.layout_floor_pixels) if config.layout else None
        logger.info("anatomy rules fitted on %d real masks, %d classes", masks.shape[0], len(class_names))
        return cls(class_names, ranges, cooccurrence, low=config.low, high=config.high, tolerance=config.tolerance,
                   num_fitted=int(masks.shape[0]), range_rules=config.range_rules,
                   min_component_pixels=config.min_component_pixels, layout=layout_rule, source=source)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description of the rules (the inverse of :meth:`from_dict`)."""
        foreground = self.class_names[1:]
        pairs = [[foreground[i], foreground[j]] for i in range(len(foreground))
                 for j in range(i, len(foreground)) if self.cooccurrence[i, j]]
        return {"class_names": list(self.class_names), "low": self.low, "high": self.high,
                "tolerance": self.tolerance, "num_fitted": self.num_fitted, "source": self.source,
                "range_rules": list(self.range_rules), "min_component_pixels": self.min_component_pixels,
                "ranges": {name: None if value is None else {f: list(bounds) for f, bounds in value.items()}
                           for name, value in self.ranges.items()},
                "cooccurrence": pairs,
                "layout": None if self.layout is None else self.layout.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnatomyRules:
        """Rebuild rules saved by :meth:`to_dict`."""
        missing = {"class_names", "ranges", "cooccurrence"} - set(data)
        if missing:
            raise ValueError(f"anatomy rules are missing the keys {sorted(missing)}")
        class_names = _check_class_names(data["class_names"])
        index = {name: k for k, name in enumerate(class_names[1:])}
        cooccurrence = np.zeros((len(index), len(index)), dtype=bool)
        for pair in data["cooccurrence"]:
            unknown = [name for name in pair if name not in index]
            if len(pair) != 2 or unknown:
                raise ValueError(f"co-occurrence pair {pair} must name two foreground classes of {class_names[1:]}")
            cooccurrence[index[pair[0]], index[pair[1]]] = True
        ranges = {name: None if value is None else {f: tuple(b) for f, b in value.items()}
                  for name, value in data["ranges"].items()}
        layout = LayoutRule.from_dict(data["layout"]) if data.get("layout") else None
        return cls(class_names, ranges, cooccurrence, low=data.get("low", _DEFAULTS.low),
                   high=data.get("high", _DEFAULTS.high), tolerance=data.get("tolerance", _DEFAULTS.tolerance),
                   num_fitted=data.get("num_fitted", 0), range_rules=data.get("range_rules", _DEFAULTS.range_rules),
                   min_component_pixels=data.get("min_component_pixels", _DEFAULTS.min_component_pixels),
                   layout=layout,
                   source=data.get("source", ""))

    def check_batch(self, masks: np.ndarray | Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Check label maps ``(N, H, W)`` against every rule.

        Returns:
            ``plausible`` ``(N,)`` bool, True where a mask obeys all rules, and ``violations``
            ``{rule name: (N,) bool}``, True where the mask breaks that rule.
        """
        masks = remove_small_components(_as_label_array(masks, self.num_classes), self.num_classes,
                                        self.min_component_pixels)
        features = anatomy_features(masks, self.num_classes)
        violations: dict[str, np.ndarray] = {}
        for rule in self.range_rules:
            broken = np.zeros(features.present.shape, dtype=bool)  # (N, C - 1)
            for feature in _RULE_FEATURES[rule]:
                values = getattr(features, feature)
                with np.errstate(invalid="ignore"):
                    broken |= (values < self._lower[feature] - self.tolerance)
                    broken |= (values > self._upper[feature] + self.tolerance)
            broken &= features.present
            for k, name in enumerate(self.class_names[1:]):
                violations[f"{name}/{rule}"] = broken[:, k]
        present = features.present.astype(np.int64)  # (N, C - 1)
        unseen = (~self.cooccurrence).astype(np.int64)  # (C - 1, C - 1)
        violations["cooccurrence"] = ((present @ unseen) * present).sum(axis=1) > 0  # (N,)
        if self.layout is not None:
            violations["layout"] = ~self.layout.check(masks, self.num_classes)
        violations = {rule: violations[rule] for rule in self.rule_names}
        plausible = ~np.any(np.stack(list(violations.values()), axis=1), axis=1)  # (N,)
        return plausible, violations

    def check(self, mask: np.ndarray | Tensor) -> dict[str, bool]:
        """Check one label map ``(H, W)``: ``{rule name: True if the mask obeys the rule}``."""
        mask = np.asarray(mask.cpu().numpy() if isinstance(mask, Tensor) else mask)
        if mask.ndim != 2:
            raise ValueError(f"check takes one mask of shape (H, W), got {mask.shape}; use check_batch")
        _, violations = self.check_batch(mask[None])
        return {rule: not bool(broken[0]) for rule, broken in violations.items()}

    def lateralised_classes(self, masks: np.ndarray | Tensor, share: float = 0.95) -> list[int]:
        """Classes on one side of the midline (centroid column) in at least ``share`` of the maps
        ``(N, H, W)`` where they are present: those a left-right flip moves to the wrong side (the
        liver, the spleen; not a class that holds both kidneys or both lungs)."""
        features = anatomy_features(_as_label_array(masks, self.num_classes), self.num_classes)
        out = []
        for k in range(self.num_classes - 1):
            columns = features.centroid_col[features.present[:, k], k]
            if columns.size and max((columns < 0.5).mean(), (columns > 0.5).mean()) >= share:
                out.append(k + 1)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(classes={self.class_names}, percentiles=[{self.low}, {self.high}], "
                f"fitted_on={self.num_fitted}, layout={self.layout is not None})")


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    names = [str(name) for name in class_names]
    if len(names) < 2:
        raise ValueError(f"class_names needs background and at least one foreground class, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    bad = [name for name in names if "/" in name or not name]
    if bad:
        raise ValueError(f"class names must be non-empty and free of '/', got {bad}")
    return names


def _as_label_array(masks: np.ndarray | Tensor, num_classes: int) -> np.ndarray:
    masks = masks.cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be label maps of shape (N, H, W), got shape {masks.shape}")
    if not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"masks must hold integer class indices, got dtype {masks.dtype}")
    if masks.size and (masks.min() < 0 or masks.max() >= num_classes):
        raise ValueError(f"masks hold labels in [{masks.min()}, {masks.max()}], expected [0, {num_classes - 1}]")
    return masks
