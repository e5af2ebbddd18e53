"""scripts/register_effect.py: what register guidance and autoguidance amplify, on tiny trained checkpoints."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("register_effect", REPO / "scripts" / "register_effect.py")
register_effect = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(register_effect)


def test_register_path_and_autoguidance_signal(stage_checkpoints: dict, tmp_path: Path) -> None:
    cache = str(stage_checkpoints["root"] / "cache")
    row = register_effect.register_effect(str(stage_checkpoints["register"]), [10, 500], max_slices=4, cache_dir=cache)
    assert row["guide"] == "no registers" and set(row["relative_change_by_t"]) == {"10", "500"}
    assert all(value > 0 for value in row["relative_change_by_t"].values())  # a trained register path acts
    assert "conditioning_change_by_t" not in row  # no anatomy conditioning in this model
    # autoguidance with the model itself as the guide: nothing to amplify
    run = tmp_path / "checkpoints"
    run.mkdir()
    shutil.copy(stage_checkpoints["baseline"], run / "last.ckpt")
    shutil.copy(stage_checkpoints["baseline"], run / "fraction-0.25.ckpt")
    row = register_effect.register_effect(str(run / "last.ckpt"), [10], max_slices=4, cache_dir=cache,
                                          guide_fraction=0.25)
    assert row["guide"] == "fraction-0.25" and row["relative_change_by_t"]["10"] == pytest.approx(0.0, abs=1e-6)


def test_refusals_name_the_checkpoint(stage_checkpoints: dict) -> None:
    cache = str(stage_checkpoints["root"] / "cache")
    baseline = str(stage_checkpoints["baseline"])
    with pytest.raises(SystemExit, match="no register bank"):
        register_effect.register_effect(baseline, [10], max_slices=2, cache_dir=cache)
    with pytest.raises(SystemExit, match=r"no autoguidance guide .*fraction-0\.50\.ckpt"):
        register_effect.register_effect(baseline, [10], max_slices=2, cache_dir=cache, guide_fraction=0.5)
