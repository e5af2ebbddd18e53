"""Resuming every training stage through the real CLI: an interrupted run continued with
``--ckpt_path last`` ends with the same tensors as an uninterrupted one; SIGTERM saves first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from anatldm.cli import SIGTERM_EXIT_CODE, main
from anatldm.resume import step_seed

ANATLDM = str(Path(sys.executable).parent / "anatldm")
TINY_DATA = {"source": "phantom", "num_subjects": 4, "num_slices": 8, "image_size": 32, "batch_size": 4,
             "num_workers": 0, "split_fractions": [0.5, 0.25, 0.25], "min_foreground": 0.0, "augment": True}
MODELS = {
    "segmenter": {"class_path": "SegmenterTask",
                  "init_args": {"num_classes": 6, "channels": [8, 16, 32], "strides": [2, 2], "dropout": 0.1}},
    "autoencoder": {"class_path": "AutoencoderTask",
                    "init_args": {"channels": [8, 16], "norm_num_groups": 4, "latent_channels": 3,
                                  "num_res_blocks": 1, "discriminator_channels": 8, "discriminator_layers": 2,
                                  "adversarial_warmup_steps": 2, "scale_factor_batches": 2, "lr_schedule": "cosine"}},
    "ldm": {"class_path": "AnatomicalLDMTask",
            "init_args": {"denoiser": {"channels": [16, 32], "attention_levels": [False, True], "norm_num_groups": 8,
                                       "num_head_channels": 8,
                                       "registers": {"num_registers": 4, "dim": 16, "levels": [0, 1]},
                                       "head": {"levels": [0, 1], "channels": 16}},
                          "training": {"preview_every_n_epochs": 0}, "anatomy_loss": {"warmup_fraction": 0.3}}},
}


class SimulatedCrash(RuntimeError):
    """Raised by :class:`CrashAtEpoch`: the process dies after a checkpoint was written."""


class CrashAtEpoch(Callback):
    """Kill the run (an exception, as a crash would) when ``epoch`` starts."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise SimulatedCrash(f"simulated crash at the start of epoch {self.epoch}")


def write_config(root: Path, stage: str, cache_dir: Path, bundle: Path | None = None, crash_at: int | None = None,
                 max_epochs: int = 2, **trainer: object) -> Path:
    model = {**MODELS[stage], "init_args": dict(MODELS[stage]["init_args"])}
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(root / "checkpoints"), "save_last": True, "monitor": "step",
                                "mode": "max", "save_top_k": 2}}]
    if stage == "ldm":
        model["init_args"]["autoencoder"] = str(bundle)
        callbacks.insert(0, {"class_path": "anatldm.callbacks.EMAWeightAveraging",
                             "init_args": {"decay": 0.9}})
    if stage == "autoencoder":
        model["init_args"]["export_dir"] = str(root / "export")
    if crash_at is not None:
        callbacks.append({"class_path": f"{__name__}.CrashAtEpoch", "init_args": {"epoch": crash_at}})
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32", "max_epochs": max_epochs,
                    "default_root_dir": str(root), "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "limit_train_batches": 2, "limit_val_batches": 1,
                    "num_sanity_val_steps": 0, "callbacks": callbacks, **trainer},
        "model": model,
        "data": {"class_path": "AnatomyDataModule", "init_args": {**TINY_DATA, "cache_dir": str(cache_dir)}},
    }
    path = root / f"{stage}.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def tensors(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested checkpoint, by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {}
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found |= tensors(value, f"{prefix}/{key}")
    return found


def compared_state(path: Path) -> dict[str, torch.Tensor]:
    """Model (EMA where used), current weights, optimizer and EMA state of a checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    kept = {key: checkpoint[key] for key in ("state_dict", "optimizer_states", "current_model_state",
                                             "averaging_state") if key in checkpoint}
    kept["callbacks"] = {name: state for name, state in checkpoint["callbacks"].items() if "Averaging" in name}
    found = tensors(kept)
    found["global_step"] = torch.tensor(checkpoint["global_step"])
    found["epoch"] = torch.tensor(checkpoint["epoch"])
    return found


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resume-cache")


@pytest.mark.parametrize("stage", ["segmenter", "autoencoder", "ldm"])
def test_interrupted_and_resumed_run_ends_bit_identical(stage: str, tmp_path: Path, shared_cache: Path,
                                                        tiny_bundle: Path) -> None:
    straight = write_config(tmp_path / "straight", stage, shared_cache, tiny_bundle)
    main(["fit", "--config", str(straight)])

    crashed = write_config(tmp_path / "resumed", stage, shared_cache, tiny_bundle, crash_at=1)
    with pytest.raises(SimulatedCrash):
        main(["fit", "--config", str(crashed)])
    checkpoints = tmp_path / "resumed" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 0  # only epoch 0 survived
    resumed = write_config(tmp_path / "resumed", stage, shared_cache, tiny_bundle)
    main(["fit", "--config", str(resumed), "--ckpt_path", "last"])

    expected = compared_state(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    got = compared_state(checkpoints / "last.ckpt")
    assert sorted(got) == sorted(expected)
    assert int(expected["global_step"]) > 2  # the second epoch really ran
    differences = {name: (got[name].double() - expected[name].double()).abs().max().item()
                   for name in expected if expected[name].numel()}
    assert max(differences.values()) == 0.0, {k: v for k, v in differences.items() if v}
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]  # no temporary file left
    if stage == "ldm":
        assert any(name.startswith("/current_model_state") for name in got)  # EMA and live weights compared
    if stage == "autoencoder":
        assert (tmp_path / "resumed" / "export" / "autoencoder.json").is_file()


def terminate_when(process: subprocess.Popen, ready, settle: float = 0.0, poll: float = 0.05) -> str:
    """Send SIGTERM to ``process`` once ``ready()`` holds (and ``settle`` seconds more); its stderr."""
    try:
        deadline = time.monotonic() + 120
        while not ready() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(poll)
        assert ready(), process.communicate(timeout=30)[1][-2000:]
        time.sleep(settle)
        process.send_signal(signal.SIGTERM)
        return process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()


def test_step_seed_depends_only_on_its_arguments() -> None:
    assert step_seed(0, 1, 2, 0) == step_seed(0, 1, 2, 0)
    assert len({step_seed(0, 1, 2, 0), step_seed(0, 1, 3, 0), step_seed(0, 2, 2, 0), step_seed(0, 1, 2, 1),
                step_seed(1, 1, 2, 0), step_seed(0, 1, -1, 0)}) == 6


def test_sigterm_saves_last_checkpoint_and_resume_continues(tmp_path: Path, shared_cache: Path) -> None:
    config = write_config(tmp_path, "segmenter", shared_cache, max_epochs=1000)
    last = tmp_path / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([ANATLDM, "fit", "--config", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stderr = terminate_when(process, last.is_file, settle=1.0)  # a second into a later epoch
    assert process.returncode == SIGTERM_EXIT_CODE, stderr[-2000:]
    assert "stopped by SIGTERM; resume with" in stderr and "--ckpt_path last" in stderr
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert "SIGTERM: saved" in stderr and saved["global_step"] > 0
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")]
    main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_epochs", str(saved["epoch"] + 2)])
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] > saved["global_step"]
