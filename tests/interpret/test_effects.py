"""Paired edit effects: relative area change and plausibility change with intervals."""

from __future__ import annotations

import numpy as np
import pytest

from anatldm.interpret.effects import edit_effect, edit_effects_markdown

CLASSES = ["background", "liver", "spleen"]


def test_a_known_change_is_recovered_with_a_tight_paired_interval() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.05, 0.3, size=(200, 2))  # large between-seed variation
    edited = base * np.array([1.2, 1.0]) + rng.normal(0, 0.001, size=base.shape)
    plausible = (rng.random(200) < 0.5).astype(float)
    edited_plausible = plausible.copy()
    edited_plausible[:20] = 1.0 - edited_plausible[:20]
    effect = edit_effect(base, edited, plausible, edited_plausible, CLASSES, num_bootstrap=300)
    liver = effect["area"]["liver"]["relative_change"]
    assert liver["low"] < 0.2 < liver["high"] and liver["high"] - liver["low"] < 0.01  # paired: tight
    spleen = effect["area"]["spleen"]["relative_change"]
    assert spleen["low"] < 0 < spleen["high"]
    expected = edited_plausible.mean() - plausible.mean()
    assert effect["plausibility"]["difference"]["value"] == pytest.approx(expected)
    table = edit_effects_markdown({"liver_up": {"generator": "g", "resolved": [{"classes": ["liver"],
                                                                                "registers": [3]}],
                                                "effect": effect}}, CLASSES, 0.95)
    assert "| liver_up | liver: [3] |" in table and "+20.0%" in table
    skipped = edit_effects_markdown({"kidney_off": {"generator": "g", "skipped": "no register carries 'kidney'"}},
                                    CLASSES, 0.95)
    assert "| kidney_off | skipped: no register carries 'kidney' |" in skipped


def test_unpaired_shapes_are_an_error() -> None:
    with pytest.raises(ValueError, match="do not pair up"):
        edit_effect(np.zeros((5, 2)), np.zeros((4, 2)), np.zeros(5), np.zeros(4), CLASSES)


def test_specificity_is_off_target_over_target_change() -> None:
    from anatldm.interpret.effects import edit_specificity

    classes = ["background", "liver", "spleen", "kidney"]
    rng = np.random.default_rng(1)
    base = rng.uniform(0.05, 0.3, size=(300, 3))
    specific = base * np.array([2.0, 1.0, 1.0])  # liver doubled, nothing else moves
    leaky = base * np.array([2.0, 1.5, 0.5])  # the others move half as much
    exact = edit_specificity(base, specific, classes, ["liver"], num_bootstrap=200)
    assert exact["value"] == pytest.approx(0.0, abs=1e-12) and exact["high"] < 1e-9
    spread = edit_specificity(base, leaky, classes, ["liver"], num_bootstrap=200)
    assert spread["value"] == pytest.approx(0.5) and spread["low"] <= 0.5 <= spread["high"]
    with pytest.raises(ValueError, match="must be foreground classes"):
        edit_specificity(base, leaky, classes, ["background"])
    table = edit_effects_markdown({"liver_x2": {"generator": "g", "resolved": [{"classes": ["liver"], "registers": [0]}],
                                                "effect": edit_effect(base, leaky, np.ones(300), np.ones(300), classes,
                                                                      num_bootstrap=50),
                                                "specificity": spread}}, classes, 0.95)
    assert "| 0.50 [" in table
