from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import ndimage

from anatldm.metrics import AnatomyRules, PlausibilityRate
from tests.metrics.synthetic import BONE, CLASS_NAMES, KIDNEY, LIVER, LUNG, SPLEEN, synthetic_masks


@pytest.fixture(scope="module")
def rules() -> AnatomyRules:
    return AnatomyRules.fit(synthetic_masks(600, seed=0), CLASS_NAMES)


@pytest.fixture(scope="module")
def clean(rules: AnatomyRules) -> np.ndarray:
    """Real masks (another draw) that obey every rule."""
    masks = synthetic_masks(600, seed=1)
    plausible, _ = rules.check_batch(masks)
    return masks[plausible]


def extra_liver_island(mask: np.ndarray) -> np.ndarray:
    mask[28:30, 1:3] = LIVER  # far from every organ
    return mask


def swap_sides(mask: np.ndarray) -> np.ndarray:
    return mask[:, ::-1].copy()


def punch_liver_hole(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask == LIVER)
    r, c = int(rows.mean()), int(cols.mean())
    mask[r:r + 2, c:c + 2] = 0
    return mask


def fill_bone_ring(mask: np.ndarray) -> np.ndarray:
    bone = mask == BONE
    mask[ndimage.binary_fill_holes(bone)] = BONE
    return mask


def drop_left_kidney(mask: np.ndarray) -> np.ndarray:
    left = np.zeros_like(mask, dtype=bool)
    left[:, : mask.shape[1] // 2] = True
    mask[(mask == KIDNEY) & left] = 0
    return mask


LUNGS = synthetic_masks(200, seed=9)


def paste_lungs(mask: np.ndarray) -> np.ndarray:
    donor = next(m for m in LUNGS if (m == LUNG).any())
    mask[donor == LUNG] = LUNG
    return mask


def swell_spleen(mask: np.ndarray) -> np.ndarray:
    grown = ndimage.binary_dilation(mask == SPLEEN, iterations=3)
    mask[grown & (mask == 0)] = SPLEEN
    return mask


def has_kidneys(mask: np.ndarray) -> bool:
    return bool((mask == KIDNEY).any())


CASES = [  # (corruption, rule that must catch it, which masks it applies to)
    (extra_liver_island, "liver/components", None),
    (swap_sides, "liver/centroid", None),
    (swap_sides, "spleen/centroid", None),
    (punch_liver_hole, "liver/holes", None),
    (fill_bone_ring, "bone/holes", None),
    (drop_left_kidney, "kidney/components", has_kidneys),
    (paste_lungs, "cooccurrence", has_kidneys),
    (swell_spleen, "spleen/area", None),
]


@pytest.mark.parametrize("corrupt, rule, eligible", CASES)
def test_corrupting_a_quarter_lowers_the_rate_by_a_quarter(
        rules: AnatomyRules, clean: np.ndarray, corrupt: Callable, rule: str, eligible: Callable | None) -> None:
    masks = clean[:200].copy()
    candidates = [n for n in range(len(masks)) if eligible is None or eligible(masks[n])]
    corrupted = np.array(candidates[:50])
    for n in corrupted:
        masks[n] = corrupt(masks[n].copy())
    metric = PlausibilityRate(rules)
    for batch in torch.from_numpy(masks).split(64):  # several updates
        metric.update(batch)
    assert metric.compute().item() == pytest.approx(0.75, abs=0.01)
    assert metric.violation_rates()[rule] == pytest.approx(0.25, abs=0.01)
    passed = metric.per_sample().numpy()
    assert passed.shape == (200,) and not passed[corrupted].any()
    assert passed[np.setdiff1d(np.arange(200), corrupted)].all()


def test_real_vs_real_rate_is_high(rules: AnatomyRules) -> None:
    metric = PlausibilityRate(rules)
    metric.update(torch.from_numpy(synthetic_masks(300, seed=4)))
    assert metric.compute().item() >= 0.9
    assert set(metric.violation_rates()) == set(rules.rule_names)


def test_numpy_views_are_accepted(rules: AnatomyRules, clean: np.ndarray) -> None:
    metric = PlausibilityRate(rules)
    metric.update(clean[:10, :, ::-1])  # a negative-stride view: mirrored, hence implausible
    assert metric.compute().item() == 0.0


def test_errors(rules: AnatomyRules) -> None:
    with pytest.raises(ValueError, match="AnatomyRules"):
        PlausibilityRate({"liver": None})
    metric = PlausibilityRate(rules)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        metric.update(torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="labels in"):
        metric.update(torch.full((2, 8, 8), 9))
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.zeros(2, 8, 8))
