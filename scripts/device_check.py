"""`make device-check`: the one prepared GPU run (issue 23), and its CPU dry run.

    python scripts/device_check.py                  # one GPU, <= 9 min: runs/device/<time>/, then docs/results/device/
    python scripts/device_check.py --dry-run        # the same parts on a CPU at tiny sizes (tests/test_device_check.py)

Three parts, each with its own wall-time budget under one global deadline; a part that would
start with less time left than its budget's floor is skipped, one that overruns its budget is
stopped (its whole process group), and the summary records which:
  1. bench: ``benchmarks/bench_gpu.py`` (register vs baseline bf16 train step, ratio, MFU,
     DDIM-50 / SDE-20 images/s, peak memory).
  2. smoke: a short fit of each stage with the shipped full-size configs (``configs/*.yaml``,
     256x256, bf16-mixed, DDP on one device), then ``anatldm test`` on them.
  3. claim: ``scripts/claim.sh`` on a config folder derived from ``configs/claim/`` (128x128,
     longer training, the same gate and pre-registered criteria; its LDM fits run concurrently):
     the GPU-size claim.
Every stage is the real ``anatldm`` command on a config derived from a shipped one: paths moved
into the run folder, then the overrides of ``trainer_overrides``, ``data_overrides`` and
``MODEL_OVERRIDES`` (the one table of model keys) set. ``summary.json`` /
``summary.md`` hold every part's status, budget, wall time, stages and result files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("device_check")


@dataclass(frozen=True)
class Mode:
    """The device, sizes and budgets of one kind of run.

    Args:
        name: ``gpu`` or ``dry``.
        accelerator: Lightning's ``trainer.accelerator``.
        deadline_s: wall-time limit of the whole command.
        budgets_s: part -> wall-time budget (the part is stopped when it runs past it).
        floors_s: part -> the least time left at which the part still starts.
        smoke_steps: optimizer steps of each smoke fit.
        claim_precision: ``trainer.precision`` of the claim's fits.
        claim_epochs: claim stage -> epochs (the CPU claim: autoencoder 16, judge 20, LDMs 30).
        claim_seeds: training seeds of the claim.
        claim_jobs: claim stages run at the same time (scripts/claim.sh JOBS).
        bench_args: arguments of benchmarks/bench_gpu.py.
    """

    name: str
    accelerator: str
    deadline_s: int
    budgets_s: dict[str, int]
    floors_s: dict[str, int]
    smoke_steps: int
    claim_precision: str
    claim_epochs: dict[str, int]
    claim_seeds: tuple[int, ...]
    claim_jobs: int
    bench_args: tuple[str, ...] = ()


# GPU budgets: docs/device.md, "Time budget" (CPU-measured FLOPs and step times, H200 estimates).
GPU = Mode(
    name="gpu", accelerator="gpu", deadline_s=540, budgets_s={"bench": 60, "smoke": 170, "claim": 300},
    floors_s={"bench": 40, "smoke": 120, "claim": 200}, smoke_steps=200, claim_precision="bf16-mixed",
    claim_epochs={"vae": 32, "judge": 40, "ldm": 60}, claim_seeds=(0, 1, 2), claim_jobs=6)
# Dry-run budgets are generous (a loaded 2-core CI machine): they only stop a run that hangs.
DRY = Mode(
    name="dry", accelerator="cpu", deadline_s=720, budgets_s={"bench": 120, "smoke": 300, "claim": 300},
    floors_s={"bench": 10, "smoke": 20, "claim": 20}, smoke_steps=2, claim_precision="bf16-mixed",
    claim_epochs={"vae": 1, "judge": 1, "ldm": 2}, claim_seeds=(0,), claim_jobs=2,
    bench_args=("--device", "cpu", "--image-size", "32", "--batch", "2", "--rounds", "1", "--warmup", "1",
                "--ddim-steps", "3", "--sde-steps", "2"))

# --- every model key this script sets: rename here when the model's config keys move ------------
# (mode, stage) -> {key under model.init_args: value}; stages: vae, ldm, segmenter, eval (smoke,
# configs/*.yaml) and claim_vae, claim_ldm, claim_judge, claim_eval (configs/claim/*.yaml).
# ldm also covers ldm_baseline, claim_ldm also claim_ldm_baseline, claim_eval also claim_eval_half.
# (part_claim also sets the claim evaluation's generators and training_seeds, from the seeds.)
TINY_LDM = {"denoiser.channels": [16, 32], "denoiser.attention_levels": [False, True],
            "denoiser.norm_num_groups": 8, "denoiser.num_head_channels": 8, "denoiser.registers.dim": 16,
            "denoiser.registers.levels": [0, 1], "denoiser.head.levels": [0, 1], "denoiser.head.channels": 16,
            "sampling.num_inference_steps": 3, "training.num_preview_samples": 2}
TINY_EVAL = {"num_samples": 4, "sample_batch_size": 4, "num_inference_steps": 3, "calibration_subjects": 2,
             "kid_subset_size": 2, "num_bootstrap": 20, "num_bootstrap_costly": 10, "max_training_slices": 16}
MODEL_OVERRIDES: dict[tuple[str, str], dict] = {
    ("gpu", "vae"): {"adversarial_warmup_steps": 100, "scale_factor_batches": 10},
    ("gpu", "eval"): {"num_samples": 128, "edit_samples": 64, "calibration_subjects": 8, "kid_subset_size": 64,
                      "num_bootstrap": 200, "max_training_slices": 500},
    ("dry", "vae"): {"channels": [8, 16, 16], "norm_num_groups": 4, "adversarial_warmup_steps": 1,
                     "discriminator_channels": 8, "scale_factor_batches": 2},
    ("dry", "ldm"): TINY_LDM,
    ("dry", "segmenter"): {"channels": [8, 16], "strides": [2]},
    ("dry", "eval"): {**TINY_EVAL, "edit_samples": 2},
    ("dry", "claim_vae"): {"channels": [8, 16, 16], "norm_num_groups": 4, "adversarial_warmup_steps": 1,
                           "discriminator_channels": 8, "scale_factor_batches": 2},
    ("dry", "claim_judge"): {"channels": [8, 16], "strides": [2]},
    ("dry", "claim_ldm"): TINY_LDM,
    ("dry", "claim_eval"): TINY_EVAL,
}
# ------------------------------------------------------------------------------------------------

TINY_DATA = {"image_size": 32, "num_subjects": 4, "num_slices": 8, "batch_size": 2, "num_workers": 0,
             "split_fractions": [0.5, 0.25, 0.25], "min_foreground": 0.0}


def data_overrides(mode: Mode, stage: str, cache: Path) -> dict:
    """``data.init_args`` keys of one stage: its size, and the run folder's slice cache."""
    keys = {"cache_dir": str(cache)}
    if mode.name == "dry":
        keys.update(TINY_DATA)
        if stage == "claim_judge":
            keys["split_fractions"] = [0.5, 0.5, 0.0]
    elif stage.startswith("claim"):
        keys["image_size"] = 128  # the claim configs' num_workers 0: the memory-mapped cache is fast
    else:
        keys.update(num_subjects=24, num_workers=4)  # 200 subjects of 256x256x64 take minutes to write
    return keys


