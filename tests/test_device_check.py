"""``make device-check DRY_RUN=1``: the GPU run's every part, on a CPU at tiny sizes, through the
real command (scripts/device_check.py), so the script keeps working between GPU runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.py"
PARTS = ("bench", "smoke", "claim")


def _device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("device_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("device")
    out, published = root / "run", root / "published"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--publish", str(published)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    return out, published, done


def test_dry_run_runs_every_part_and_times_it(dry_run) -> None:
    out, _, done = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry" and set(summary) >= {"started", "deadline_s", "device", "parts", "wall_s"}
    assert tuple(summary["parts"]) == PARTS
    for name, part in summary["parts"].items():
        assert part["status"] == "ok", (name, part)
        assert 0 < part["wall_s"] <= part["budget_s"] and part["stages"], name
        assert all(stage["status"] == "ok" and stage["wall_s"] > 0 for stage in part["stages"]), name
        assert part["files"] and all(Path(f).is_file() for f in part["files"]), name
    # each wall time is rounded to 0.1 s: the total may fall short of the parts by their rounding
    assert summary["wall_s"] >= sum(part["wall_s"] for part in summary["parts"].values()) - 0.1 * len(PARTS)
    assert "| smoke | ok |" in (out / "summary.md").read_text()


def test_dry_run_results_have_the_gpu_runs_keys(dry_run) -> None:
    out, _, _ = dry_run
    rows = {row["benchmark"]: row for row in json.loads((out / "bench" / "bench_gpu.json").read_text())}
    for key in ("train_step_register", "train_step_baseline", "register_over_baseline", "mfu_register",
                "train_flops_register", "peak_memory_train", "sample_ddim3_register",
                "sample_dpm_solver++_sde2_baseline"):
        assert f"gpu/{key}" in rows, key
    assert rows["gpu/train_flops_register"]["value"] > rows["gpu/train_flops_baseline"]["value"] > 0
    smoke = [s["stage"] for s in json.loads((out / "summary.json").read_text())["parts"]["smoke"]["stages"]]
    assert sorted(smoke) == ["eval", "ldm", "ldm_baseline", "segmenter", "vae"]
    report = json.loads((out / "smoke" / "runs" / "eval" / "report.json").read_text())
    assert set(report["generators"]) == {"register_ldm", "baseline_ldm"}
    claim = json.loads((out / "claim" / "claim" / "report.json").read_text())
    assert {"gate", "claim", "stage_times_s"} <= set(claim) and "passed" in claim["gate"]
    assert {"autoencoder", "judge", "ldm_seed0", "ldm_baseline_seed0", "evaluation"} <= set(claim["stage_times_s"])
    verdict = json.loads((out / "summary.json").read_text())["parts"]["claim"]["verdict"]
    assert verdict["gate_passed"] == claim["gate"]["passed"] and verdict["verdict"]


def test_dry_run_publishes_every_result_file(dry_run) -> None:
    out, published, _ = dry_run
    names = {path.name for path in published.iterdir()}
    assert {"summary.json", "summary.md", "bench_bench_gpu.json", "smoke_eval_report.json", "smoke_eval_report.md",
            "claim_report.json", "claim_report.md", "claim_stage_times.txt"} <= names
    assert any(name.startswith("claim_samples_") and name.endswith(".png") for name in names)


def test_a_short_deadline_skips_parts_and_says_why(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--deadline-s", "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    parts = json.loads((tmp_path / "summary.json").read_text())["parts"]
    assert [part["status"] for part in parts.values()] == ["skipped"] * 3
    assert all("s left of the deadline" in part["reason"] for part in parts.values())


def test_a_command_past_its_budget_is_stopped_with_its_children(tmp_path: Path) -> None:
    device_check = _device_check()
    child = tmp_path / "child.pid"
    began = time.monotonic()
    record = device_check.run_command(["bash", "-c", f"sleep 60 & echo $! > {child}; wait"], tmp_path / "log.txt",
                                      timeout_s=2)
    assert record["status"] == "timed_out" and time.monotonic() - began < 30
    stat = Path(f"/proc/{child.read_text().strip()}/stat")  # the whole process group goes (gone or a zombie)
    for _ in range(50):
        if not stat.exists() or _process_state(stat) in ("Z", "X"):
            break
        time.sleep(0.1)
    assert not stat.exists() or _process_state(stat) in ("Z", "X")


def _process_state(stat: Path) -> str:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "X"


def test_derived_configs_move_paths_and_set_overrides(tmp_path: Path) -> None:
    device_check = _device_check()
    target = device_check.derive_config(ROOT / "configs" / "ldm.yaml", tmp_path / "ldm.yaml", tmp_path / "runs",
                                        device_check.GPU, "ldm", tmp_path / "cache")
    import yaml

    config = yaml.safe_load(target.read_text())
    assert config["model"]["init_args"]["autoencoder"] == f"{tmp_path}/runs/vae/export"
    assert config["trainer"]["devices"] == 1 and config["trainer"]["max_steps"] == device_check.GPU.smoke_steps
    assert config["trainer"]["precision"] == "bf16-mixed" and config["trainer"]["strategy"] == "ddp"
    ema = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("EMAWeightAveraging"))
    assert ema["init_args"]["update_starting_at_step"] == device_check.GPU.smoke_steps // 2
    assert config["data"]["init_args"]["cache_dir"] == str(tmp_path / "cache")
