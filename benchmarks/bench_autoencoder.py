"""Autoencoder stage at the quickstart size: train-step time and peak memory, on this machine.

    python benchmarks/bench_autoencoder.py

Builds the model and data of ``configs/quickstart/vae.yaml`` (64x64 phantom slices), runs
training steps through a real ``Trainer`` and times each step from batch start to batch end
(data loading excluded): first the warm-up steps (autoencoder only), then steps with the
discriminator on. Peak memory is the rise of the process's resident set size (Linux
``VmHWM``, reset before the timed steps) over its size when they start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything

from anatldm.datamodules import AnatomyDataModule
from anatldm.trainers import AutoencoderTask

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart" / "vae.yaml"
SKIPPED_STEPS = 3  # first steps pay for allocator growth and oneDNN kernel selection
STEPS_PER_PHASE = 20


def _status_kib(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class _StepTimer(Callback):
    """Wall time of each training step, and the peak RSS rise after the skipped steps."""

    def __init__(self) -> None:
        self.times: list[tuple[bool, float]] = []  # (discriminator on, seconds)
        self.rss_start_kib: int | None = None
        self.peak_reset = False

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == SKIPPED_STEPS:
            self.peak_reset = _reset_peak_rss()
            self.rss_start_kib = _status_kib("VmRSS")
        self._adversarial = module.adversarial_active
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx >= SKIPPED_STEPS:
            self.times.append((self._adversarial, time.perf_counter() - self._start))


def run() -> list[dict]:
    """Rows ``{"benchmark", "value", "unit", "note"}`` for the quickstart autoencoder."""
    config = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    data_args = {**config["data"]["init_args"], "num_workers": 0}
    model_args = {**config["model"]["init_args"], "adversarial_warmup_steps": SKIPPED_STEPS + STEPS_PER_PHASE,
                  "scale_factor_batches": 1}
    seed_everything(0)
    timer = _StepTimer()
    with tempfile.TemporaryDirectory() as scratch:
        task = AutoencoderTask(**{**model_args, "export_dir": scratch})
        datamodule = AnatomyDataModule(**data_args)
        trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1,
                          limit_train_batches=SKIPPED_STEPS + 2 * STEPS_PER_PHASE, limit_val_batches=0,
                          logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[timer], default_root_dir=scratch)
        trainer.fit(task, datamodule=datamodule)
    peak_kib, start_kib = _status_kib("VmHWM"), timer.rss_start_kib
    generator_only = [t for adversarial, t in timer.times if not adversarial]
    with_discriminator = [t for adversarial, t in timer.times if adversarial]
    batch_size, image_size = data_args["batch_size"], data_args["image_size"]
    setting = (f"batch {batch_size} x 1x{image_size}x{image_size}, channels {model_args['channels']}, "
               f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, CPU fp32")
    rows = [
        {"benchmark": "autoencoder_train_step_reconstruction", "value": 1e3 * statistics.median(generator_only),
         "unit": "ms", "note": f"median of {len(generator_only)} steps, L1 + KL only (warm-up); {setting}"},
        {"benchmark": "autoencoder_train_step_adversarial", "value": 1e3 * statistics.median(with_discriminator),
         "unit": "ms", "note": f"median of {len(with_discriminator)} steps, with the PatchGAN step; {setting}"},
    ]
    if timer.peak_reset and peak_kib is not None and start_kib is not None:
        rows.append({"benchmark": "autoencoder_train_peak_rss_delta", "value": (peak_kib - start_kib) / 1024,
                     "unit": "MiB", "note": f"VmHWM rise over VmRSS during the timed steps; {setting}"})
    return rows


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for row in run():
        sys.stdout.write(f"{row['benchmark']:<40} {row['value']:>10.1f} {row['unit']:<4} {row['note']}\n")
