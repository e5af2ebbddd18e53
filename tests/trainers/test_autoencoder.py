"""AutoencoderTask: losses on random tensors, then the real CLI on tiny phantom data."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from anatldm.errors import ConfigError
from anatldm.losses import kl_divergence
from anatldm.models.autoencoder_bundle import BUNDLE_CONFIG, BUNDLE_WEIGHTS, load_autoencoder_bundle
from anatldm.trainers import AutoencoderTask
from anatldm.visualize import reconstruction_grid
from tests.conf import VAE_DATA as TINY_DATA
from tests.conf import VAE_MODEL as TINY_MODEL

ANATLDM = str(Path(sys.executable).parent / "anatldm")


# -- networks and losses on random tensors ----------------------------------------------------
@pytest.mark.parametrize(("spatial_dims", "shape"), [(2, (2, 1, 32, 32)), (3, (1, 1, 16, 16, 16))])
def test_losses_and_shapes(spatial_dims: int, shape: tuple[int, ...]) -> None:
    task = AutoencoderTask(spatial_dims=spatial_dims, **TINY_MODEL)
    images = torch.rand(shape) * 2 - 1
    reconstruction, z_mu, z_sigma = task.autoencoder(images)
    assert reconstruction.shape == shape
    assert z_mu.shape == (shape[0], 3, *(s // 2 for s in shape[2:]))
    losses = task._generator_losses(images, reconstruction, z_mu, z_sigma, adversarial=True)
    assert set(losses) == {"reconstruction", "kl", "generator_adversarial", "loss"}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(p.grad is not None for p in task.autoencoder.encoder.parameters())
    assert task._discriminator_loss(images, reconstruction.detach()) > 0
    grid = reconstruction_grid(images, reconstruction, max_images=2)
    assert grid.shape == (1, min(2, shape[0]) * shape[2], 3 * shape[3]) and 0 <= grid.min() and grid.max() <= 1


def test_kl_is_zero_for_the_prior_and_float32_under_bf16() -> None:
    z_mu, z_sigma = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert kl_divergence(z_mu, z_sigma) == 0
    value = kl_divergence(torch.ones(2, 3, 4, 4, dtype=torch.bfloat16), z_sigma.bfloat16())
    assert value.dtype == torch.float32 and value == pytest.approx(0.5 * 3 * 16)


def test_no_discriminator_without_adversarial_weight() -> None:
    task = AutoencoderTask(**{**TINY_MODEL, "adv_weight": 0.0})
    assert task.discriminator is None and len(task.configure_optimizers()) == 1


@pytest.mark.parametrize(("overrides", "message"), [
    ({"channels": [8, 18]}, "must all be divisible by model.init_args.norm_num_groups=4"),
    ({"attention_levels": [False]}, "attention_levels needs one entry per level"),
    ({"kl_weight": -1.0}, "kl_weight must be a non-negative number"),
    ({"scale_factor_batches": 0}, "scale_factor_batches must be at least 1"),
    ({"perceptual_weights_path": "/no/such/resnet50.pth"}, "is not a file"),
])
def test_bad_arguments_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AutoencoderTask(**{**TINY_MODEL, **overrides})


# -- the real CLI and Trainer on tiny phantom data ------------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One phantom data set and slice cache for every test of this module."""
    return str(tmp_path_factory.mktemp("anatldm-cache"))


