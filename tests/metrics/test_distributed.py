"""Metric states sync across 2 CPU processes (gloo): each rank updates half, compute equals one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anatldm.metrics import (
    AnatomyRules,
    AreaWasserstein,
    FrechetSegmentationDistance,
    Memorisation,
    PairwiseMSSSIM,
    PlausibilityRate,
    PooledEncoderFeatures,
    SelfConsistencyDice,
    make_fid_kid,
)
from tests.metrics.synthetic import CLASS_NAMES, random_encoder, synthetic_images, synthetic_masks

WORLD_SIZE = 2
NUM_CLASSES = len(CLASS_NAMES)


def dataset() -> dict[str, torch.Tensor]:
    real_masks, fake_masks = synthetic_masks(40, seed=0), synthetic_masks(40, seed=1)
    fake_masks[:8] = fake_masks[:8, :, ::-1]  # some implausible samples
    return {"real_masks": torch.from_numpy(real_masks), "fake_masks": torch.from_numpy(fake_masks.copy()),
            "head_masks": torch.from_numpy(np.roll(fake_masks, 1, axis=2)),
            "real_images": synthetic_images(real_masks, seed=0), "fake_images": synthetic_images(fake_masks, seed=1)}


def evaluate(rules: AnatomyRules, data: dict[str, torch.Tensor], part: slice) -> dict[str, object]:
    """Update every metric with ``part`` of the data and compute (synced when distributed)."""
    plausibility = PlausibilityRate(rules)
    fsd, wasserstein = FrechetSegmentationDistance(NUM_CLASSES), AreaWasserstein(NUM_CLASSES)
    dice, diversity, memorisation = SelfConsistencyDice(NUM_CLASSES), PairwiseMSSSIM(max_pairs=50), Memorisation()
    realism = make_fid_kid(PooledEncoderFeatures(random_encoder(), 32), kid_subset_size=20, kid_subsets=5)
    for start in range(part.start, part.stop, 10):  # several updates per rank
        batch = {key: value[start:min(start + 10, part.stop)] for key, value in data.items()}
        plausibility.update(batch["fake_masks"])
        dice.update(batch["head_masks"], batch["fake_masks"])
        diversity.update(batch["fake_images"])
        for metric in (fsd, wasserstein):
            metric.update(batch["real_masks"], real=True)
            metric.update(batch["fake_masks"], real=False)
        for metric in (memorisation, realism.fid, realism.kid):
            metric.update(batch["real_images"], real=True)
            metric.update(batch["fake_images"], real=False)
    return {"plausibility": plausibility.compute(), "violations": plausibility.violation_rates(),
            "passed": plausibility.per_sample(), "fsd": fsd.compute(), "w1": wasserstein.compute()[1],
            "dice": dice.compute(), "dice_per_sample": dice.per_sample(), "diversity": diversity.compute(),
            "memorisation": memorisation.per_sample(), "fid": realism.fid.compute(),
            "kid": realism.kid.compute()[0]}


def _worker(rank: int, port: int, rules: AnatomyRules, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        data = dataset()
        half = len(data["real_masks"]) // WORLD_SIZE
        part = slice(rank * half, (rank + 1) * half)
        results = evaluate(rules, data, part)
        local = PlausibilityRate(rules, sync_on_compute=False)
        local.update(data["fake_masks"][part])
        results["local_passed"] = local.per_sample()
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_same(actual: object, expected: object, key: str) -> None:
    if isinstance(expected, dict):
        for name in expected:
            assert actual[name] == pytest.approx(expected[name], abs=1e-6), f"{key}/{name}"
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-12, msg=key)


@pytest.mark.ddp
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    rules = AnatomyRules.fit(synthetic_masks(300, seed=5), CLASS_NAMES)
    data = dataset()
    expected = evaluate(rules, data, slice(0, len(data["real_masks"])))
    assert 0 < expected["plausibility"] < 1
    mp.spawn(_worker, args=(_free_port(), rules, str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    for rank in range(WORLD_SIZE):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for key, value in expected.items():
            _assert_same(results[key], value, f"rank {rank}: {key}")
        half = len(data["real_masks"]) // WORLD_SIZE
        torch.testing.assert_close(results["local_passed"], expected["passed"][rank * half:(rank + 1) * half])
