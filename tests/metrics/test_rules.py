from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from anatldm.metrics import AnatomyRules, anatomy_features
from tests.metrics.synthetic import BONE, CLASS_NAMES, KIDNEY, LIVER, LUNG, synthetic_masks


@pytest.fixture(scope="module")
def rules() -> AnatomyRules:
    return AnatomyRules.fit(synthetic_masks(600, seed=0), CLASS_NAMES)


def test_features_match_a_per_slice_reference() -> None:
    rng = np.random.default_rng(3)
    masks = (ndimage.uniform_filter(rng.random((12, 24, 24)), size=(1, 3, 3)) * 6).astype(np.int64) % 3
    masks[0] = 0  # an empty slice
    features = anatomy_features(masks, 3)
    assert features.holes.sum() > 20 and features.components.max() > 5  # a real test of both counts
    for n, mask in enumerate(masks):
        for c in (1, 2):
            binary = mask == c
            _, components = ndimage.label(binary, structure=np.ones((3, 3)))
            _, holes = ndimage.label(ndimage.binary_fill_holes(binary) & ~binary)
            assert features.components[n, c - 1] == components
            assert features.holes[n, c - 1] == holes
            assert features.area[n, c - 1] == pytest.approx(binary.mean())
            if binary.any():
                rows, cols = np.nonzero(binary)
                assert features.centroid_row[n, c - 1] == pytest.approx((rows.mean() + 0.5) / 24)
                assert features.centroid_col[n, c - 1] == pytest.approx((cols.mean() + 0.5) / 24)
            else:
                assert np.isnan(features.centroid_row[n, c - 1])


def test_fitted_ranges_encode_the_synthetic_anatomy(rules: AnatomyRules) -> None:
    assert rules.ranges["kidney"]["components"] == (2.0, 2.0)
    assert rules.ranges["bone"]["holes"] == (1.0, 1.0)
    assert rules.ranges["liver"]["holes"] == (0.0, 0.0)
    assert rules.ranges["liver"]["centroid_col"][1] < 0.5 < rules.ranges["spleen"]["centroid_col"][0]
    k, lung = KIDNEY - 1, LUNG - 1
    assert not rules.cooccurrence[k, lung] and rules.cooccurrence[LIVER - 1, BONE - 1]
    assert rules.rule_names[:4] == ["liver/components", "liver/holes", "liver/area", "liver/centroid"]
    assert rules.rule_names[-1] == "cooccurrence" and len(rules.rule_names) == 5 * 4 + 1


def test_real_masks_pass_and_round_trip_through_json(rules: AnatomyRules) -> None:
    other = synthetic_masks(400, seed=1)
    plausible, violations = rules.check_batch(other)
    assert plausible.mean() >= 0.9
    assert set(violations) == set(rules.rule_names) and all(v.shape == (400,) for v in violations.values())
    restored = AnatomyRules.from_dict(json.loads(json.dumps(rules.to_dict())))
    again, _ = restored.check_batch(torch.from_numpy(other))
    np.testing.assert_array_equal(plausible, again)


def test_check_single_mask(rules: AnatomyRules) -> None:
    mask = synthetic_masks(1, seed=5)[0]
    report = rules.check(mask)
    assert list(report) == rules.rule_names
    flipped = rules.check(mask[:, ::-1].copy())
    assert not flipped["liver/centroid"] and not flipped["spleen/centroid"]


def test_absent_class_is_not_a_violation_but_an_unseen_class_is() -> None:
    masks = synthetic_masks(50, seed=2)
    masks[masks == LUNG] = 0  # lung never seen in these real masks
    rules = AnatomyRules.fit(masks, CLASS_NAMES)
    assert rules.ranges["lung"] is None
    plausible, _ = rules.check_batch(masks)
    assert plausible.mean() > 0.8
    with_lung = masks[:1].copy()
    with_lung[0, :2, :2] = LUNG
    assert not rules.check(with_lung[0])["cooccurrence"]


@pytest.mark.parametrize("kwargs, match", [
    ({"class_names": ["background"]}, "at least one foreground"),
    ({"class_names": ["background", "a", "a"]}, "unique"),
    ({"class_names": ["background", "a/b", "c"]}, "free of '/'"),
    ({"low": 60.0, "high": 40.0}, "percentiles"),
    ({"masks": np.zeros((2, 4, 4), dtype=np.float32)}, "integer"),
    ({"masks": np.full((2, 4, 4), 7)}, r"\[7, 7\]"),
    ({"masks": np.zeros((4, 4), dtype=np.int64)}, r"\(N, H, W\)"),
])
def test_fit_errors(kwargs: dict, match: str) -> None:
    arguments = {"masks": np.zeros((2, 4, 4), dtype=np.int64), "class_names": ["background", "a", "b"]} | kwargs
    with pytest.raises(ValueError, match=match):
        AnatomyRules.fit(**arguments)


def test_from_dict_errors(rules: AnatomyRules) -> None:
    data = rules.to_dict()
    with pytest.raises(ValueError, match="missing the keys"):
        AnatomyRules.from_dict({"class_names": CLASS_NAMES})
    with pytest.raises(ValueError, match="co-occurrence pair"):
        AnatomyRules.from_dict(data | {"cooccurrence": [["liver", "heart"]]})
    with pytest.raises(ValueError, match="one entry per foreground class"):
        AnatomyRules.from_dict(data | {"ranges": {"liver": None}})
    with pytest.raises(ValueError, match="ranges of 'liver' must give"):
        AnatomyRules.from_dict(data | {"ranges": data["ranges"] | {"liver": {"area": [0, 1]}}})