def trainer_overrides(mode: Mode, stage: str) -> dict:
    """``trainer`` keys of one stage: one device of the mode's kind, then the stage's length.

    Evaluations keep their configs' precision (32: metrics in float32); the smoke fits keep their
    configs' strategy (DDP, on one device; gloo on a CPU) and run bf16-mixed, on a CPU too.
    """
    keys = {"accelerator": mode.accelerator, "devices": 1}
    if stage == "eval" or stage.startswith("claim_eval"):
        return keys
    if stage.startswith("claim"):
        keys.update(precision=mode.claim_precision,
                    max_epochs=mode.claim_epochs[stage.removeprefix("claim_").removesuffix("_baseline")])
        if mode.name == "dry":
            keys["check_val_every_n_epoch"] = 1
        return keys
    keys.update(precision="bf16-mixed", max_steps=mode.smoke_steps, max_epochs=-1, limit_val_batches=2,
                log_every_n_steps=1)
    if stage.startswith("ldm"):  # the EMA starts at step 1000 in the configs
        keys["callbacks[EMAWeightAveraging].init_args.update_starting_at_step"] = mode.smoke_steps // 2
    return keys


def set_key(config: dict, dotted: str, value) -> None:
    """Set ``a.b.c`` in nested dicts; ``callbacks[Name]`` is the callback whose class_path ends in Name."""
    node = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        match = re.fullmatch(r"(\w+)\[(\w+)\]", part)
        if match:
            node = next(c for c in node[match[1]] if c["class_path"].endswith(match[2]))
        else:
            node = node.setdefault(part, {})
    node[parts[-1]] = value


