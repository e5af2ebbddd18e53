"""EvaluationTask through the real CLI on tiny checkpoints trained in the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from anatldm.cli import main
from tests.conf import TINY_DATA

DATA = {"class_path": "AnatomyDataModule", "init_args": TINY_DATA}


@pytest.fixture
def checkpoints(stage_checkpoints: dict[str, Path]) -> dict[str, Path]:
    return stage_checkpoints


def _eval_config(checkpoints: dict, out: Path, **overrides) -> Path:
    model = {"generators": {"register": str(checkpoints["register"]), "baseline": str(checkpoints["baseline"])},
             "segmenter": str(checkpoints["segmenter"]), "baseline": "baseline", "num_samples": 10,
             "num_inference_steps": 2, "sample_batch_size": 5, "num_bootstrap": 50,  # KID subset 100 > 10 samples: clipped
             "output_dir": str(out), **overrides}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "default_root_dir": str(out.parent)},
        "model": {"class_path": "EvaluationTask", "init_args": model},
        "data": {**DATA, "init_args": {**TINY_DATA, "cache_dir": str(checkpoints["root"] / "cache"), "augment": False}},
    }))
    return path


def test_report_has_every_field(checkpoints: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "report"
    with caplog.at_level("WARNING", logger="anatldm"):
        main(["test", "--config", str(_eval_config(checkpoints, out))])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["feature_source"].startswith("judge") and report["num_samples_per_model"] == 10
    assert set(report["results"]) == {"register", "baseline"}
    metrics = {"plausibility_rate", "fsd", "area_w1", "fid", "kid", "diversity_msssim", "memorisation_rmse"}
    for name, results in report["results"].items():
        assert metrics <= set(results), name
        for metric in metrics:
            value = results[metric]
            assert value["low"] <= value["high"], (name, metric)
        assert set(results["violation_rates"]) >= {"liver/area", "cooccurrence"}  # default rules: every range
    assert "self_consistency_dice" in report["results"]["register"]
    assert "self_consistency_dice" not in report["results"]["baseline"]
    ceiling = report["results"]["register"]["head"]["self_consistency_reconstructions"]
    assert set(ceiling) == {"liver", "spleen", "kidney", "bone", "lung", "pooled"} and 0 <= ceiling["pooled"] <= 1
    change = report["results"]["register"]["relative_change_vs_baseline"]
    assert {"fsd", "fid", "area_w1"} <= set(change)
    assert set(report["real_test"]["segmenter_dice"]) == {"liver", "spleen", "kidney", "bone", "lung"}
    reconstructions = report["real_test"]["segmenter_dice_reconstructions"]  # the judge on decoded latents
    assert set(reconstructions) == set(report["real_test"]["segmenter_dice"])
    assert all(0.0 <= v <= 1.0 for v in reconstructions.values())
    table = (out / "report.md").read_text(encoding="utf-8")
    assert "| baseline (1 seeds) | register (1 seeds) | register vs baseline |" in table  # safe_dump sorts keys
    assert "Plausibility rate (primary)" in table
    assert "| register | self-consistency, reconstructions |" in table
    assert "Judge Dice on the autoencoder's reconstructions of the same slices, per subject" in table
    gate = report["gate"]
    assert table.startswith("**GATE FAILED") != gate["passed"]  # a tiny judge: whatever it is, said first
    assert set(gate["judge_dice"]) == {"liver", "spleen", "kidney", "bone", "lung"}
    for key in ("real_pass_rate", "flipped_pass_rate", "spliced_pass_rate", "reconstructed_pass_rate"):
        assert 0.0 <= gate[key] <= 1.0, key
    assert "early_checkpoint/register" not in gate["checks"] and "note" in gate
    assert report["real_floor"]["fid"]["value"] >= 0 and report["pairs"][0]["name"] == "register vs baseline"
    rules = json.loads((out / "rules.json").read_text(encoding="utf-8"))
    assert rules["class_names"][0] == "background"
    absent = [r.getMessage() for r in caplog.records if "is absent from all" in r.getMessage()]
    unseen = [name for name, ranges in rules["ranges"].items() if ranges is None]
    assert len(absent) == len(unseen), absent  # one warning per class the calibration lacks, none from the checks
    for png in ("samples_register.png", "samples_register_head.png", "samples_baseline.png"):
        assert (out / png).stat().st_size > 5000


@pytest.mark.parametrize("overrides, message", [
    ({"baseline": "nope"}, "model.baseline 'nope' is not one of the generators"),
    ({"segmenter": "/nonexistent.ckpt"}, "model.segmenter: checkpoint /nonexistent.ckpt not found"),
    ({"num_samples": 0}, "model.num_samples must be at least 1"),
    ({"rules": {"layout_neighbour": 3}}, "model.rules: Option 'layout_neighbour' is not accepted"),
    ({"rules": {"layout_quantile": 1.5}}, "model.rules.layout_quantile must lie in (0, 1], got 1.5"),
    ({"claim": {"arm": "baseline"}}, "model.claim.arm 'baseline' must be a generator other than model.baseline"),
    ({"generators": {"register": ["a.ckpt", "b.ckpt"], "baseline": "c.ckpt"}},
     "arms compared with a baseline need one checkpoint per training seed each"),
    ({"guidance": {"nope": {"kind": "registers"}}}, "model.guidance.nope: 'nope' is not one of the generators"),
    ({"guidance": {"register": {"kind": "registers", "weight": -2.0}}},
     "model.sampling.guidance.weight must be >= 0, got -2.0"),
    ({"guidance": {"register": [{"kind": "registers"}, {"kind": "registers"}]}},
     "model.guidance.register has 2 configs for the 1 checkpoints of the arm"),
])
def test_bad_evaluation_settings(checkpoints: dict, tmp_path: Path, overrides: dict, message: str,
                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(_eval_config(checkpoints, out, **overrides))])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("guidance", "message"), [
    ({"baseline": {"kind": "registers"}},
     "model.guidance (baseline): model.sampling.guidance.kind: register guidance needs a register bank"),
    ({"baseline": {"kind": "autoguidance", "guide": "/nonexistent.ckpt"}},
     "model.guidance (baseline): model.sampling.guidance.guide: /nonexistent.ckpt does not exist"),
])
def test_bad_guidance_fails_before_sampling(checkpoints: dict, tmp_path: Path, guidance: dict, message: str,
                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bad_guidance"
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(_eval_config(checkpoints, out, guidance=guidance))])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and message in err[-1], err[-1]
    assert not out.exists()


def test_each_arm_samples_with_its_own_guidance(checkpoints: dict, tmp_path: Path) -> None:
    """Register guidance for the register arm, the baseline autoguided by a checkpoint of its own
    run (here itself); the report says each model's guidance and network evaluations."""
    out = tmp_path / "guided"
    guidance = {"register": {"kind": "registers", "weight": 2.0},
                "baseline": [{"kind": "autoguidance", "weight": 1.5, "guide": str(checkpoints["baseline"])}]}
    main(["test", "--config", str(_eval_config(checkpoints, out, guidance=guidance))])
    results = json.loads((out / "report.json").read_text(encoding="utf-8"))["results"]
    assert (results["register"]["nfe"], results["baseline"]["nfe"]) == (2 * 2 + 1, 2 * 2)
    assert results["register"]["guidance"] == {"kind": "registers", "weight": 2.0, "guide": None}
    assert results["baseline"]["guidance"]["guide"] == str(checkpoints["baseline"])


