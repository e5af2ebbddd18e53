"""EvaluationTask through the real CLI on tiny checkpoints trained in the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from anatldm.cli import main
from tests.trainers.test_ldm import TINY_DATA

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


def test_report_has_every_field(checkpoints: dict, tmp_path: Path) -> None:
    out = tmp_path / "report"
    main(["test", "--config", str(_eval_config(checkpoints, out))])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["feature_source"].startswith("segmenter") and report["num_samples"] == 10
    assert set(report["results"]) == {"register", "baseline"}
    metrics = {"plausibility_rate", "fsd", "area_w1", "fid", "kid", "diversity_msssim", "memorisation_rmse"}
    for name, results in report["results"].items():
        assert metrics <= set(results), name
        for metric in metrics:
            value = results[metric]
            assert value["low"] <= value["high"], (name, metric)
        assert set(results["violation_rates"]) >= {"liver/area", "cooccurrence"}
    assert "self_consistency_dice" in report["results"]["register"]
    assert "self_consistency_dice" not in report["results"]["baseline"]
    change = report["results"]["register"]["relative_change_vs_baseline"]
    assert {"fsd", "fid", "area_w1"} <= set(change)
    assert set(report["real_test"]["segmenter_dice"]) == {"liver", "spleen", "kidney", "bone", "lung"}
    table = (out / "report.md").read_text(encoding="utf-8")
    assert "| metric | baseline | register | register vs baseline |" in table  # safe_dump sorts the keys
    assert "Plausibility rate (primary)" in table
    rules = json.loads((out / "rules.json").read_text(encoding="utf-8"))
    assert rules["class_names"][0] == "background"
    for png in ("samples_register.png", "samples_register_head.png", "samples_baseline.png"):
        assert (out / png).stat().st_size > 5000


@pytest.mark.parametrize("overrides, message", [
    ({"baseline": "nope"}, "model.baseline 'nope' is not one of the generators"),
    ({"segmenter": "/nonexistent.ckpt"}, "model.segmenter: checkpoint /nonexistent.ckpt not found"),
    ({"num_samples": 0}, "model.num_samples must be at least 1"),
])
def test_bad_evaluation_settings(checkpoints: dict, tmp_path: Path, overrides: dict, message: str,
                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(_eval_config(checkpoints, out, **overrides))])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


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
