"""The judge-calibrated rules: pass real slices, fail wrong anatomy, degrade gracefully."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anatldm.evaluation import flip_left_right, splice_levels
from anatldm.metrics import AnatomyRules, LayoutRule, RulesConfig, remove_small_components
from tests.metrics.synthetic import CLASS_NAMES, LIVER, SPLEEN, synthetic_masks

TOPOLOGY = {"range_rules": ["components", "holes"], "low": 0.0, "high": 100.0}


def _noisy_judge(masks: np.ndarray, seed: int) -> np.ndarray:
    """Label maps as an imperfect judge gives them: boundary pixels swapped, a stray speck."""
    rng = np.random.default_rng(seed)
    out = masks.copy()
    shifted = np.roll(masks, 1, axis=2)
    swap = (shifted != masks) & (rng.random(masks.shape) < 0.3)
    out[swap] = shifted[swap]
    out[:, 0, 0] = LIVER  # a one-pixel speck in every slice, far from any organ
    return out


@pytest.fixture(scope="module")
def calibrated() -> AnatomyRules:
    masks = _noisy_judge(synthetic_masks(400, seed=0), seed=1)
    subjects = np.repeat(np.arange(20), 20)
    return AnatomyRules.fit(masks, CLASS_NAMES, RulesConfig(min_component_pixels=3, layout=True, **TOPOLOGY),
                            subjects=subjects, source="judge predictions of 20 synthetic subjects")


def test_calibrated_rules_pass_real_slices_and_fail_flipped_ones(calibrated: AnatomyRules) -> None:
    real = _noisy_judge(synthetic_masks(200, seed=7), seed=8)  # unseen "subjects", the same judge noise
    passed, _ = calibrated.check_batch(real)
    assert passed.mean() >= 0.9
    flipped, violations = calibrated.check_batch(real[:, :, ::-1].copy())
    assert flipped.mean() <= 0.05 and violations["layout"].mean() >= 0.95  # the layout rule is what fails them
    uncalibrated = AnatomyRules.fit(synthetic_masks(400, seed=0), CLASS_NAMES)  # ground truth, every range rule
    assert uncalibrated.check_batch(real)[0].mean() < 0.5  # judge specks fail the ground-truth rules


def test_the_rules_round_trip_through_json(calibrated: AnatomyRules) -> None:
    restored = AnatomyRules.from_dict(json.loads(json.dumps(calibrated.to_dict())))
    masks = _noisy_judge(synthetic_masks(50, seed=3), seed=4)
    assert np.array_equal(restored.check_batch(masks)[0], calibrated.check_batch(masks)[0])
    assert restored.rule_names == calibrated.rule_names and restored.rule_names[-1] == "layout"
    assert restored.source.startswith("judge predictions")


def test_a_data_set_of_near_identical_subjects_degrades_gracefully() -> None:
    """Subjects that barely vary give tight ranges; the layout floors keep a one-pixel shift plausible."""
    template = synthetic_masks(1, seed=0)[0]
    masks = np.stack([template] * 40)
    rule = LayoutRule.fit(masks, len(CLASS_NAMES), subjects=np.repeat(np.arange(8), 5))
    shifted = np.stack([np.roll(template, shift, axis=axis) for axis in (0, 1) for shift in (-1, 1)])
    assert rule.check(shifted, len(CLASS_NAMES)).all()
    far = np.stack([np.roll(template, 6, axis=1), template[:, ::-1]])
    assert not rule.check(far, len(CLASS_NAMES)).any()


def test_the_conformal_threshold_passes_about_its_quantile_of_new_real_slices() -> None:
    masks = synthetic_masks(600, seed=11)
    rule = LayoutRule.fit(masks, len(CLASS_NAMES), subjects=np.repeat(np.arange(30), 20), k=3, quantile=0.9,
                          floor_pixels=0.0)  # the quantile alone (these subjects vary by a pixel or two)
    rate = rule.check(synthetic_masks(400, seed=12), len(CLASS_NAMES)).mean()
    assert 0.8 <= rate <= 0.99


def test_small_components_are_removed_and_large_ones_kept() -> None:
    masks = np.zeros((2, 8, 8), dtype=np.int64)
    masks[0, 1:4, 1:4] = LIVER  # 9 px
    masks[0, 6, 6] = SPLEEN  # 1 px
    masks[1, 0:2, 0] = LIVER  # 2 px
    cleaned = remove_small_components(masks, len(CLASS_NAMES), 3)
    assert (cleaned[0] == LIVER).sum() == 9 and not (cleaned == SPLEEN).any() and not cleaned[1].any()
    assert remove_small_components(masks, len(CLASS_NAMES), 0) is masks


def test_bad_layout_settings() -> None:
    masks = synthetic_masks(10, seed=0)
    with pytest.raises(ValueError, match="quantile must lie in"):
        LayoutRule.fit(masks, len(CLASS_NAMES), quantile=0.0)
    with pytest.raises(ValueError, match="subjects has 3 entries for 10 masks"):
        LayoutRule.fit(masks, len(CLASS_NAMES), subjects=[0, 1, 2])
    with pytest.raises(ValueError, match="range_rules"):
        AnatomyRules(CLASS_NAMES, {name: None for name in CLASS_NAMES[1:]}, np.zeros((len(CLASS_NAMES) - 1,) * 2, dtype=bool),
                     range_rules=["size"])


def test_controls_flip_columns_and_splice_distant_levels() -> None:
    images = torch.arange(2 * 4 * 4 * 6, dtype=torch.float32).reshape(12, 1, 4, 4)
    assert torch.equal(flip_left_right(images)[:, :, :, 0], images[:, :, :, -1])
    subjects, positions = np.repeat([0, 1], 6), np.tile(np.arange(6), 2)
    spliced = splice_levels(images, subjects, positions, min_gap_fraction=0.5, seed=0)
    assert torch.equal(spliced[:, :, :2], images[:, :, :2])  # the upper half is the slice's own
    for i in range(12):
        partner = [j for j in range(12) if torch.equal(images[j, :, 2:], spliced[i, :, 2:])]
        assert len(partner) == 1 and subjects[partner[0]] == subjects[i]
        assert abs(positions[partner[0]] - positions[i]) >= 2.5
    with pytest.raises(ValueError, match="at least two slices"):
        splice_levels(images[:1], subjects[:1], positions[:1])


def test_anatomy_breaking_augmentation_moves_image_and_mask_together() -> None:
    from anatldm.evaluation.controls import anatomy_breaking_augmentation

    torch.manual_seed(0)
    masks = torch.from_numpy(synthetic_masks(64, seed=5))
    images = masks[:, None].float() / 5
    out_images, out_masks = anatomy_breaking_augmentation(images, masks, 0.5, 0.3)
    assert torch.equal(out_images[:, 0] * 5, out_masks.float())  # every pixel still carries its own label
    flipped = [i for i in range(64) if torch.equal(out_masks[i], masks[i].flip(-1))]
    assert 15 < len(flipped) < 50
    unchanged, _ = anatomy_breaking_augmentation(images, masks, 0.0, 0.0)
    assert torch.equal(unchanged, images) and unchanged is not images