def test_register_edits_are_measured_against_the_same_seeds(checkpoints: dict, tmp_path: Path) -> None:
    out = tmp_path / "edits"
    edits = {"r0_off": [{"operation": "ablate", "registers": [0]}],
             "r12_x3": [{"operation": "scale", "registers": [1, 2], "factor": 3.0}]}
    main(["test", "--config", str(_eval_config(checkpoints, out, edits=edits, edit_samples=6))])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert set(report["edits"]) == {"r0_off", "r12_x3"}
    for edit in report["edits"].values():
        assert edit["generator"] == "register" and edit["effect"]["n"] == 6
        assert set(edit["effect"]["area"]) == {"liver", "spleen", "kidney", "bone", "lung"}
        plausibility = edit["effect"]["plausibility"]
        assert plausibility["difference"]["low"] <= plausibility["difference"]["high"]
        assert abs(plausibility["edited"] - plausibility["unedited"] - plausibility["difference"]["value"]) < 1e-9
    assert report["edits"]["r0_off"]["edits"][0]["registers"] == [0]
    assert "| r0_off | by index |" in (out / "edits.md").read_text(encoding="utf-8")
    assert (out / "edits_register.png").stat().st_size > 1000


@pytest.mark.parametrize(("overrides", "message"), [
    ({"edits": {"x": [{"operation": "scale", "classes": ["livr"], "factor": 2.0}]}},
     "model.edits.x: unknown class 'livr'; known classes: background, liver"),
    ({"edits": {"x": [{"operation": "ablate"}]}, "edit_generator": "baseline"},
     "model.edits: generator 'baseline' has no register bank"),
    ({"edits": {"x": [{"operation": "ablate", "registers": [9]}]}}, "model.edits.x: register index 9 out of range"),
    ({"edits": {"x": [{"operation": "explode"}]}}, "model.edits"),
])
def test_bad_edit_settings_fail_before_sampling(checkpoints: dict, tmp_path: Path, overrides: dict,
                                                message: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bad_edits"
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(_eval_config(checkpoints, out, **overrides))])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("anatldm: error: ") and message in err[-1], err[-1]
    assert not out.exists()


