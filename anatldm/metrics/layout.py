"""The layout rule: is a label map's joint organ layout close to one seen in real calibration slices?

Per-class ranges judge each organ alone, so a slice whose every organ is individually fine but
whose organs come from different levels (an anatomy that never occurs) passes them all, and a
slice mirrored left-right passes wherever the ranges of the two sides overlap. The layout rule
looks at all classes jointly. Each label map becomes one vector of, per foreground class,

    sqrt(area), centroid row, centroid column, presence, bounding box (top, bottom, left, right),
    extent (area / bounding-box area, which a cut or a fragment changes)

(positions in [0, 1] of the slice; all 0 where the class is absent), each feature divided by a
scale ``s_f = max(std_f, floor_f)`` measured on the calibration vectors. The floors keep a data set
whose subjects barely vary from turning a one-pixel shift into a rejection: every feature but
presence (positions, sqrt-area, bounding box, extent) is floored at ``floor_pixels / min(H, W)``,
presence at 0.5. The score of a map is the
Euclidean distance from its vector to its ``k``-th nearest calibration vector.

The threshold is (at least) a split-conformal quantile (Vovk et al., "Algorithmic Learning in a Random World",
2005; Angelopoulos and Bates, "A Gentle Introduction to Conformal Prediction", 2021): every
calibration vector is scored against the calibration vectors of *other* subjects (leave one subject
out, since slices of one subject are not independent), and the threshold is the ``quantile`` of
those scores. A real slice of an unseen subject is then scored like a calibration slice was, so it
passes with probability about ``quantile``: the rule is tolerant of real variation by construction,
and its power comes from how far wrong anatomy lies from every real layout. Where subjects barely
vary the quantile tends to 0; the threshold is then never below the distance of a layout whose
every feature is off by ``floor_pixels`` (median over calibration slices), so a slice a pixel off
every calibration subject stays plausible.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["LayoutRule", "layout_features"]

logger = logging.getLogger(__name__)

_PER_CLASS = ("sqrt_area", "centroid_row", "centroid_col", "present", "top", "bottom", "left", "right", "extent")


def layout_features(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Layout vectors ``(N, 9 * (C - 1))`` of label maps ``(N, H, W)`` (see the module docstring).

    Column ``9 * (c - 1) + j`` is feature ``j`` of ``("sqrt_area", "centroid_row", "centroid_col",
    "present", "top", "bottom", "left", "right", "extent")`` for class ``c``.
    """
    num, height, width = masks.shape
    rows = (np.arange(height) + 0.5) / height
    cols = (np.arange(width) + 0.5) / width
    out = np.zeros((num, num_classes - 1, len(_PER_CLASS)))
    for c in range(1, num_classes):
        binary = masks == c
        row_hits, col_hits = binary.any(axis=2), binary.any(axis=1)  # (N, H), (N, W)
        count = binary.sum(axis=(1, 2))
        present = count > 0
        if not present.any():
            continue
        safe = np.maximum(count, 1)
        top = np.argmax(row_hits, axis=1) / height
        bottom = (height - np.argmax(row_hits[:, ::-1], axis=1)) / height
        left = np.argmax(col_hits, axis=1) / width
        right = (width - np.argmax(col_hits[:, ::-1], axis=1)) / width
        box = np.maximum((bottom - top) * (right - left) * height * width, 1)  # bounding-box pixels
        features = np.stack([np.sqrt(count / (height * width)), binary.sum(axis=2) @ rows / safe,
                             binary.sum(axis=1) @ cols / safe, np.ones(num), top, bottom, left, right,
                             count / box], axis=1)
        out[:, c - 1] = features * present[:, None]
    return out.reshape(num, -1)


