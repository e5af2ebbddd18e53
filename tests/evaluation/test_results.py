"""``report.json`` from per-sample records, and the small helpers of ``evaluation/results.py``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from anatldm.evaluation.report import ClaimCriteria, GateThresholds
from anatldm.evaluation.results import (
    as_dataclass,
    as_list,
    build_report,
    logged_metrics,
    write_report,
)
from anatldm.evaluation.statistics import ModelRecord, RealRecord
from anatldm.metrics import AnatomyRules, RulesConfig
from tests.metrics.synthetic import CLASS_NAMES, synthetic_masks

N, FEATURES = 40, 4


def test_as_list_and_as_dataclass() -> None:
    assert as_list("a.ckpt") == ["a.ckpt"] and as_list(("a.ckpt", "b.ckpt")) == ["a.ckpt", "b.ckpt"]
    assert as_dataclass(GateThresholds, None) == GateThresholds()
    assert as_dataclass(GateThresholds, {"min_judge_dice": 0.7}) == GateThresholds(min_judge_dice=0.7)  # from hparams
    criteria = ClaimCriteria(arm="register")
    assert as_dataclass(ClaimCriteria, criteria) is criteria
    assert as_dataclass(RulesConfig, {"range_rules": ["holes"]}).range_rules == ("holes",)


def _record(rate: float, seed: int, checkpoint: str) -> ModelRecord:
    """``rate * N`` samples pass; every model's features are the same, away from the real ones (KID ratio 1)."""
    passed = (np.arange(N) < rate * N).astype(np.float64)
    features = np.random.default_rng(0).normal(size=(N, FEATURES)) + 1.0
    return ModelRecord(passed=passed, violations={"cooccurrence": 1.0 - passed},
                       areas=np.random.default_rng(seed).random((N, 5)) * 0.1, features=features,
                       memorisation=np.full(N, 0.2),
                       diversity=np.full(6, 0.3), checkpoint=checkpoint)


@pytest.fixture(scope="module")
def report_parts() -> dict:
    rng = np.random.default_rng(9)
    records = {"register/seed3": _record(0.6, 0, "r3.ckpt"), "register/seed4": _record(0.7, 1, "r4.ckpt"),
               "baseline/seed3": _record(0.5, 2, "b3.ckpt"), "baseline/seed4": _record(0.5, 3, "b4.ckpt"),
               "register/seed3@early": _record(0.2, 4, "runs/x/fraction-0.25.ckpt")}
    hp = SimpleNamespace(num_bootstrap=100, num_bootstrap_costly=5, confidence=0.9, seed=0, kid_subset_size=100,
                         training_seeds=[3, 4], baseline="baseline", gate={"min_judge_dice": 0.8},
                         claim={"arm": "register", "min_relative_gain": 0.1}, inception_weights=None,
                         sampler="ddim", num_inference_steps=2, segmenter="judge.ckpt",
                         generators={"register": ["r3.ckpt", "r4.ckpt"], "baseline": ["b3.ckpt", "b4.ckpt"]})
    rules = AnatomyRules.fit(synthetic_masks(50, seed=0), CLASS_NAMES, RulesConfig(range_rules=["components"]),
                             source="ground truth of 50 synthetic slices")
    real = RealRecord(areas=rng.random((30, 5)) * 0.1, features=rng.normal(size=(30, FEATURES)))
    controls = {"reconstructed": np.ones(30), "spliced": np.zeros(30)}  # no lateralised class: no flip control
    report = build_report(hp, {"register": ["register/seed3", "register/seed4"],
                               "baseline": ["baseline/seed3", "baseline/seed4"]},
                          {"register": ["register/seed3@early"]}, rules, CLASS_NAMES, 30, None, 1.0, records, real,
                          rng.normal(size=(30, FEATURES)), {"liver": 0.9}, {"liver": 0.88}, np.ones(30), controls, N)
    return {"report": report, "rules": rules}


def test_report_pools_arms_pairs_seeds_and_judges_the_claim(report_parts: dict) -> None:
    report = report_parts["report"]
    assert report["results"]["register/seed3"]["plausibility_rate"]["value"] == 0.6
    assert report["results"]["register/seed3"]["violation_rates"] == {"cooccurrence": pytest.approx(0.4)}
    pooled = report["arms"]["register"]["pooled"]["plausibility_rate"]
    assert pooled["value"] == pytest.approx(0.65) and pooled["num_models"] == 2
    assert report["arms"]["register"]["seeds"] == [3, 4] and report["arms"]["baseline"]["checkpoints"] == ["b3.ckpt",
                                                                                                         "b4.ckpt"]
    change = report["arms"]["register"]["change_vs_baseline"]["plausibility_rate"]
    assert change["value"] == pytest.approx(0.3) and [p["value"] for p in change["pairs"]] == pytest.approx([0.2, 0.4])
    assert [pair["name"] for pair in report["pairs"]] == ["register/seed3 vs baseline/seed3",
                                                          "register/seed4 vs baseline/seed4"]
    assert report["pairs"][1]["seed"] == 4
    assert report["pairs"][1]["changes"]["plausibility_rate"]["value"] == pytest.approx(0.4)
    assert "diversity_msssim" not in report["pairs"][0]["changes"]  # not paired by seed: no change
    early = report["gate"]["early_checkpoint"]["register"]
    assert early["value"] == pytest.approx(0.4) and early["fraction"] == "25%" and early["early_pass_rate"] == 0.2
    gate = report["gate"]
    assert gate["thresholds"]["min_judge_dice"] == 0.8 and gate["checks"]["judge_dice/liver"]
    assert gate["controls"]["flipped"]["note"] == "not applicable" and "control/flipped" not in gate["checks"]
    assert gate["passed"]  # real 1.0, spliced 0.0, early checkpoint below the final one
    claim = report["claim"]
    assert claim["verdict"] == "claim supported", claim["checks"]
    assert claim["kid_ratio"] == pytest.approx(1.0) and claim["criteria"]["min_relative_gain"] == 0.1
    assert "per class components" in report["rules_source"]


def test_logged_metrics_and_written_files(report_parts: dict, tmp_path: Path) -> None:
    logged = logged_metrics(report_parts["report"])
    assert logged["register/seed4/plausibility_rate"] == 0.7
    assert "register/seed3/violation_rates" not in logged and "baseline/seed3/fid" in logged
    write_report(tmp_path, report_parts["report"], report_parts["rules"], {}, CLASS_NAMES, 0, 1)
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["claim"]["met"] is True
    assert AnatomyRules.from_dict(json.loads((tmp_path / "rules.json").read_text(encoding="utf-8"))).range_rules == ["components"]
    assert (tmp_path / "report.md").read_text(encoding="utf-8").startswith("Gate: PASSED")
