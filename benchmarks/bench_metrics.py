"""Evaluation-metric cost on CPU at the GPU training size (256x256): what an evaluation run pays.

Rows: anatomy-rule check of 1000 label maps (the plausibility rate), 500 MS-SSIM pairs
(diversity), and nearest-training-slice search of 500 samples among 2000 slices
(memorisation). No targets: the numbers size the evaluation, they gate nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

SIZE = 256


def _masks(num: int, seed: int) -> np.ndarray:
    """Label maps with two ellipses (classes 1, 2) and a ring (class 3) at random places."""
    rng = np.random.default_rng(seed)
    grid = np.arange(SIZE) + 0.5
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    masks = np.zeros((num, SIZE, SIZE), dtype=np.int64)
    for label, centre_col in ((1, 0.3), (2, 0.7), (3, 0.5)):
        r = rng.uniform(0.35, 0.45, (num, 1, 1)) * SIZE
        c = rng.uniform(centre_col - 0.03, centre_col + 0.03, (num, 1, 1)) * SIZE
        radius = rng.uniform(0.08, 0.12, (num, 1, 1)) * SIZE
        distance = np.hypot(rows - r, cols - c)
        region = distance < radius
        if label == 3:
            region &= distance > 0.5 * radius
        masks[region] = label
    return masks


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def run() -> list[dict]:
    from anatldm.metrics import AnatomyRules, Memorisation, PairwiseMSSSIM, PlausibilityRate

    rules = AnatomyRules.fit(_masks(1000, 0), ["background", "left", "right", "ring"])
    generated = torch.from_numpy(_masks(1000, 1))
    plausibility = PlausibilityRate(rules)
    check = _seconds(lambda: [plausibility.update(batch) for batch in generated.split(100)])

    images = torch.rand(200, 1, SIZE, SIZE) * 2 - 1
    diversity = PairwiseMSSSIM(max_pairs=500)
    diversity.update(images)
    msssim = _seconds(diversity.compute)

    memorisation = Memorisation()
    memorisation.update(torch.rand(2000, 1, SIZE, SIZE) * 2 - 1, real=True)
    memorisation.update(torch.rand(500, 1, SIZE, SIZE) * 2 - 1, real=False)
    nearest = _seconds(memorisation.compute)
    return [
        {"benchmark": "metrics/rules_check_1000_masks", "value": check, "unit": "s",
         "note": f"{SIZE}x{SIZE}, 3 classes, 10 updates of 100"},
        {"benchmark": "metrics/msssim_500_pairs", "value": msssim, "unit": "s", "note": f"{SIZE}x{SIZE}, 5 scales, chunks of 64 pairs"},
        {"benchmark": "metrics/memorisation_500x2000", "value": nearest, "unit": "s",
         "note": f"{SIZE}x{SIZE}, cdist in chunks of 1024"},
    ]


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for row in run():
        print(row)
