"""Checkpoints and configs of the previous, flat ``AnatomicalLDMTask`` layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from anatldm.cli import main
from anatldm.trainers import AnatomicalLDMTask
from anatldm.trainers.base import load_task
from anatldm.trainers.flat_layout import FLAT_TO_NESTED, is_flat_layout, nest_flat_hyperparameters

FIXTURE = Path(__file__).parents[1] / "fixtures" / "legacy_ldm"
ANATLDM = str(Path(sys.executable).parent / "anatldm")


@pytest.fixture
def flat_checkpoint(tiny_bundle: Path, tmp_path: Path) -> Path:
    """The frozen flat-layout checkpoint, naming this session's copy of its autoencoder bundle
    (the same recipe; the checkpoint holds the autoencoder's weights and scale factor anyway)."""
    checkpoint = torch.load(FIXTURE / "flat.ckpt", map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["autoencoder"] = str(tiny_bundle)
    torch.save(checkpoint, tmp_path / "flat.ckpt")
    return tmp_path / "flat.ckpt"


def test_every_flat_argument_has_one_nested_key() -> None:
    flat = torch.load(FIXTURE / "expected.pt", weights_only=True)["hyper_parameters"]
    arguments = {name for name in flat if not name.startswith("_")} | {
        "sampler", "num_inference_steps", "register_edits", "anatomy_edits", "registers_per_class", "association",
        "association_samples", "attention_steps"}  # inference-only: never in a checkpoint
    assert len(arguments) == 46 and arguments - set(FLAT_TO_NESTED) == {"autoencoder", "lr", "weight_decay"}
    assert len(set(FLAT_TO_NESTED.values())) == len(FLAT_TO_NESTED)  # no two old names on one new key


def test_nesting_moves_every_flat_name_to_its_group() -> None:
    nested = nest_flat_hyperparameters({"_class_path": "anatldm.trainers.AnatomicalLDMTask", "autoencoder": "a",
                                        "num_registers": 6, "register_dim": 16, "head_levels": [0, 1],
                                        "anatomy_weight": 2.0, "min_snr_gamma": None, "lr": 0.05,
                                        "cache_latents": True, "sampler": "ddpm"})
    assert nested == {"_class_path": "anatldm.trainers.AnatomicalLDMTask", "autoencoder": "a",
                      "denoiser": {"registers": {"num_registers": 6, "dim": 16}, "head": {"levels": [0, 1]}},
                      "anatomy_loss": {"weight": 2.0}, "noise_schedule": {"min_snr_gamma": None}, "lr": 0.05,
                      "training": {"cache_latents": True}, "sampling": {"sampler": "ddpm"}}
    assert is_flat_layout({"anatomy_weight": 1.0}) and not is_flat_layout(nested)


def test_a_flat_checkpoint_samples_bit_identically(flat_checkpoint: Path) -> None:
    """Samples of today's code equal those the flat-layout code drew from the same checkpoint.

    The fixture was drawn on one CPU thread; float sums depend on the thread count, so the
    comparison runs on one thread too (``make test`` runs on all cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _compare_with_the_fixture(flat_checkpoint)
    finally:
        torch.set_num_threads(threads)


def _compare_with_the_fixture(flat_checkpoint: Path) -> None:
    expected = torch.load(FIXTURE / "expected.pt", weights_only=True)
    task = load_task(AnatomicalLDMTask, str(flat_checkpoint), "ckpt_path").eval()
    registers = task.denoiser_config.registers
    assert (registers.num_registers, registers.mode, registers.supervised_per_class) == (6, "read_write", 1)
    assert task.anatomy_loss_config.weight_min == 0.25 and task.hparams.lr == 0.05
    out = task.pipeline.generate([0, 1, 2])
    assert torch.equal(out.images, expected["ddim"]["image"]) and torch.equal(out.masks, expected["ddim"]["mask"])
    out = task.pipeline.generate([0, 1, 2], sampler="ddpm",
                                 register_edits=[{"operation": "scale", "registers": [1, 2], "factor": 2.0}])
    assert torch.equal(out.images, expected["ddpm_scaled_1_2"]["image"])
    assert torch.equal(out.masks, expected["ddpm_scaled_1_2"]["mask"])


def test_anatldm_predict_reads_a_flat_checkpoint(flat_checkpoint: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """``anatldm predict`` takes the architecture of a flat checkpoint, as it did."""
    out = tmp_path / "samples"
    (tmp_path / "sample.yaml").write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "SampleWriter", "init_args": {"output_dir": str(out)}}]},
        "model": {"class_path": "AnatomicalLDMTask", "init_args": {"autoencoder": str(tiny_bundle)}},
        "data": {"class_path": "SampleSeeds", "init_args": {"num_samples": 3, "batch_size": 2, "seed": 0}},
        "ckpt_path": str(flat_checkpoint)}))
    main(["predict", "--config", str(tmp_path / "sample.yaml")])
    expected = torch.load(FIXTURE / "expected.pt", weights_only=True)["ddim"]["mask"]
    for seed in range(3):
        label = np.asarray(nib.load(out / f"sample_{seed:06d}_label.nii.gz").dataobj)[:, ::-1, 0].T  # RAS -> display
        assert np.array_equal(label, expected[seed].numpy())


@pytest.mark.parametrize("where", ["file", "file_without_init_args", "command_line"])
def test_an_old_flat_key_names_its_new_key(tiny_bundle: Path, tmp_path: Path, where: str) -> None:
    model = {"autoencoder": str(tiny_bundle)}
    if where == "file":
        model = {"class_path": "AnatomicalLDMTask", "init_args": {**model, "anatomy_weight": 1.0}}
    elif where == "file_without_init_args":
        model = {"class_path": "AnatomicalLDMTask", **model, "anatomy_weight": 1.0}
    else:
        model = {"class_path": "AnatomicalLDMTask", "init_args": model}
    (tmp_path / "ldm.yaml").write_text(yaml.safe_dump({"model": model, "trainer": {"accelerator": "cpu"}}))
    extra = ["--model.init_args.anatomy_weight", "1.0"] if where == "command_line" else []
    result = subprocess.run([ANATLDM, "fit", "--config", str(tmp_path / "ldm.yaml"), *extra], capture_output=True,
                            encoding="utf-8", errors="replace", timeout=300)
    prefix = "model" if where == "file_without_init_args" else "model.init_args"
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"anatldm: error: {prefix}.anatomy_weight moved to {prefix}.anatomy_loss.weight")