class LayoutRule:
    """Conformal nearest-neighbour check of the joint organ layout (see the module docstring).

    Build with :meth:`fit`; JSON round trip with :meth:`to_dict` / :meth:`from_dict`.

    Args:
        reference: standardised calibration vectors ``(N, D)``.
        scale: per-feature scale ``(D,)`` the vectors were divided by.
        threshold: largest passing distance to the ``k``-th nearest reference vector.
        k: neighbours.
        quantile: the conformal level the threshold was fitted at (kept for the report).
    """

    def __init__(self, reference: np.ndarray, scale: np.ndarray, threshold: float, k: int = 3,
                 quantile: float = 0.975) -> None:
        self.reference = np.asarray(reference, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        if self.reference.ndim != 2 or self.reference.shape[1] != self.scale.shape[0]:
            raise ValueError(f"reference {self.reference.shape} and scale {self.scale.shape} do not match")
        if not 1 <= k <= len(self.reference):
            raise ValueError(f"k must lie in [1, {len(self.reference)}], got {k}")
        self.threshold, self.k, self.quantile = float(threshold), int(k), float(quantile)
        self._tree = cKDTree(self.reference)

    @classmethod
    def fit(cls, masks: np.ndarray, num_classes: int, subjects: Sequence[int] | np.ndarray | None = None,
            k: int = 3, quantile: float = 0.975, floor_pixels: float = 1.0) -> LayoutRule:
        """Fit on calibration label maps ``(N, H, W)``.

        Args:
            masks: calibration label maps (real slices as the judge labels them).
            num_classes: classes including background.
            subjects: subject of every map; scores are leave-one-subject-out. ``None``: every map is
                its own subject (leave one out).
            k: neighbours of the score.
            quantile: conformal level of the threshold, in (0, 1].
            floor_pixels: smallest scale of every feature but presence, in pixels.
        """
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must lie in (0, 1], got {quantile}")
        if floor_pixels < 0:
            raise ValueError(f"floor_pixels must be >= 0, got {floor_pixels}")
        vectors = layout_features(masks, num_classes)
        subjects = np.arange(len(masks)) if subjects is None else np.asarray(subjects)
        if len(subjects) != len(masks):
            raise ValueError(f"subjects has {len(subjects)} entries for {len(masks)} masks")
        if len(np.unique(subjects)) < 2:  # nothing to leave out: each slice alone (too strict a threshold)
            logger.warning("layout rule calibrated on one subject: leave-one-slice-out scores, a strict threshold; "
                           "calibrate on several subjects")
            subjects = np.arange(len(masks))
        if len(masks) < 2:
            raise ValueError("the layout rule needs at least two calibration slices")
        floor = np.full(len(_PER_CLASS), floor_pixels / min(masks.shape[1:]))
        floor[_PER_CLASS.index("present")] = 0.5
        scale = np.maximum(vectors.std(axis=0), np.tile(floor, num_classes - 1))
        scale = np.where(scale > 0, scale, 1.0)
        reference = vectors / scale
        scores = np.empty(len(reference))
        for subject in np.unique(subjects):
            own = subjects == subject
            others = reference[~own]
            distances, _ = cKDTree(others).query(reference[own], k=min(k, len(others)))
            scores[own] = distances.reshape(int(own.sum()), -1)[:, -1]
        threshold = float(np.quantile(scores, quantile, method="higher"))
        # The floor of the threshold: the distance of a layout whose every feature of its present
        # classes is off by floor_pixels (median over the calibration slices). It binds only where
        # the subjects barely vary, and keeps a slice a pixel off every training subject plausible.
        step = np.tile(floor, num_classes - 1) / scale  # (D,)
        step[len(_PER_CLASS) * np.arange(num_classes - 1) + _PER_CLASS.index("present")] = 0.0
        active = vectors != 0
        minimum = float(np.median(np.sqrt((active * step ** 2).sum(axis=1))))
        return cls(reference, scale, max(threshold, minimum), k=k, quantile=quantile)

    def distances(self, masks: np.ndarray, num_classes: int) -> np.ndarray:
        """Distance ``(N,)`` of every label map to its ``k``-th nearest reference layout."""
        vectors = layout_features(masks, num_classes) / self.scale
        if vectors.shape[1] != self.reference.shape[1]:
            raise ValueError(f"masks give {vectors.shape[1]} layout features, the rule has {self.reference.shape[1]}")
        distances, _ = self._tree.query(vectors, k=self.k)
        return distances.reshape(len(vectors), -1)[:, -1]

    def check(self, masks: np.ndarray, num_classes: int) -> np.ndarray:
        """``(N,)`` True where the layout lies within the threshold."""
        return self.distances(masks, num_classes) <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "quantile": self.quantile, "threshold": self.threshold,
                "scale": self.scale.tolist(), "reference": np.round(self.reference, 5).tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayoutRule:
        return cls(np.asarray(data["reference"]), np.asarray(data["scale"]), data["threshold"], k=data["k"],
                   quantile=data["quantile"])