def test_seed_pairs_early_checkpoints_gate_and_claim(checkpoints: dict, tmp_path: Path) -> None:
    """Two 'training seeds' per arm (the same files twice: a pair with no difference), an early
    checkpoint control, judge-calibrated layout rules and the claim's verdict."""
    out = tmp_path / "claim"
    register, baseline = str(checkpoints["register"]), str(checkpoints["baseline"])
    main(["test", "--config", str(_eval_config(
        checkpoints, out, generators={"register": [register, register], "baseline": [baseline, baseline]},
        training_seeds=[3, 4], calibration_subjects=3, early_checkpoints={"register": [baseline]},
        rules={"range_rules": ["components", "holes"], "min_component_pixels": 2, "layout": True,
               "layout_neighbours": 1},
        claim={"arm": "register"}))])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert set(report["results"]) == {"register/seed3", "register/seed4", "baseline/seed3", "baseline/seed4",
                                      "register/seed3@early"}
    assert report["arms"]["register"]["seeds"] == [3, 4]
    first, second = (report["results"][f"register/seed{s}"]["plausibility_rate"]["value"] for s in (3, 4))
    assert first == second  # the same checkpoint and the same sampling seeds: the same samples
    pooled = report["arms"]["register"]["pooled"]["fid"]
    assert pooled["value"] == pytest.approx(report["results"]["register/seed3"]["fid"]["value"])
    assert len(report["pairs"]) == 2 and report["pairs"][1]["seed"] == 4
    assert "layout" in report["results"]["register/seed3"]["violation_rates"]
    assert "judge predictions" in report["rules_source"]
    early = report["gate"]["early_checkpoint"]["register"]
    assert early["low"] <= early["value"] <= early["high"] and not early["relative"]
    claim = report["claim"]
    assert claim["verdict"].startswith(("claim", "not assessable")) and set(claim["checks"]) == {
        "primary_gain", "primary_interval_excludes_0", "same_sign_every_pair", "kid_ratio"}
    assert (out / "samples_register_seed3.png").is_file()
    table = (out / "report.md").read_text(encoding="utf-8")
    assert "Verdict:" in table and "final - early checkpoint" in table
