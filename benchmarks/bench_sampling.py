"""Samplers on the quickstart models: images per second and FID for DDPM-1000, DDIM-50, DPM-Solver++-20.

    python benchmarks/bench_sampling.py

Needs the quickstart's register LDM and segmenter (``make quickstart``); without them it returns
one row saying so. Every sampler draws the same seeds (one per real test slice); FID is computed
on the segmenter's pooled bottleneck features against the real test slices, as in
``anatldm test``. The question it answers: is DPM-Solver++ at 20 steps as good as DDIM at 50?
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from anatldm.data import AnatomyDataModule
from anatldm.metrics import PooledEncoderFeatures, make_fid_kid
from anatldm.trainers import AnatomicalLDMTask, SegmenterTask
from anatldm.trainers.segmenter import bottleneck_module

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "quickstart"
SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("dpm_solver++", 20))
BATCH = 64


def _real_test_images() -> torch.Tensor:
    config = yaml.safe_load((ROOT / "configs" / "quickstart" / "eval.yaml").read_text(encoding="utf-8"))["data"]["init_args"]
    config["cache_dir"] = str(ROOT / config["cache_dir"])
    datamodule = AnatomyDataModule(**config)
    datamodule.setup("test")
    return torch.cat([batch["image"] for batch in datamodule.test_dataloader()])


def run() -> list[dict]:
    checkpoint, segmenter_path = RUNS / "ldm" / "checkpoints" / "last.ckpt", RUNS / "segmenter" / "checkpoints" / "last.ckpt"
    if not (checkpoint.is_file() and segmenter_path.is_file()):
        return [{"benchmark": "sampling", "value": 0, "unit": "-", "note": "skipped: run `make quickstart` first"}]
    model = AnatomicalLDMTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    segmenter = SegmenterTask.load_from_checkpoint(segmenter_path, map_location="cpu", weights_only=True).eval()
    features = PooledEncoderFeatures(segmenter.network, segmenter.feature_channels,
                                     layer=bottleneck_module(segmenter.network))
    real = _real_test_images()
    rows = []
    for sampler, steps in SAMPLERS:
        fid = make_fid_kid(features, kid_subset_size=50).fid
        for start in range(0, len(real), BATCH):
            fid.update(real[start:start + BATCH], real=True)
        seconds = 0.0
        for start in range(0, len(real), BATCH):
            seeds = range(start, min(start + BATCH, len(real)))
            begin = time.perf_counter()
            images = model.generate(seeds, sampler=sampler, num_inference_steps=steps)["image"]
            seconds += time.perf_counter() - begin
            fid.update(images, real=False)
        note = f"{len(real)} samples vs {len(real)} real test slices, quickstart register LDM"
        rows += [
            {"benchmark": f"sampling/{sampler}{steps}_images_per_s", "value": len(real) / seconds,
             "unit": "images/s", "note": f"{torch.get_num_threads()} CPU threads, batch {BATCH}, with decoding"},
            {"benchmark": f"sampling/{sampler}{steps}_fid", "value": float(fid.compute()), "unit": "FID",
             "note": note + " (segmenter features)"},
        ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['benchmark']:<36} {row['value']:>10.4g} {row['unit']:<9} {row['note']}")
