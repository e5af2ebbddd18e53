"""The gate's and the claim's verdicts on crafted numbers, at and beyond their thresholds."""

from __future__ import annotations

import math

import pytest

from anatldm.evaluation.report import (
    ClaimCriteria,
    GateThresholds,
    claim_verdict,
    gate_verdict,
    markdown_report,
)
from anatldm.evaluation.statistics import METRICS

THRESHOLDS = GateThresholds()  # real >= 0.90, negative controls <= 0.30, judge Dice >= 0.85


def _interval(value: float, low: float | None = None, high: float | None = None) -> dict:
    return {"value": value, "low": value if low is None else low, "high": value if high is None else high}


def _gate(dice: float = 0.85, real: float = 0.90, flipped: float = 0.30, early: dict | None = None) -> dict:
    """Every number at its threshold unless given: a gate that just passes."""
    controls = {"flipped": {**_interval(flipped), "negative": True},
                "spliced": {**_interval(0.05), "negative": True},
                "reconstructed": {**_interval(0.10), "negative": False}}  # a positive control is not gated
    return gate_verdict(THRESHOLDS, {"liver": 0.97, "spleen": dice}, _interval(real, 0.85, 0.95), controls,
                        early or {})


def test_gate_passes_at_every_threshold() -> None:
    gate = _gate()
    assert gate["passed"] is True
    assert gate["checks"] == {"judge_dice/liver": True, "judge_dice/spleen": True, "real_pass_rate": True,
                              "control/flipped": True, "control/spliced": True}
    assert gate["flipped_pass_rate"] == 0.30 and gate["real_pass_rate"] == 0.90
    assert gate["thresholds"] == {"min_real_pass_rate": 0.90, "max_negative_pass_rate": 0.30, "min_judge_dice": 0.85}
    assert "no early checkpoint" in gate["note"]


@pytest.mark.parametrize("settings, failed", [
    ({"dice": 0.8499}, "judge_dice/spleen"),
    ({"real": 0.8999}, "real_pass_rate"),
    ({"flipped": 0.3001}, "control/flipped"),  # a negative control that passes too often fails the gate
    ({"early": {"register": _interval(0.05, -0.01, 0.1)}}, "early_checkpoint/register"),  # interval holds 0
    ({"early": {"register": _interval(-0.05, -0.1, -0.01)}}, "early_checkpoint/register"),  # early one better
])
def test_gate_fails_past_any_threshold(settings: dict, failed: str) -> None:
    gate = _gate(**settings)
    assert gate["passed"] is False
    assert [name for name, ok in gate["checks"].items() if not ok] == [failed]


def test_gate_with_an_early_checkpoint_below_the_final_one_passes() -> None:
    gate = _gate(early={"register": _interval(0.1, 0.02, 0.2)})
    assert gate["passed"] and gate["checks"]["early_checkpoint/register"] and "note" not in gate


def test_a_control_that_does_not_apply_is_not_gated() -> None:
    controls = {"flipped": {**_interval(math.nan), "negative": False, "note": "not applicable"}}
    gate = gate_verdict(THRESHOLDS, {"liver": 0.9}, _interval(0.95), controls, {})
    assert gate["passed"] and "control/flipped" not in gate["checks"] and math.isnan(gate["flipped_pass_rate"])
    assert not gate_verdict(THRESHOLDS, {"liver": 0.9}, _interval(0.8), controls, {})["passed"]


def _arms(gain: dict | None, pairs: list[float], kid: float = 0.75, baseline_kid: float = 0.5) -> dict:
    arm = {"pooled": {"kid": {"value": kid}}}
    if gain is not None:
        arm["change_vs_baseline"] = {"plausibility_rate": {**gain, "pairs": [{"value": p} for p in pairs]}}
    return {"register": arm, "baseline": {"pooled": {"kid": {"value": baseline_kid}}}}


CRITERIA = ClaimCriteria(arm="register", min_relative_gain=0.25, max_kid_ratio=1.5)


def test_claim_supported_at_its_thresholds() -> None:
    claim = claim_verdict(CRITERIA, "baseline", _arms(_interval(0.25, 0.01, 0.5), [0.2, 0.3, 0.25]), True)
    assert claim["met"] is True and claim["verdict"] == "claim supported"
    assert claim["kid_ratio"] == 1.5 and all(claim["checks"].values())
    assert claim["criteria"] == {"arm": "register", "min_relative_gain": 0.25, "max_kid_ratio": 1.5,
                                 "min_self_consistency": None, "min_class_self_consistency": None,
                                 "min_memorisation_change": None, "max_diversity_ratio": None}


@pytest.mark.parametrize("gain, pairs, kid, failed", [
    (_interval(0.2499, 0.01, 0.5), [0.2, 0.3], 0.75, "primary_gain"),
    (_interval(0.3, -0.01, 0.6), [0.2, 0.3], 0.75, "primary_interval_excludes_0"),
    (_interval(0.3, 0.01, 0.6), [0.5, -0.05], 0.75, "same_sign_every_pair"),
    (_interval(0.3, 0.01, 0.6), [0.2, 0.3], 0.7501, "kid_ratio"),
])
def test_claim_not_supported_past_any_criterion(gain: dict, pairs: list[float], kid: float, failed: str) -> None:
    claim = claim_verdict(CRITERIA, "baseline", _arms(gain, pairs, kid), True)
    assert claim["met"] is False and claim["verdict"] == "claim not supported"
    assert [name for name, ok in claim["checks"].items() if not ok] == [failed]


