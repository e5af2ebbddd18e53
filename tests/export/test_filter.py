"""The quality filter's decision on crafted masks, and its settings' errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anatldm.errors import ConfigError
from anatldm.export.filter import (
    FilterDecision,
    FilterRulesConfig,
    QualityFilterConfig,
    filter_decisions,
    filter_summary,
)
from anatldm.metrics.rules import AnatomyRules, RulesConfig

CLASSES = ["background", "liver", "kidney"]


@pytest.fixture
def checkpoint(tmp_path: Path) -> str:
    """A real ``torch.save`` archive (the config only checks that the file is one)."""
    path = tmp_path / "segmenter.ckpt"
    torch.save({"state_dict": {}}, path)
    return str(path)


def blank(batch: int = 1, size: int = 8) -> np.ndarray:
    return np.zeros((batch, size, size), dtype=np.int64)


def test_dice_threshold_is_inclusive_and_absent_classes_are_left_out(checkpoint: str) -> None:
    head, segmenter = blank(3), blank(3)
    head[0, 0, 0:2] = 1  # liver: 2 px each, 1 px shared -> Dice 0.5; kidney absent from both -> left out
    segmenter[0, 0, 1:3] = 1
    head[1, 0, 0:2], segmenter[1, 0, 0:2] = 1, 1  # liver agrees (1.0), kidney only in the head (0.0): mean 0.5
    head[1, 5, 5] = 2
    # sample 2: both all background -> no Dice, kept
    at_threshold = filter_decisions(head, 3, QualityFilterConfig(segmenter=checkpoint, min_dice=0.5), segmenter)
    assert at_threshold == [FilterDecision(True, 0.5, ()), FilterDecision(True, 0.5, ()),
                            FilterDecision(True, None, ())]
    above = filter_decisions(torch.as_tensor(head), 3, QualityFilterConfig(segmenter=checkpoint, min_dice=0.6),
                             torch.as_tensor(segmenter))
    assert [d.keep for d in above] == [False, False, True]
    assert above[0].reasons == ("dice 0.500 < 0.6",) and above[0].dice == 0.5
    keep_all = filter_decisions(head, 3, QualityFilterConfig(segmenter=checkpoint, min_dice=0.0), segmenter)
    assert all(d.keep for d in keep_all)


def _ground_truth(count: int = 8, size: int = 16) -> np.ndarray:
    """Liver: one square at the top left; kidney: one square at the bottom right (jittered by a pixel)."""
    masks = np.zeros((count, size, size), dtype=np.int64)
    for index in range(count):
        shift = index % 2
        masks[index, 2 + shift:6 + shift, 2:6] = 1
        masks[index, 10:14, 10 + shift:14 + shift] = 2
    return masks


def test_rules_drop_a_mask_that_breaks_them_and_name_the_rules(checkpoint: str) -> None:
    truth = _ground_truth()
    rules = AnatomyRules.fit(truth, CLASSES, RulesConfig(range_rules=("components",)))
    masks = truth[:3].copy()
    masks[1, 0:1, 14:16] = 1  # a second liver component
    masks[2, 0:1, 14:16] = 1
    masks[2, 14:16, 0:1] = 2  # and a second kidney component
    decisions = filter_decisions(masks, 3, QualityFilterConfig(rules=True), rules=rules)
    assert decisions[0] == FilterDecision(True, None, ())
    assert decisions[1].reasons == ("rules: liver/components",) and not decisions[1].keep
    assert decisions[2].reasons == ("rules: liver/components, kidney/components",)
    segmenter = masks.copy()
    segmenter[:, :8] = 0  # disagrees on the liver: Dice 0.5 on every sample
    both = filter_decisions(masks, 3, QualityFilterConfig(segmenter=checkpoint, min_dice=0.75, rules=True),
                            segmenter, rules)
    assert both[1].reasons[0].startswith("dice ") and both[1].reasons[1] == "rules: liver/components"
    summary = filter_summary(QualityFilterConfig(segmenter=checkpoint, min_dice=0.75, rules=True), both,
                             ["a", "b", "c"], [0, 1, 2], rules, "hash")
    assert summary["num_generated"] == 3 and summary["num_kept"] == 0 and summary["num_dropped"] == 3
    assert summary["dropped_by_criterion"] == {"dice": 3, "rules": 2}
    assert summary["dropped"][1] == {"case": "b", "seed": 1, "dice": both[1].dice, "reasons": list(both[1].reasons)}


def test_the_filter_needs_what_its_criteria_read(checkpoint: str) -> None:
    with pytest.raises(ValueError, match="segmenter_masks"):
        filter_decisions(blank(), 3, QualityFilterConfig(segmenter=checkpoint, min_dice=0.5))
    with pytest.raises(ValueError, match="rules"):
        filter_decisions(blank(), 3, QualityFilterConfig(rules=True))


@pytest.mark.parametrize(("settings", "key"), [
    ({}, "DatasetWriter.quality_filter: no criterion"),
    ({"min_dice": 0.5, "rules": True}, "DatasetWriter.quality_filter.min_dice needs"),
    ({"segmenter": "{ckpt}"}, "DatasetWriter.quality_filter.min_dice"),
    ({"segmenter": "{ckpt}", "min_dice": 1.01}, "DatasetWriter.quality_filter.min_dice must lie in"),
    ({"segmenter": "{ckpt}", "min_dice": -0.1}, "DatasetWriter.quality_filter.min_dice must lie in"),
    ({"segmenter": "/nonexistent/seg.ckpt", "min_dice": 0.5}, "DatasetWriter.quality_filter.segmenter"),
    ({"segmenter": "{ckpt}", "min_dice": 0.5, "rules_config": {}}, "DatasetWriter.quality_filter.rules_config"),
    ({"rules": True, "rules_config": {"high": 101}}, "DatasetWriter.quality_filter.rules_config.high"),
])
def test_a_bad_setting_names_its_key(settings: dict, key: str, checkpoint: str) -> None:
    settings = {name: value.format(ckpt=checkpoint) if isinstance(value, str) else value
                for name, value in settings.items()}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        QualityFilterConfig(**settings)


def test_rules_config_keeps_its_settings_and_names_the_filter_key() -> None:
    config = QualityFilterConfig(rules=True, rules_config=RulesConfig(low=2.0, layout=True))
    assert isinstance(config.rules_config, FilterRulesConfig) and config.fitted_rules.low == 2.0
    assert config.describe()["rules_config"]["layout"] is True
    assert QualityFilterConfig(rules=True).fitted_rules == FilterRulesConfig()
    with pytest.raises(ConfigError, match=r"^model\.rules\.low"):  # the evaluation's own key is unchanged
        RulesConfig(low=-1)
