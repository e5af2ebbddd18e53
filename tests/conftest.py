"""Shared fixtures: tiny labelled volumes written as NIfTI by the test itself."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine), path)
    return path


def labelled_volume(seed: int, shape=(20, 18, 6)) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in HU with a bright disc (class 1) and a dark square (class 2)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    label = np.zeros(shape, dtype=np.uint8)
    disc = (x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 < (shape[0] / 4) ** 2
    label[disc, 1:-1] = 1
    label[1:4, 1:4, 2:] = 2
    image = rng.normal(0, 10, shape).astype(np.float32) - 100
    image[label == 1] += 250
    image[label == 2] -= 400
    return image, label


@pytest.fixture
def volume_folder(tmp_path: Path) -> Path:
    """``images/`` + ``labels/`` with four subjects and a ``classes.json``."""
    root = tmp_path / "dataset"
    for index in range(4):
        image, label = labelled_volume(index)
        write_nifti(root / "images" / f"case{index}.nii.gz", image)
        write_nifti(root / "labels" / f"case{index}.nii.gz", label)
    (root / "classes.json").write_text(json.dumps(["background", "disc", "square"]))
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) autoencoder export bundle: 1x32x32 CT-phantom slices -> 4x16x16 latents."""
    import torch
    from monai.networks.nets import AutoencoderKL

    from anatldm.data.phantoms import CT_ABDOMEN_CLASSES
    from anatldm.models.autoencoder_bundle import save_autoencoder_bundle

    config = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [8, 16], "latent_channels": 4,
              "num_res_blocks": 1, "norm_num_groups": 8, "attention_levels": [False, False],
              "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bundle")
    save_autoencoder_bundle(folder, AutoencoderKL(**config), config, 1.3,
                            {"preset": "ct", "ct_window": [400.0, 40.0], "spacing": None}, CT_ABDOMEN_CLASSES, (32, 32))
    return folder


def _fit_tiny_stage(root: Path, name: str, model: dict) -> Path:
    """Two training steps of one stage through the real CLI; returns its ``last.ckpt``."""
    import yaml

    from anatldm.cli import main
    from tests.conf import TINY_DATA

    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "max_steps": 2, "limit_val_batches": 1,
                    "default_root_dir": str(root / name),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / name), "save_last": True}}]},
        "model": model,
        "data": {"class_path": "AnatomyDataModule", "init_args": {**TINY_DATA, "cache_dir": str(root / "cache")}},
    }))
    main(["fit", "--config", str(config)])
    return root / name / "last.ckpt"


@pytest.fixture(scope="session")
def stage_checkpoints(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints of every later stage, trained once per session on phantom slices.

    ``register`` (LDM with 4 registers and the head), ``baseline`` (no registers, no head),
    ``segmenter`` (6 CT-phantom classes); ``root`` holds their phantom data and slice cache.
    """
    from tests.conf import ldm_args

    root = tmp_path_factory.mktemp("stages")
    ldm = {"autoencoder": str(tiny_bundle), **ldm_args(training__preview_every_n_epochs=0)}
    return {
        "register": _fit_tiny_stage(root, "register", {"class_path": "AnatomicalLDMTask",
                                                       "init_args": ldm_args(ldm, denoiser__registers__num_registers=4)}),
        "baseline": _fit_tiny_stage(root, "baseline", {"class_path": "AnatomicalLDMTask",
                                                       "init_args": ldm_args(ldm, denoiser__registers__num_registers=0,
                                                                                     anatomy_loss__weight=0.0)}),
        "segmenter": _fit_tiny_stage(root, "segmenter", {"class_path": "SegmenterTask", "init_args": {
            "num_classes": 6, "channels": [8, 16, 32], "strides": [2, 2]}}),
        "root": root,
    }


@pytest.fixture(autouse=True, scope="session")
def _run_outside_the_repository(tmp_path_factory: pytest.TempPathFactory):
    """Tests run in a scratch folder: a stray relative path can never write into the checkout."""
    import os

    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)
