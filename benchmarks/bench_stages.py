"""Peak memory of each stage at the quickstart size: the real CLI, a few steps each.

    python benchmarks/bench_stages.py

Runs every stage of the quickstart chain as a user would (``anatldm fit|test|predict`` with the
``configs/quickstart`` configs) in a subprocess limited to a few training steps, and reports the
subprocess's peak resident memory (its ``VmHWM``, polled every 0.1 s). Stages that need an earlier stage's output
are skipped until ``make quickstart`` has produced it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "quickstart"
ANATLDM = str(Path(sys.executable).parent / "anatldm")
SHORT = ["--trainer.max_steps", "20", "--trainer.limit_val_batches", "2", "--trainer.logger", "false",
         "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "null"]
STAGES = [  # name, arguments, file the stage needs
    ("autoencoder", ["fit", "--config", "configs/quickstart/vae.yaml", *SHORT,
                     "--model.init_args.scale_factor_batches", "2"], None),
    ("ldm", ["fit", "--config", "configs/quickstart/ldm.yaml", *SHORT], RUNS / "vae/export/autoencoder.json"),
    ("ldm_baseline", ["fit", "--config", "configs/quickstart/ldm_baseline.yaml", *SHORT],
     RUNS / "vae/export/autoencoder.json"),
    ("segmenter", ["fit", "--config", "configs/quickstart/segmenter.yaml", *SHORT], None),
    ("evaluation", ["test", "--config", "configs/quickstart/eval.yaml", "--model.init_args.num_samples", "64",
                    "--model.init_args.num_inference_steps", "10"], RUNS / "segmenter/checkpoints/last.ckpt"),
    ("predict", ["predict", "--config", "configs/quickstart/sample.yaml"], RUNS / "ldm/checkpoints/last.ckpt"),
]


def _peak_rss(args: list[str], scratch: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``anatldm args`` run in the repository."""
    extra = []
    if args[0] == "fit":
        extra = ["--trainer.default_root_dir", str(scratch)]
        if "vae.yaml" in args[2]:
            extra += ["--model.init_args.export_dir", str(scratch / "export")]
    elif args[0] == "test":
        extra = ["--model.init_args.output_dir", str(scratch / "eval")]
    elif args[0] == "predict":  # the same config, writing into the scratch folder
        config = yaml.safe_load((ROOT / args[2]).read_text(encoding="utf-8"))
        config["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(scratch / "samples")
        config["trainer"]["default_root_dir"] = str(scratch)
        scratch.mkdir(parents=True, exist_ok=True)
        (scratch / "sample.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        args = ["predict", "--config", str(scratch / "sample.yaml")]
    start = time.perf_counter()
    process = subprocess.Popen([ANATLDM, *args, *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_kib = 0
    while process.poll() is None:  # VmHWM of the child itself (rusage would count the pre-exec fork)
        peak_kib = max(peak_kib, _vm_hwm_kib(process.pid))
        time.sleep(0.1)
    if process.returncode != 0:
        raise RuntimeError(f"anatldm {' '.join(args)} failed:\n{process.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - start, peak_kib / 1024


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, args, needs in STAGES:
            if needs is not None and not needs.exists():
                rows.append({"benchmark": f"memory/{name}", "value": 0, "unit": "-",
                             "note": f"skipped: needs {needs.relative_to(ROOT)} (make quickstart)"})
                continue
            seconds, peak = _peak_rss(args, Path(tmp) / name)
            rows.append({"benchmark": f"memory/{name}", "value": peak, "unit": "MiB",
                         "note": f"peak RSS of `anatldm {args[0]}` ({seconds:.0f} s, short run)"})
    return rows


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for row in run():
        print(f"{row['benchmark']:<24} {row['value']:>8.4g} {row['unit']:<4} {row['note']}")