def write_config(path: Path, cache_dir: str, export_dir: Path, **model: object) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32", "max_epochs": 1,
                    "default_root_dir": str(path.parent / "run"), "enable_progress_bar": False,
                    "enable_model_summary": False, "limit_val_batches": 1},
        "model": {"class_path": "AutoencoderTask",
                  "init_args": {**TINY_MODEL, "export_dir": str(export_dir), **model}},
        "data": {"class_path": "AnatomyDataModule", "init_args": {**TINY_DATA, "cache_dir": cache_dir}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_fast_dev_run_exports_a_bundle(tmp_path: Path, cache_dir: str) -> None:
    from anatldm.cli import main

    config = write_config(tmp_path / "vae.yaml", cache_dir, tmp_path / "export")
    main(["fit", "--config", str(config), "--trainer.fast_dev_run", "2"])
    assert (tmp_path / "export" / BUNDLE_WEIGHTS).is_file()
    _, metadata = load_autoencoder_bundle(tmp_path / "export")
    assert metadata["scale_factor"] > 0 and metadata["trained_batches"] == 2
    assert metadata["class_names"][0] == "background" and metadata["image_size"] == [32, 32]
    assert metadata["normalization"]["preset"] == "ct" and metadata["downsampling_factor"] == 2


def test_bf16_mixed_fit_clips_gradients(tmp_path: Path, cache_dir: str) -> None:
    """The GPU configs' precision with gradient clipping (issue 23's dry run found it failing): no
    fused Adam under mixed precision, whose gradients Lightning's plugin refuses to clip."""
    from anatldm.cli import main

    config = write_config(tmp_path / "vae.yaml", cache_dir, tmp_path / "export", gradient_clip_val=1.0)
    main(["fit", "--config", str(config), "--trainer.fast_dev_run", "2", "--trainer.precision", "bf16-mixed"])
    assert (tmp_path / "export" / BUNDLE_WEIGHTS).is_file()


def test_export_import_latents_and_scale_factor(tmp_path: Path, cache_dir: str) -> None:
    from anatldm.datamodules import AnatomyDataModule

    seed_everything(0)
    datamodule = AnatomyDataModule(**{**TINY_DATA, "cache_dir": cache_dir})
    task = AutoencoderTask(**TINY_MODEL, export_dir=str(tmp_path / "export"), lr_schedule="cosine")
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=3, limit_val_batches=1,
                      logger=TensorBoardLogger(tmp_path, name="tb"), log_every_n_steps=1, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=datamodule)
    assert task.generator_steps == 6 and trainer.global_step == 1 + 2 * 5  # 2 optimiser steps after warm-up
    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents*"))))
    events.Reload()
    assert "val/input_reconstruction_difference" in events.Tags()["images"]
    assert {"val/psnr", "val/ssim", "train/l1", "train/discriminator"} <= set(events.Tags()["scalars"])
    # cosine decay over the 6 batches Lightning expects: the rate each batch used
    learning_rates = [event.value for event in events.Scalars("train/generator_lr")]
    assert learning_rates == pytest.approx([1e-4 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)])
    assert task.optimizers()[1].param_groups[0]["lr"] == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))
    loaded, metadata = load_autoencoder_bundle(tmp_path / "export" / BUNDLE_CONFIG)
    train = datamodule.datasets["train"]
    spread = np.unique(np.linspace(0, len(train) - 1, 9).round().astype(int))  # all subjects, not the first
    assert spread[0] == 0 and spread[-1] == len(train) - 1  # from the first subject to the last
    images = torch.stack([torch.from_numpy(train.cache.images[train.indices[i]].copy())[None] for i in spread])
    task.autoencoder.eval()
    with torch.no_grad():
        z_task, z_loaded = task.autoencoder.encode(images)[0], loaded.encode(images)[0]
    assert torch.equal(z_task, z_loaded)
    # the scale factor is 1/std over exactly scale_factor_batches * batch_size slices spread over the split
    assert metadata["scale_factor"] == pytest.approx(1 / z_loaded.double().std(unbiased=False).item(), rel=1e-6)


def run_anatldm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ANATLDM, *args], capture_output=True, encoding="utf-8", errors="replace", timeout=300)


@pytest.mark.ddp
def test_plain_ddp_with_a_discriminator_is_a_clear_error(tmp_path: Path, cache_dir: str) -> None:
    """DDP without unused-parameter detection fails inside DDP on the second step; say so up front."""
    config = write_config(tmp_path / "vae.yaml", cache_dir, tmp_path / "export")
    result = run_anatldm("fit", "--config", str(config), "--trainer.strategy", "ddp", "--trainer.max_steps", "1")
    assert result.returncode == 2, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("anatldm: error: trainer.strategy:") and "ddp_find_unused_parameters_true" in last_line
    assert "Traceback" not in result.stderr