@pytest.mark.parametrize("pooled, liver, failed", [
    (0.75, 0.65, []),  # both at their thresholds
    (0.7499, 0.65, ["self_consistency"]),
    (0.8, 0.6499, ["self_consistency_every_class"]),  # the class mean over the arm's models decides
])
def test_claim_v2_self_consistency_criteria(pooled: float, liver: float, failed: list[str]) -> None:
    criteria = ClaimCriteria(arm="register", min_relative_gain=0.25, max_kid_ratio=1.5, min_self_consistency=0.75,
                             min_class_self_consistency=0.65)
    arms = _arms(_interval(0.3, 0.01, 0.6), [0.2, 0.3])
    arms["register"].update(models=["register/seed0", "register/seed1"])
    arms["register"]["pooled"]["self_consistency_dice"] = _interval(pooled)
    models = {"register/seed0": {"head": {"self_consistency_per_class": {"liver": liver - 0.1, "lung": 0.9}}},
              "register/seed1": {"head": {"self_consistency_per_class": {"liver": liver + 0.1, "lung": 0.9}}}}
    claim = claim_verdict(criteria, "baseline", arms, True, models)
    assert [name for name, ok in claim["checks"].items() if not ok] == failed
    assert claim["met"] is (not failed)


@pytest.mark.parametrize("memorisation, msssim, failed", [
    (-0.10, 0.66, []),  # both guards at their thresholds (baseline MS-SSIM 0.6)
    (-0.1001, 0.66, ["guard_memorisation"]),  # samples closer to the training slices: copying
    (0.0, 0.6601, ["guard_diversity"]),  # samples more alike: collapse
])
def test_claim_guards_against_copying_and_collapse(memorisation: float, msssim: float, failed: list[str]) -> None:
    criteria = ClaimCriteria(arm="register", min_relative_gain=0.25, max_kid_ratio=1.5, min_memorisation_change=-0.10,
                             max_diversity_ratio=1.10)
    arms = _arms(_interval(0.3, 0.01, 0.6), [0.2, 0.3])
    arms["register"]["change_vs_baseline"]["memorisation_rmse"] = _interval(memorisation)
    arms["register"]["pooled"]["diversity_msssim"] = _interval(msssim)
    arms["baseline"]["pooled"]["diversity_msssim"] = _interval(0.6)
    claim = claim_verdict(criteria, "baseline", arms, True)
    assert [name for name, ok in claim["checks"].items() if not ok] == failed
    assert claim["met"] is (not failed)


def test_a_consistent_loss_is_not_a_supported_claim() -> None:
    lenient = ClaimCriteria(arm="register", min_relative_gain=-1.0, max_kid_ratio=1.5)
    claim = claim_verdict(lenient, "baseline", _arms(_interval(-0.3, -0.5, -0.1), [-0.2, -0.4]), True)
    assert all(claim["checks"].values()) and claim["met"] is False  # every check passes, the sign does not


def test_claim_not_assessable() -> None:
    failed_gate = claim_verdict(CRITERIA, "baseline", _arms(_interval(0.4, 0.1, 0.6), [0.3, 0.5]), False)
    assert failed_gate["met"] is True and failed_gate["verdict"] == "not assessable: the judge failed its gate"
    undefined = claim_verdict(CRITERIA, "baseline", _arms(None, []), True)
    assert undefined["met"] is False and undefined["verdict"].startswith("not assessable: the baseline's")
    assert math.isnan(undefined["kid_ratio"]) and not any(undefined["checks"].values())
    zero_kid = claim_verdict(CRITERIA, "baseline", _arms(_interval(0.4, 0.1, 0.6), [0.3, 0.5], baseline_kid=0.0), True)
    assert zero_kid["kid_ratio"] == math.inf and not zero_kid["checks"]["kid_ratio"]


def _report(gate: dict) -> dict:
    pooled = {"plausibility_rate": _interval(0.5, 0.4, 0.6)}
    return {"gate": gate, "confidence": 0.95, "num_samples_per_model": 8, "sampler": "ddim",
            "num_inference_steps": 2, "seed": 0, "num_real_test_slices": 5, "feature_source": "judge",
            "arms": {"baseline": {"models": ["baseline"], "pooled": pooled}}, "baseline": "baseline", "pairs": [],
            "results": {"baseline": pooled}, "real_test": {}, "rules_source": "judge predictions"}


def test_report_opens_with_the_gate() -> None:
    passed = markdown_report(_report(_gate()), METRICS)
    assert passed.startswith("Gate: PASSED (judge Dice >= 0.85 per class, real pass rate 0.900")
    failed = markdown_report(_report(_gate(flipped=0.5)), METRICS)
    assert failed.startswith("**GATE FAILED (control/flipped): the judge cannot be trusted")
    assert "| Plausibility rate (primary) ↑ | 0.5 [0.4, 0.6] |" in failed