def derive_config(source: Path, target: Path, runs: Path, mode: Mode, stage: str, cache: Path,
                  extra: dict | None = None) -> Path:
    """Copy a shipped config with its ``runs/`` paths moved under ``runs`` and this run's overrides set."""
    text = re.sub(r"(?<![\w/.])runs/", f"{runs}/", source.read_text(encoding="utf-8"))
    config = yaml.safe_load(text)
    model_stage = stage.removesuffix("_baseline").removesuffix("_half")
    for key, value in trainer_overrides(mode, stage).items():
        set_key(config, f"trainer.{key}", value)
    for key, value in data_overrides(mode, stage, cache).items():
        set_key(config, f"data.init_args.{key}", value)
    for key, value in MODEL_OVERRIDES.get((mode.name, model_stage), {}).items():
        set_key(config, f"model.init_args.{key}", value)
    for key, value in (extra or {}).items():
        set_key(config, key, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return target


class Clock:
    """The global deadline: seconds left since the run began."""

    def __init__(self, deadline_s: int) -> None:
        self.start, self.deadline_s = time.monotonic(), deadline_s

    def left(self) -> float:
        return self.deadline_s - (time.monotonic() - self.start)


def run_command(argv: list[str], log: Path, timeout_s: float, env: dict | None = None) -> dict:
    """Run one command in its own process group, output to ``log``; stop the group at ``timeout_s``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **(env or {})})
        try:
            rc = process.wait(timeout=max(1.0, timeout_s))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)  # Lightning writes last.ckpt on SIGTERM
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            rc, status = process.returncode, "timed_out"
    record = {"command": " ".join(argv), "log": str(log), "rc": rc, "status": status,
              "wall_s": round(time.monotonic() - began, 1)}
    logger.info("%s: %s in %.1f s (%s)", argv[1] if len(argv) > 1 else argv[0], status, record["wall_s"], log)
    return record


def anatldm(*args: str) -> list[str]:
    """The ``anatldm`` console script of this interpreter's environment."""
    return [str(Path(sys.executable).with_name("anatldm")), *args]


def part_bench(mode: Mode, folder: Path, budget: float) -> dict:
    out = folder / "bench_gpu.json"
    record = run_command([sys.executable, "benchmarks/bench_gpu.py", *mode.bench_args, "--out", str(out)],
                         folder / "bench_gpu.log", budget)
    return {"stages": [record], "status": record["status"], "files": [str(out)] if out.exists() else []}


def part_smoke(mode: Mode, folder: Path, budget: float) -> dict:
    """Fit each full-size stage briefly, then evaluate the two LDMs with the segmenter as judge."""
    cache = folder / "cache"
    configs = {stage: derive_config(ROOT / "configs" / f"{stage}.yaml", folder / "configs" / f"{stage}.yaml",
                                    folder / "runs", mode, stage, cache)
               for stage in ("vae", "ldm", "ldm_baseline", "segmenter", "eval")}
    began, stages = time.monotonic(), []

    def left() -> float:
        return budget - (time.monotonic() - began)

    def concurrently(names: list[str], verb: str = "fit") -> bool:  # each gets what is left of the budget
        records = _parallel([(anatldm(verb, "--config", str(configs[name])), folder / f"{name}.log")
                             for name in names], left())
        stages.extend({"stage": name, **record} for name, record in zip(names, records, strict=True))
        return all(record["status"] == "ok" for record in records)

    ok = concurrently(["vae", "segmenter"]) and concurrently(["ldm", "ldm_baseline"]) and \
        concurrently(["eval"], verb="test")
    report = folder / "runs" / "eval" / "report.json"
    files = [str(path) for path in [report, report.with_suffix(".md"), *sorted(report.parent.glob("*.png"))]
             if path.exists()]
    status = "ok" if ok else next(s["status"] for s in stages if s["status"] != "ok")
    return {"stages": stages, "status": status, "files": files}


def _parallel(commands: list[tuple[list[str], Path]], timeout_s: float) -> list[dict]:
    """Run commands at the same time (one thread each waits on its process); records in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda command: run_command(command[0], command[1], timeout_s), commands))


def part_claim(mode: Mode, folder: Path, budget: float) -> dict:
    """scripts/claim.sh on a config folder derived from configs/claim/ (the GPU-size first claim, CLAIM=v1: its folder holds the v1 configs)."""
    runs, cache, configs = folder / "claim", folder / "cache", folder / "configs"
    seeds = list(mode.claim_seeds)
    for name in ("vae", "judge", "ldm", "ldm_baseline", "eval", "eval_half"):
        extra = {}
        if name.startswith("eval"):
            checkpoint = "last" if name == "eval" else "fraction-0.50"
            extra = {"model.init_args.generators": {
                arm: [f"{runs}/{stem}_seed{s}/checkpoints/{checkpoint}.ckpt" for s in seeds]
                for arm, stem in (("register_ldm", "ldm"), ("baseline_ldm", "ldm_baseline"))},
                "model.init_args.training_seeds": seeds}
        derive_config(ROOT / "configs" / "claim" / f"{name}.yaml", configs / f"{name}.yaml", runs.parent, mode,
                      f"claim_{name}", cache, extra)
    env = {"CONFIGS": str(configs), "RUNS": str(runs), "SEEDS": " ".join(map(str, seeds)),
           "JOBS": str(mode.claim_jobs), "FORCE": "1", "CLAIM": "v1", "HALF": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    record = run_command(["bash", "scripts/claim.sh"], folder / "claim.log", budget, env)
    files = [str(path) for path in [runs / "report.json", runs / "report.md", runs / "half" / "report.json",
                                    runs / "half" / "report.md", runs / "stage_times.txt",
                                    *sorted(runs.glob("samples_*.png"))] if path.exists()]
    verdict = None
    if (runs / "report.json").exists():
        report = json.loads((runs / "report.json").read_text(encoding="utf-8"))
        claim = report.get("claim", {})
        verdict = {"gate_passed": report["gate"]["passed"], "claim_met": claim.get("met"),
                   "verdict": claim.get("verdict"), "relative_plausibility_gain": claim.get("relative_plausibility_gain"),
                   "kid_ratio": claim.get("kid_ratio"), "stage_times_s": report.get("stage_times_s")}
    return {"stages": [record], "status": record["status"], "files": files,
            "label": f"GPU-size claim: configs/claim at 128x128, epochs {mode.claim_epochs}, seeds {seeds}"
            if mode.name == "gpu" else "dry run of the GPU-size claim (tiny sizes, CPU)", "verdict": verdict}


PARTS = {"bench": part_bench, "smoke": part_smoke, "claim": part_claim}


def run(mode: Mode, out: Path, parts: list[str], deadline_s: int | None = None) -> dict:
    """Every part in order under the global deadline; writes and returns ``summary.json``."""
    clock = Clock(deadline_s or mode.deadline_s)
    summary = {"mode": mode.name, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "deadline_s": clock.deadline_s,
               "folder": str(out), "device": _device_name(mode), "parts": {}}
    for name in PARTS:
        budget = min(mode.budgets_s[name], clock.left())
        entry = {"budget_s": mode.budgets_s[name]}
        if name not in parts:
            entry.update(status="skipped", reason="not asked for (--parts)", wall_s=0.0)
        elif budget < mode.floors_s[name]:
            entry.update(status="skipped", reason=f"{clock.left():.0f} s left of the deadline, the part needs "
                         f"{mode.floors_s[name]} s", wall_s=0.0)
        else:
            began = time.monotonic()
            entry.update(PARTS[name](mode, out / name, budget))
            entry["wall_s"] = round(time.monotonic() - began, 1)
        summary["parts"][name] = entry
        logger.info("part %s: %s (%.1f s of %d s)", name, entry["status"], entry["wall_s"], entry["budget_s"])
    summary["wall_s"] = round(time.monotonic() - clock.start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    return summary


def _device_name(mode: Mode) -> str:
    if mode.name == "dry":
        return "CPU (dry run)"
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name(0), "
                            "torch.__version__, torch.version.cuda)"], capture_output=True, text=True)
    return probe.stdout.strip() or f"no CUDA device ({probe.stderr.strip().splitlines()[-1:]})"


def summary_markdown(summary: dict) -> str:
    lines = [f"# device check ({summary['mode']}, {summary['device']})", "",
             f"Started {summary['started']}, {summary['wall_s']} s of a {summary['deadline_s']} s deadline.", "",
             "| part | status | wall s | budget s | note |", "|---|---|---|---|---|"]
    for name, part in summary["parts"].items():
        note = part.get("reason") or part.get("label") or ""
        lines.append(f"| {name} | {part['status']} | {part['wall_s']} | {part['budget_s']} | {note} |")
    for name, part in summary["parts"].items():
        for stage in part.get("stages", []):
            lines.append(f"- {name}/{stage.get('stage', name)}: {stage['status']} in {stage['wall_s']} s "
                         f"(`{stage['log']}`)")
    bench = Path(summary["folder"]) / "bench" / "bench_gpu.json"
    if bench.exists():
        lines += ["", "| benchmark | value | unit | note |", "|---|---|---|---|"]
        lines += [f"| {r['benchmark']} | {r['value']:.4g} | {r['unit']} | {r['note']} |"
                  for r in json.loads(bench.read_text(encoding="utf-8"))]
    return "\n".join(lines) + "\n"


def publish(summary: dict, target: Path) -> None:
    """Copy the summary and every part's result files (JSON, MD, PNG, stage times) to ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    folder = Path(summary["folder"])
    for path in [folder / "summary.json", folder / "summary.md",
                 *(Path(f) for part in summary["parts"].values() for f in part.get("files", []))]:
        names = [part for part in path.relative_to(folder).parts if part != "runs"]
        names = [part for index, part in enumerate(names) if index == 0 or part != names[index - 1]]
        shutil.copy2(path, target / "_".join(names))  # claim/claim/half/report.md -> claim_half_report.md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on a CPU (what the tests run)")
    parser.add_argument("--out", type=Path, help="run folder (default runs/device/<time>, dry run runs/device/dry-<time>)")
    parser.add_argument("--publish", type=Path, help="copy the results there (default docs/results/device; "
                        "a dry run publishes only when asked)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of bench,smoke,claim")
    parser.add_argument("--deadline-s", type=int, help="global wall-time limit (default: the mode's)")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    mode = DRY if options.dry_run else GPU
    parts = [p for p in options.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from {list(PARTS)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (options.out or ROOT / "runs" / "device" / (f"dry-{stamp}" if options.dry_run else stamp)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = run(mode, out, parts, options.deadline_s)
    target = options.publish or (None if options.dry_run else ROOT / "docs" / "results" / "device")
    if target is not None:
        publish(summary, target)
    print((out / "summary.md").read_text(encoding="utf-8"))
    return 0 if all(part["status"] in ("ok", "skipped") for part in summary["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
