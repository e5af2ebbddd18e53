"""The ablation v2 (scripts/ablation_v2.sh, scripts/ablation_v2_summary.py): its pre-registered rule applied to a
report, and its refusals before any fit."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ablation_v2_summary", REPO / "scripts" / "ablation_v2_summary.py")
summary_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary_module)


def _arm(rate: float, change: float, pairs: list[float], kid: float) -> dict:
    metric = {"value": change, "low": change - 0.05, "high": change + 0.05, "pairs": [{"value": p} for p in pairs]}
    return {"seeds": [0, 1, 2],
            "pooled": {"plausibility_rate": {"value": rate}, "kid": {"value": kid},
                       "diversity_msssim": {"value": 0.65}, "self_consistency_dice": None},
            "change_vs_baseline": {"plausibility_rate": metric, "memorisation_rmse": {"value": 0.1}}}


def _report() -> dict:
    return {"baseline": "baseline_matched", "sampler": "dpm_solver++_sde", "num_inference_steps": 20,
            "num_samples_per_model": 500, "data_content_hash": "x", "gate": {"passed": True},
            "arms": {"baseline_matched": _arm(0.50, 0.0, [], 0.10),
                     "register_literal": _arm(0.45, -0.10, [-0.1, -0.1, -0.1], 0.18),
                     "register_v2": _arm(0.47, -0.06, [-0.1, -0.05, -0.03], 0.18),
                     "balance": _arm(0.46, -0.08, [-0.1, -0.1, -0.04], 0.18),  # +2 points: does not help
                     "anatomy": _arm(0.58, +0.16, [0.2, 0.1, 0.18], 0.105),   # +26 points, candidate
                     "v2_anatomy": _arm(0.52, +0.04, [0.1, -0.02, 0.04], 0.30)}}  # +10 points, KID 1.67x parent


def test_rule_applied_to_each_option() -> None:
    summary = summary_module.summarise(_report(), ["balance", "anatomy", "v2_anatomy"],
                                       ["register_literal", "register_literal", "register_v2"])
    options = summary["options"]
    assert options["balance"]["points_vs_parent"] == pytest.approx(0.02)
    assert not options["balance"]["helps"]
    assert options["anatomy"]["helps"]
    assert not options["v2_anatomy"]["helps"]  # enough points, but KID 1.67x its parent's
    assert not options["v2_anatomy"]["checks"]["kid_ratio_vs_parent"]
    assert options["dropout"]["variant"] == "register_v2" and options["dropout"]["parent"] == "balance"
    assert options["dropout"]["points_vs_parent"] == pytest.approx(0.02)
    candidates = summary["claim_v3_candidates"]
    assert candidates["anatomy"]["met"]
    assert not candidates["v2_anatomy"]["met"]  # a negative seed pair, interval spanning 0, KID 3x
    assert "Options that help by the rule: anatomy." in summary_module.markdown(summary)


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   "RUNS": str(tmp_path / "runs"), **env}
    return subprocess.run(["bash", str(REPO / "scripts" / "ablation_v2.sh")], env=environment, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_unknown_variant_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = _run(tmp_path, VARIANTS="balance bogus", CLAIM_RUNS=str(tmp_path / "claim"))
    assert result.returncode == 2
    assert "unknown variant 'bogus'" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_claim_models_are_named(tmp_path: Path) -> None:
    result = _run(tmp_path, CLAIM_RUNS=str(tmp_path / "claim"))
    assert result.returncode == 2
    assert f"{tmp_path / 'claim'}/" in result.stderr and "run make claim first" in result.stderr
    assert not (tmp_path / "runs").exists()