def test_cli_rejects_an_unknown_key(tmp_path: Path, cache_dir: str, capsys: pytest.CaptureFixture) -> None:
    from anatldm.cli import main

    config = write_config(tmp_path / "vae.yaml", cache_dir, tmp_path / "export", kl_wieght=1e-6)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("anatldm: error:") and "kl_wieght" in err[-1]


def test_cli_reports_a_bad_value_in_one_line(tmp_path: Path, cache_dir: str, capsys: pytest.CaptureFixture) -> None:
    from anatldm.cli import main

    config = write_config(tmp_path / "vae.yaml", cache_dir, tmp_path / "export", norm_num_groups=3)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("anatldm: error: model.init_args.channels [8, 16] must all be divisible")


# -- the domain perceptual loss (model.init_args.anatomy_perceptual) --------------------------
ANATOMY_PERCEPTUAL = {"weight": 0.5, "num_classes": 6, "warmup_steps": 2, "channels": [4, 8]}


def test_anatomy_perceptual_segmenter_trains_during_its_warmup_then_scores_reconstructions(
        tmp_path: Path, cache_dir: str) -> None:
    from anatldm.datamodules import AnatomyDataModule

    seed_everything(0)
    datamodule = AnatomyDataModule(**{**TINY_DATA, "cache_dir": cache_dir})
    task = AutoencoderTask(**{**TINY_MODEL, "adversarial_warmup_steps": 100}, export_dir=str(tmp_path / "export"),
                           anatomy_perceptual=ANATOMY_PERCEPTUAL)
    assert len(task.configure_optimizers()) == 3  # generator, discriminator, segmenter
    snapshots = []

    class Snapshot(Callback):
        def on_train_batch_end(self, trainer, module, *args) -> None:
            snapshots.append([p.detach().clone() for p in module.anatomy_perceptual.segmenter.parameters()])

    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=4, limit_val_batches=1,
                      callbacks=[Snapshot()],
                      logger=TensorBoardLogger(tmp_path, name="tb"), log_every_n_steps=1, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    before = [p.detach().clone() for p in task.anatomy_perceptual.segmenter.parameters()]
    trainer.fit(task, datamodule=datamodule)
    moved = [any(not torch.equal(a, b) for a, b in zip(prev, snap, strict=True))
             for prev, snap in zip([before, *snapshots[:-1]], snapshots, strict=True)]
    assert moved == [True, True, False, False]  # trained for its 2 warm-up batches, then frozen
    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents*"))))
    events.Reload()
    assert [e.value for e in events.Scalars("train/anatomy_perceptual_on")] == [0.0, 0.0, 1.0, 1.0]
    assert events.Scalars("train/segmenter")[0].step == 0
    terms = events.Scalars("train/anatomy_perceptual")
    assert terms[0].step == 2 and all(event.value > 0 for event in terms)  # from the first batch after the warm-up
    assert (tmp_path / "export" / BUNDLE_WEIGHTS).is_file()
    loaded, _ = load_autoencoder_bundle(tmp_path / "export")  # the segmenter is not part of the bundle
    assert not any("segmenter" in name for name, _ in loaded.named_parameters())


def test_anatomy_perceptual_class_mismatch_is_one_error_and_no_run_folder(tmp_path: Path, cache_dir: str) -> None:
    config = write_config(tmp_path / "vae.yaml", cache_dir, tmp_path / "export",
                          anatomy_perceptual={**ANATOMY_PERCEPTUAL, "num_classes": 4})
    result = run_anatldm("fit", "--config", str(config), "--trainer.fast_dev_run", "1")
    assert result.returncode == 2, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("anatldm: error: model.anatomy_perceptual.num_classes is 4 but the data has 6")
    assert not (tmp_path / "run").exists() and not (tmp_path / "export").exists()
