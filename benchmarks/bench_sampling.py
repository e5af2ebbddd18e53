"""Samplers compared on one trained LDM: FID, KID and the primary anatomy metric per sampler.

    python benchmarks/bench_sampling.py                      # the quickstart's register LDM
    python benchmarks/bench_sampling.py --checkpoint runs/ablation/fixes_seed0/checkpoints/last.ckpt \\
        --judge runs/claim/judge/checkpoints/last.ckpt --rules runs/ablation/fixes/rules.json \\
        --eval-config configs/claim/eval.yaml --samples 300 --out docs/results/samplers.json

Every sampler draws the same seeds. FID/KID use the judge's pooled bottleneck features against
the real test slices of ``--eval-config`` (as ``anatldm test``); plausibility is the judge's masks
checked by the rules an evaluation run fitted (its ``rules.json``), with a percentile bootstrap
interval. The question: which sampler of <= 50 steps stays within 10 % of DDPM-1000 on both
FID/KID and plausibility? Without the model files it returns one row saying so.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from anatldm.atomic import write_text_atomic
from anatldm.datamodules import AnatomyDataModule
from anatldm.metrics import AnatomyRules, PooledEncoderFeatures, bootstrap_ci, make_fid_kid
from anatldm.models.networks import bottleneck_module
from anatldm.trainers import AnatomicalLDMTask, SegmenterTask

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "runs" / "quickstart"
SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("ddim", 20), ("dpm_solver++", 20), ("dpm_solver++", 50),
            ("dpm_solver++_sde", 20), ("dpm_solver++_sde", 50), ("unipc", 20), ("unipc", 50))
BATCH = 50


def real_test_slices(eval_config: Path) -> tuple[torch.Tensor, torch.Tensor, list[str], list[int]]:
    """The real test slices ``(N, 1, H, W)`` of an evaluation config's data (cache under the
    repo), their label maps ``(N, H, W)``, subjects and positions."""
    config = yaml.safe_load(eval_config.read_text(encoding="utf-8"))["data"]["init_args"]
    config["cache_dir"] = str(ROOT / config["cache_dir"])
    datamodule = AnatomyDataModule(**config)
    datamodule.setup("test")
    batches = list(datamodule.test_dataloader())
    return (torch.cat([b["image"] for b in batches]), torch.cat([b["mask"] for b in batches]),
            [s for b in batches for s in b["subject"]], [int(p) for b in batches for p in b["position"]])


def real_test_images(eval_config: Path) -> torch.Tensor:
    """The real test slices ``(N, 1, H, W)`` of an evaluation config's data."""
    return real_test_slices(eval_config)[0]


def run(checkpoint: Path = QUICKSTART / "ldm" / "checkpoints" / "last.ckpt",
        judge: Path = QUICKSTART / "segmenter" / "checkpoints" / "last.ckpt",
        rules: Path = QUICKSTART / "eval" / "rules.json",
        eval_config: Path = ROOT / "configs" / "quickstart" / "eval.yaml",
        samples: int | None = None, samplers=SAMPLERS) -> list[dict]:
    if not all(Path(p).is_file() for p in (checkpoint, judge, rules)):
        return [{"benchmark": "sampling", "value": 0, "unit": "-",
                 "note": f"skipped: needs {checkpoint}, {judge} and {rules} (make quickstart)"}]
    model = AnatomicalLDMTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    segmenter = SegmenterTask.load_from_checkpoint(judge, map_location="cpu", weights_only=True).eval()
    anatomy = AnatomyRules.from_dict(json.loads(Path(rules).read_text()))
    features = PooledEncoderFeatures(segmenter.network, segmenter.feature_channels,
                                     layer=bottleneck_module(segmenter.network))
    real = real_test_images(Path(eval_config))
    count = samples or len(real)
    rows = []
    for sampler, steps in samplers:
        metrics = make_fid_kid(features, kid_subset_size=min(100, count, len(real)))
        for start in range(0, len(real), BATCH):
            metrics.fid.update(real[start:start + BATCH], real=True)
            metrics.kid.update(real[start:start + BATCH], real=True)
        seconds, passed = 0.0, []
        batches = model.pipeline.generate_batches(range(count), BATCH, sampler=sampler, num_inference_steps=steps)
        while True:
            begin = time.perf_counter()
            out = next(batches, None)
            seconds += time.perf_counter() - begin
            if out is None:
                break
            images = out.images
            metrics.fid.update(images, real=False)
            metrics.kid.update(images, real=False)
            with torch.no_grad():
                labels = segmenter(images).argmax(1).numpy()
            passed.append(anatomy.check_batch(labels)[0])
        passed = np.concatenate(passed).astype(float)
        rate, low, high = bootstrap_ci("mean", [passed], 1000, 0.95, 0)
        name = f"{sampler}-{steps}"
        rows.append({"benchmark": f"sampling/{name}", "sampler": sampler, "steps": steps,
                     "images_per_s": count / seconds, "fid": float(metrics.fid.compute()),
                     "kid": float(metrics.kid.compute()[0]),
                     "plausibility": {"value": float(rate), "low": float(low), "high": float(high)},
                     "value": float(metrics.fid.compute()), "unit": "FID",
                     "note": f"{count} samples vs {len(real)} real test slices, {checkpoint}; "
                             f"{torch.get_num_threads()} CPU threads, batch {BATCH}, with decoding"})
        print(f"{name:<22} FID {rows[-1]['fid']:7.3f}  KID {rows[-1]['kid']:.4f}  plausibility {rate:.3f} "
              f"[{low:.3f}, {high:.3f}]  {rows[-1]['images_per_s']:.1f} images/s", flush=True)
    reference = next((r for r in rows if r["sampler"] == "ddpm"), None)
    if reference is not None:
        for row in rows:
            row["vs_ddpm1000"] = {key: row[key] / reference[key] - 1 for key in ("fid", "kid")}
            row["vs_ddpm1000"]["plausibility"] = row["plausibility"]["value"] / reference["plausibility"]["value"] - 1 \
                if reference["plausibility"]["value"] > 0 else float("nan")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=QUICKSTART / "ldm" / "checkpoints" / "last.ckpt")
    parser.add_argument("--judge", type=Path, default=QUICKSTART / "segmenter" / "checkpoints" / "last.ckpt")
    parser.add_argument("--rules", type=Path, default=QUICKSTART / "eval" / "rules.json")
    parser.add_argument("--eval-config", type=Path, default=ROOT / "configs" / "quickstart" / "eval.yaml")
    parser.add_argument("--samples", type=int, default=None, help="samples per sampler (default: real test slices)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    rows = run(args.checkpoint, args.judge, args.rules, args.eval_config, args.samples)
    if args.out:
        write_text_atomic(args.out, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
