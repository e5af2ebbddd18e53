"""The anatomy / diffusion gradient ratio read back from a run's TensorBoard logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from anatldm.evaluation.report import markdown_report
from anatldm.evaluation.statistics import METRICS
from anatldm.evaluation.training_logs import gradient_balance


def _run(tmp_path: Path, anatomy: list[float], diffusion: list[float], every: int = 10) -> Path:
    """A fake run folder as Lightning lays it out: tensorboard/version_0 events + checkpoints/last.ckpt."""
    writer = SummaryWriter(str(tmp_path / "tensorboard" / "version_0"))
    for k, (a, d) in enumerate(zip(anatomy, diffusion, strict=True)):
        writer.add_scalar("train/grad_norm_anatomy_loss", a, k * every)
        writer.add_scalar("train/grad_norm_diffusion_loss", d, k * every)
    writer.add_scalar("train/clipped", 1.0, 0)
    writer.add_scalar("train/clipped", 0.25, (len(anatomy) - 1) * every)
    writer.close()
    (tmp_path / "checkpoints").mkdir()
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(b"not read")
    return checkpoint


def test_ratio_at_fractions_of_training(tmp_path: Path) -> None:
    anatomy = [24.0, 8.0, 4.0, 2.0, 1.5]  # steps 0, 10, 20, 30, 40
    diffusion = [1.0, 1.0, 2.0, 1.0, 1.0]
    balance = gradient_balance(_run(tmp_path, anatomy, diffusion))
    assert balance["ratio_at"]["0%"] == pytest.approx(24.0)
    assert balance["ratio_at"]["50%"] == pytest.approx(2.0)  # step 20: 4 / 2
    assert balance["ratio_at"]["100%"] == pytest.approx(1.5)
    assert balance["max"] == pytest.approx(24.0) and balance["steps_logged"] == 5 and balance["last_step"] == 40
    assert balance["clipped_share_at"]["0%"] == 1.0 and balance["clipped_share_at"]["100%"] == 0.25
    table = markdown_report(_minimal_report({"register": {"gradient_balance": balance}}), METRICS)
    assert "| register | 24.00 (100%) |" in table and "gradient-norm ratio over training" in table


def test_no_logs_or_no_anatomy_term_is_none(tmp_path: Path) -> None:
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    assert gradient_balance(checkpoint) is None  # no event file beside it
    assert gradient_balance(tmp_path / "missing.ckpt") is None
    writer = SummaryWriter(str(tmp_path / "run" / "tensorboard" / "version_0"))
    writer.add_scalar("train/grad_norm_diffusion_loss", 1.0, 0)  # a baseline: no anatomy term
    writer.close()
    assert gradient_balance(checkpoint) is None


def _minimal_report(results: dict) -> dict:
    interval = {"value": 0.9, "low": 0.85, "high": 0.95}
    return {"gate": {"passed": True, "thresholds": {"min_judge_dice": 0.85, "min_real_pass_rate": 0.9,
                                                     "max_negative_pass_rate": 0.3},
                     "real_pass_rate": 0.9, "real_pass_rate_interval": interval, "controls": {},
                     "early_checkpoint": {}, "judge_dice": {"liver": 0.9}},
            "confidence": 0.95, "num_samples_per_model": 4, "sampler": "ddim", "num_inference_steps": 5, "seed": 0,
            "num_real_test_slices": 4, "feature_source": "judge", "arms": {}, "baseline": None, "pairs": [],
            "results": results, "real_test": {}, "rules_source": "test"}
