from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from anatldm.errors import ConfigError
from anatldm.metrics import AnatomyRules, RulesConfig, anatomy_features
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
    ({"masks": np.zeros((2, 4, 4), dtype=np.float32)}, "integer"),
    ({"masks": np.full((2, 4, 4), 7)}, r"\[7, 7\]"),
    ({"masks": np.zeros((4, 4), dtype=np.int64)}, r"\(N, H, W\)"),
])
def test_fit_errors(kwargs: dict, match: str) -> None:
    arguments = {"masks": np.zeros((2, 4, 4), dtype=np.int64), "class_names": ["background", "a", "b"]} | kwargs
    with pytest.raises(ValueError, match=match):
        AnatomyRules.fit(**arguments)


@pytest.mark.parametrize("fields, message", [
    ({"low": -1.0}, "model.rules.low must lie in [0, 100), got -1.0"),
    ({"low": 60.0, "high": 40.0}, "model.rules.high must lie in (model.rules.low = 60.0, 100], got 40.0"),
    ({"high": 100.5}, "model.rules.high must lie in"),
    ({"tolerance": -0.1}, "model.rules.tolerance must be >= 0"),
    ({"range_rules": ["components", "size"]}, "model.rules.range_rules: ['size'] are not among"),
    ({"min_component_pixels": -2}, "model.rules.min_component_pixels must be >= 0, got -2"),
    ({"layout_neighbours": 0}, "model.rules.layout_neighbours must be at least 1, got 0"),
    ({"layout_quantile": 0.0}, "model.rules.layout_quantile must lie in (0, 1], got 0.0"),
    ({"layout_floor_pixels": -1.0}, "model.rules.layout_floor_pixels must be >= 0"),
])
def test_rules_config_names_the_bad_key_in_one_line(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        RulesConfig(**fields)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_fit_follows_its_config(caplog: pytest.LogCaptureFixture) -> None:
    masks = synthetic_masks(100, seed=4)
    config = RulesConfig(range_rules=["holes", "components"], low=0.0, high=100.0, tolerance=0.0)
    with caplog.at_level("WARNING"):
        rules = AnatomyRules.fit(masks, CLASS_NAMES, config)
    assert not caplog.records  # no class is absent: nothing to warn about
    assert rules.range_rules == ["components", "holes"] and (rules.low, rules.high, rules.tolerance) == (0.0, 100.0, 0.0)
    assert rules.rule_names == [f"{name}/{rule}" for name in CLASS_NAMES[1:] for rule in ("components", "holes")] + \
        ["cooccurrence"]
    present = anatomy_features(masks, len(CLASS_NAMES)).area[:, LIVER - 1]
    assert rules.ranges["liver"]["area"] == (present[present > 0].min(), present.max())  # low 0, high 100: the extremes
    defaults = AnatomyRules.fit(masks, CLASS_NAMES)
    assert defaults.to_dict() == AnatomyRules.fit(masks, CLASS_NAMES, RulesConfig()).to_dict()
    assert defaults.range_rules == ["components", "holes", "area", "centroid"] and defaults.layout is None


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
