"""What every task shares: non-finite losses skipped then stopped, checkpoints that must fit,
and an interrupted ``predict`` that leaves only complete files."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from monai.networks.nets import AutoencoderKL
from torch.utils.data import DataLoader

from anatldm.cli import SIGTERM_EXIT_CODE, main
from anatldm.data.phantoms import BREAST_MRI_CLASSES
from anatldm.errors import ConfigError
from anatldm.models.autoencoder_bundle import save_autoencoder_bundle
from anatldm.trainers import AutoencoderTask, SegmenterTask
from tests.test_resume import terminate_when, write_config

ANATLDM = str(Path(sys.executable).parent / "anatldm")


def batches(nan_at: int, count: int = 4) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    made = []
    for index in range(count):
        image = torch.rand(2, 1, 32, 32, generator=generator) * 2 - 1
        if index == nan_at:
            image[0, 0, 3, 3] = float("nan")  # one bad pixel, as a corrupt slice would have
        made.append({"image": image, "mask": torch.randint(0, 3, (2, 32, 32), generator=generator)})
    return made


class Snapshots(Callback):
    """The module's full state (parameters and buffers) after every training batch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


@pytest.mark.parametrize("task", [
    SegmenterTask(num_classes=3, channels=(8, 16), strides=(2,)),
    AutoencoderTask(channels=(8, 16), norm_num_groups=4, latent_channels=3, num_res_blocks=1, discriminator_channels=8,
                    discriminator_layers=2, adversarial_warmup_steps=0),
], ids=["segmenter", "autoencoder"])
def test_nonfinite_step_is_skipped_with_a_warning_and_a_count(task, caplog: pytest.LogCaptureFixture) -> None:
    snapshots = Snapshots()
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[snapshots])
    # without a data module the autoencoder's export at the end of fit fails, after the steps checked here
    export_fails = pytest.raises(ConfigError, match="scale factor") if isinstance(task, AutoencoderTask) \
        else contextlib.nullcontext()
    with caplog.at_level(logging.WARNING, logger="anatldm"), export_fails:
        trainer.fit(task, train_dataloaders=DataLoader(batches(nan_at=1), batch_size=None))
    before, skipped, after = snapshots.states[0], snapshots.states[1], snapshots.states[2]
    assert all(torch.equal(before[k], skipped[k]) for k in before)  # no update, BatchNorm statistics restored
    assert any(not torch.equal(skipped[k], after[k]) for k in skipped)  # the next good batch trains again
    assert all(torch.isfinite(v).all() for v in snapshots.states[-1].values() if v.is_floating_point())
    assert "non-finite loss" in caplog.text and "step skipped" in caplog.text
    assert trainer.callback_metrics["train/nonfinite_steps"] == 1
    if isinstance(task, AutoencoderTask):
        assert task.generator_steps == 3  # the skipped batch does not count
    assert task.nonfinite_steps == 1 and task.consecutive_nonfinite_steps == 0


def test_consecutive_nonfinite_steps_stop_the_run_and_keep_the_last_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path, "segmenter", tmp_path / "cache", max_epochs=1)
    main(["fit", "--config", str(config)])
    last = tmp_path / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    for images in (tmp_path / "cache").glob("slices-*/images.npy"):  # the real input turns bad
        array = np.load(images, mmap_mode="r+")
        array[:] = np.nan
        array.flush()
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_epochs", "3",
              "--model.init_args.max_nonfinite_steps", "2"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("anatldm: error: training stopped at step ") and \
        ": 2 steps in a row had a non-finite loss" in error
    assert "max_nonfinite_steps=2" in error and str(last) in error
    assert last.read_bytes() == good


@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> tuple[Path, Path]:
    """A one-epoch tiny LDM checkpoint and a private copy of the bundle it was trained with."""
    root = tmp_path_factory.mktemp("ldm-run")
    bundle = root / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    config = write_config(root, "ldm", root / "cache", bundle, max_epochs=1, limit_train_batches=1)
    main(["fit", "--config", str(config)])
    return root / "checkpoints" / "last.ckpt", bundle


def sample_config(path: Path, checkpoint: Path, bundle: Path, out: Path, num_samples: int, steps: int) -> Path:
    path.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "default_root_dir": str(path.parent),
                    "enable_progress_bar": False,
                    "callbacks": [{"class_path": "SampleWriter", "init_args": {"output_dir": str(out)}}]},
        "model": {"class_path": "AnatomicalLDMTask",
                  "init_args": {"autoencoder": str(bundle), "sampling": {"sampler": "ddpm", "num_inference_steps": steps}}},
        "data": {"class_path": "SampleSeeds", "init_args": {"num_samples": num_samples, "batch_size": 1}},
        "ckpt_path": str(checkpoint),
    }))
    return path


def test_sigterm_during_predict_leaves_only_complete_files(tmp_path: Path, ldm_run: tuple[Path, Path]) -> None:
    checkpoint, bundle = ldm_run
    out = tmp_path / "samples"
    config = sample_config(tmp_path / "sample.yaml", checkpoint, bundle, out, num_samples=100, steps=50)
    process = subprocess.Popen([ANATLDM, "predict", "--config", str(config)], stderr=subprocess.PIPE, text=True,
                               encoding="utf-8", errors="replace")
    stderr = terminate_when(process, lambda: bool(list(out.glob("sample_*_label.nii.gz"))))
    assert process.returncode == SIGTERM_EXIT_CODE, stderr[-2000:]
    written = sorted(out.glob("sample_*.nii.gz"))
    assert 0 < len(written) < 400
    for path in written:
        assert nib.load(path).get_fdata().shape == (32, 32, 1)  # every file is complete
    assert not [p.name for p in out.iterdir() if "partial" in p.name or p.name.startswith(".")]


def test_checkpoint_of_another_architecture_fails_in_one_line(tmp_path: Path, ldm_run: tuple[Path, Path],
                                                              capsys: pytest.CaptureFixture) -> None:
    checkpoint, trained_bundle = ldm_run
    bundle = tmp_path / "bundle"  # the export folder overwritten by an autoencoder for another data set
    shutil.copytree(trained_bundle, bundle)
    moved = tmp_path / "model.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["autoencoder"] = str(bundle)
    torch.save(state, moved)
    config = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [8, 16], "latent_channels": 4,
              "num_res_blocks": 1, "norm_num_groups": 8, "attention_levels": [False, False],
              "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}
    save_autoencoder_bundle(bundle, AutoencoderKL(**config), config, 1.0, {"preset": "mri"}, BREAST_MRI_CLASSES,
                            (32, 32))
    sample = sample_config(tmp_path / "sample.yaml", moved, bundle, tmp_path / "out", num_samples=1, steps=1)
    with pytest.raises(SystemExit) as failed:
        main(["predict", "--config", str(sample)])
    assert failed.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"anatldm: error: {moved} does not fit the AnatomicalLDMTask")
    assert "with another shape (e.g. denoiser.head." in error[0] and "(6," in error[0] and "(4," in error[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("sample_*"))
