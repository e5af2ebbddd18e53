"""Claim v2's guidance choice: the best plausibility on the selection seeds, ties to the lower weight."""

from __future__ import annotations

import pytest

from anatldm.errors import ConfigError
from anatldm.evaluation.selection import choose_guidance


def _selection() -> dict:
    guide = "runs/x/ldm_seed0/checkpoints/fraction-0.25.ckpt"
    return {"guidance": {"reg@autoguidance_1.5": {"kind": "autoguidance", "weight": 1.5, "guide": guide},
                         "reg@autoguidance_2": {"kind": "autoguidance", "weight": 2.0, "guide": guide},
                         "reg@registers_3": {"kind": "registers", "weight": 3.0},
                         "base@autoguidance_1.5": {"kind": "autoguidance", "weight": 1.5,
                                                   "guide": "runs/x/base_seed0/checkpoints/fraction-0.25.ckpt"}}}


def _report(rates: dict[str, float]) -> dict:
    return {"arms": {name: {"pooled": {"plausibility_rate": {"value": rate}}} for name, rate in rates.items()}}


def _evaluation() -> dict:
    return {"model": {"init_args": {"generators": {"reg": ["a", "b"], "base": ["c", "d"]}, "guidance": None}},
            "data": {"init_args": {}}}


def test_best_rate_wins_and_each_seed_gets_its_own_guide() -> None:
    rates = {"reg@autoguidance_1.5": 0.4, "reg@autoguidance_2": 0.4, "reg@registers_3": 0.3,
             "base@autoguidance_1.5": 0.2}
    template = _evaluation()
    config, chosen = choose_guidance(_selection(), _report(rates), template, [0, 1])
    assert chosen["reg"]["choice"] == "reg@autoguidance_1.5"  # a tie goes to the lower weight
    assert chosen["reg"]["candidates"]["reg@registers_3"] == 0.3
    guidance = config["model"]["init_args"]["guidance"]
    assert [g["guide"] for g in guidance["reg"]] == ["runs/x/ldm_seed0/checkpoints/fraction-0.25.ckpt",
                                                     "runs/x/ldm_seed1/checkpoints/fraction-0.25.ckpt"]
    assert template["model"]["init_args"]["guidance"] is None  # the template is not changed
    rates["reg@registers_3"] = 0.41
    config, chosen = choose_guidance(_selection(), _report(rates), _evaluation(), [0, 1])
    assert chosen["reg"]["choice"] == "reg@registers_3"
    assert config["model"]["init_args"]["guidance"]["reg"] == {"kind": "registers", "weight": 3.0}


def test_a_report_or_evaluation_that_does_not_match_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no arm 'reg@autoguidance_2'"):
        choose_guidance(_selection(), _report({"reg@autoguidance_1.5": 0.1}), _evaluation(), [0])
    evaluation = _evaluation()
    del evaluation["model"]["init_args"]["generators"]["base"]
    rates = dict.fromkeys(_selection()["guidance"], 0.1)
    with pytest.raises(ConfigError, match=r"lacks the selected arms \['base'\]"):
        choose_guidance(_selection(), _report(rates), evaluation, [0])
