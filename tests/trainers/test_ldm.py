"""AnatomicalLDMTask through the real CLI on tiny phantom data and a tiny autoencoder bundle."""

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
from anatldm.data.phantoms import CT_ABDOMEN_CLASSES
from anatldm.datamodules import AnatomyDataModule
from anatldm.errors import ConfigError
from anatldm.models.registers import RegisterEdit
from anatldm.trainers import AnatomicalLDMTask
from tests.conf import TINY_DATA, ldm_args

ANATLDM = str(Path(sys.executable).parent / "anatldm")



@pytest.fixture
def bundle(tiny_bundle: Path) -> Path:
    return tiny_bundle


def task(bundle: Path, **overrides) -> AnatomicalLDMTask:
    """The tiny task with 4 registers; ``overrides`` by path (``anatomy_loss__weight=0.0``)."""
    return AnatomicalLDMTask(autoencoder=str(bundle), **ldm_args(**{"denoiser__registers__num_registers": 4, **overrides}))


def write_config(path: Path, bundle: Path, root: Path, model: dict | None = None, **trainer) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "default_root_dir": str(root),
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(root), "name": "tb"}},
                    "callbacks": [{"class_path": "anatldm.callbacks.EMAWeightAveraging",
                                   "init_args": {"decay": 0.9}}], **trainer},
        "model": {"class_path": "AnatomicalLDMTask",
                  "init_args": {"autoencoder": str(bundle),
                                **ldm_args(**{"denoiser__registers__num_registers": 4, **(model or {})})}},
        "data": {"class_path": "AnatomyDataModule", "init_args": {**TINY_DATA, "cache_dir": str(root / "cache")}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_baseline_holds_no_register_or_head_parameter(bundle: Path) -> None:
    baseline = task(bundle, denoiser__registers__num_registers=0, anatomy_loss__weight=0.0)
    assert baseline.denoiser.registers is None and baseline.denoiser.head is None
    assert all(name.startswith("unet.") for name, _ in baseline.denoiser.named_parameters())
    full = task(bundle)
    assert full.denoiser.registers.tokens.shape == (4, 16) and full.denoiser.head is not None
    assert {n: p.shape for n, p in full.denoiser.unet.named_parameters()} == \
        {n: p.shape for n, p in baseline.denoiser.unet.named_parameters()}


@pytest.mark.parametrize("model", [{}, {"denoiser__registers__num_registers": 0, "anatomy_loss__weight": 0.0},
                                   {"noise_schedule__prediction_type": "v_prediction"},
                                   {"denoiser__registers__anatomy_conditioning": True,
                                    "denoiser__registers__self_condition_rate": 1.0,
                                    "denoiser__head__output_stride": 1, "denoiser__head__clean_fraction": 0.5},
                                   {"denoiser__head__output_stride": 1, "denoiser__head__clean_fraction": 0.5,
                                    "denoiser__head__image_features": True}])
def test_fast_dev_run_fit(bundle: Path, tmp_path: Path, model: dict) -> None:
    config = write_config(tmp_path / "ldm.yaml", bundle, tmp_path, model)
    main(["fit", "--config", str(config), "--trainer.fast_dev_run", "1"])


def test_fit_then_predict_writes_nifti_pairs(bundle: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ldm.yaml", bundle, tmp_path, max_epochs=1, limit_train_batches=2,
                          limit_val_batches=1)
    main(["fit", "--config", str(config)])
    checkpoint = next((tmp_path / "tb").rglob("*.ckpt"))
    events = list((tmp_path / "tb").rglob("events.out.tfevents*"))
    assert events and max(e.stat().st_size for e in events) > 10_000  # the sample grid was logged
    out = tmp_path / "samples"
    sample = {
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "SampleWriter", "init_args": {"output_dir": str(out)}}]},
        "model": {"class_path": "AnatomicalLDMTask",
                  "init_args": {"autoencoder": str(bundle),
                                "sampling": {"sampler": "dpm_solver++", "num_inference_steps": 2}}},
        "data": {"class_path": "SampleSeeds", "init_args": {"num_samples": 3, "batch_size": 2, "seed": 7}},
        "ckpt_path": str(checkpoint),
    }
    (tmp_path / "sample.yaml").write_text(yaml.safe_dump(sample))
    main(["predict", "--config", str(tmp_path / "sample.yaml"), "--trainer.fast_dev_run", "1"])
    images = sorted(out.glob("*_image.nii.gz"))
    labels = sorted(out.glob("*_label.nii.gz"))
    assert [p.name for p in images] == ["sample_000007_image.nii.gz", "sample_000008_image.nii.gz"]
    assert len(labels) == 2 and (out / "samples.png").is_file() and (out / "classes.json").is_file()
    image, label = nib.load(images[0]).get_fdata(), np.asarray(nib.load(labels[0]).dataobj)
    assert image.shape == label.shape == (32, 32, 1)
    assert -1000 <= image.min() and image.max() <= 240  # HU inside the W400/L40 window
    assert label.dtype == np.uint8 and set(np.unique(label)) <= set(range(len(CT_ABDOMEN_CLASSES)))
    assert not list(out.glob(".*partial*"))


def test_register_edits_change_samples_and_identity_does_not(bundle: Path) -> None:
    torch.manual_seed(0)
    model = task(bundle).eval()
    for p in model.denoiser.register_attention.parameters():  # as after training: non-zero output
        torch.nn.init.normal_(p, std=0.3)
    for p in model.denoiser.unet.out.parameters():
        torch.nn.init.normal_(p, std=0.3)
    generate = model.pipeline.generate
    reference = generate([3, 4])
    again = generate([3, 4])
    assert torch.equal(reference.images, again.images)  # fixed seeds: same samples
    identity = [RegisterEdit("scale", factor=1.0), RegisterEdit("scale", registers=[0], factor=1.0)]
    assert torch.equal(generate([3, 4], register_edits=identity).images, reference.images)
    scaled = [RegisterEdit("scale", registers=[0, 1], factor=4.0)]
    assert not torch.allclose(generate([3, 4], register_edits=scaled).images, reference.images)
    ablated = [RegisterEdit("ablate")]
    assert not torch.allclose(generate([3, 4], register_edits=ablated).images, reference.images)
    alone = generate([4], register_edits=ablated)  # a sample depends on its seed, not on its batch
    torch.testing.assert_close(alone.images[0], generate([3, 4], register_edits=ablated).images[1],
                               atol=1e-5, rtol=1e-4)


def test_head_learns_on_phantom_slices(bundle: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm = AnatomyDataModule(**{**TINY_DATA, "augment": False, "cache_dir": str(tmp_path)})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = task(bundle)
    optimizer = torch.optim.Adam(model.denoiser.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model._losses(batch, generator=torch.Generator().manual_seed(0), max_timestep=100)[0]["anatomy_loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("overrides, match", [
    ({"sampling__num_inference_steps": 0}, "model.sampling.num_inference_steps must be at least 1"),
    ({"denoiser__registers__num_registers": 0, "sampling__register_edits": [RegisterEdit("ablate")]},
     "model.sampling.register_edits needs a register bank"),
    ({"sampling__register_edits": [RegisterEdit("scale", registers=[9])]}, "register index 9 out of range"),
    ({"denoiser__registers__levels": [3]}, "model.denoiser.registers.levels \\[3\\] out of range"),
    ({"denoiser__registers__supervision": "attention", "denoiser__registers__num_registers": 0},
     "model.denoiser.registers.supervision needs a register bank"),
    ({"denoiser__registers__supervision": "attention", "denoiser__registers__supervised_per_class": 2},
     "model.denoiser.registers.supervised_per_class: 5 classes x 2 registers"),
    ({"denoiser__registers__supervision": "attention", "anatomy_loss__weight": 0.0},
     "model.denoiser.registers.supervision needs the anatomy head"),
    ({"denoiser__registers__anatomy_conditioning": True, "anatomy_loss__weight": 0.0},
     "model.denoiser.registers.anatomy_conditioning needs the anatomy head"),
    ({"anatomy_loss__snr_cutoff": 0.0}, "model.anatomy_loss.snr_cutoff must be positive"),
    ({"denoiser__registers__mode": "write"}, "model.denoiser.registers.mode must be 'read' or 'read_write'"),
    ({"denoiser__registers__nmu_registers": 3}, "model.denoiser.registers: unknown key\\(s\\) nmu_registers"),
    ({"lr": 0.0}, "model.lr must be positive"),
    ({"anatomy_loss__max_gradient_ratio": 0.0}, "model.anatomy_loss.max_gradient_ratio must be positive"),
    ({"anatomy_loss__gradient_balance_every_n_steps": 0},
     "model.anatomy_loss.gradient_balance_every_n_steps must be at least 1"),
    ({"anatomy_loss__max_gradient_ratio": 1.0, "anatomy_loss__weight": 0.0},
     "model.anatomy_loss.max_gradient_ratio needs the anatomy loss"),
    ({"denoiser__registers__dropout": 0.1, "denoiser__registers__num_registers": 0},
     "model.denoiser.registers.dropout needs a register bank"),
    ({"denoiser__registers__num_registers": 0, "sampling__guidance": {"kind": "registers"}},
     "model.sampling.guidance.kind: register guidance needs a register bank"),
    ({"sampling__guidance": {"kind": "autoguidance"}}, "model.sampling.guidance.guide: autoguidance needs a guide"),
])
def test_bad_settings(bundle: Path, overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        task(bundle, **overrides)


def test_missing_bundle_is_one_line_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "ldm.yaml", tmp_path / "nope", tmp_path)
    result = subprocess.run([ANATLDM, "fit", "--config", str(config)], capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nope" in result.stderr.strip().splitlines()[-1]


@pytest.mark.ddp
def test_ddp_two_processes_fit_to_the_end(bundle: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ldm.yaml", bundle, tmp_path, max_epochs=1, limit_train_batches=2,
                          limit_val_batches=1, devices=2, strategy="ddp")
    result = subprocess.run([ANATLDM, "fit", "--config", str(config)], capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_epochs=1` reached" in result.stderr + result.stdout


@pytest.mark.ddp
def test_ddp_fits_with_register_dropout_and_gradient_balance(bundle: Path, tmp_path: Path) -> None:
    """The balance measures its two norms under DDP too (each rank's averaged)."""
    model = {"anatomy_loss__max_gradient_ratio": 0.5, "anatomy_loss__gradient_balance_every_n_steps": 1,
             "denoiser__registers__dropout": 0.2, "training__preview_every_n_epochs": 0}
    config = write_config(tmp_path / "ldm.yaml", bundle, tmp_path, model, max_epochs=1, limit_train_batches=2,
                          limit_val_batches=1, devices=2, strategy="ddp")
    result = subprocess.run([ANATLDM, "fit", "--config", str(config)], capture_output=True, encoding="utf-8",
                            errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_epochs=1` reached" in result.stderr + result.stdout


def test_fraction_checkpoints_hold_the_ema_weights_at_their_step(bundle: Path, tmp_path: Path) -> None:
    config = tmp_path / "fractions.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "max_steps": 4, "limit_val_batches": 0,
                    "default_root_dir": str(tmp_path / "run"),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging",
                                   "init_args": {"decay": 0.5}},
                                  {"class_path": "anatldm.checkpointing.FractionCheckpoint",
                                   "init_args": {"fractions": [0.25, 0.5], "dirpath": str(tmp_path / "fractions")}}]},
        "model": {"class_path": "AnatomicalLDMTask", "init_args": {"autoencoder": str(bundle),
                                                                    **ldm_args(training__preview_every_n_epochs=0)}},
        "data": {"class_path": "AnatomyDataModule", "init_args": {**TINY_DATA, "cache_dir": str(tmp_path / "cache")}},
    }))
    main(["fit", "--config", str(config)])
    early = torch.load(tmp_path / "fractions" / "fraction-0.25.ckpt", weights_only=True)
    half = torch.load(tmp_path / "fractions" / "fraction-0.50.ckpt", weights_only=True)
    assert (early["global_step"], half["global_step"]) == (1, 2)
    assert "current_model_state" in half  # the EMA weights went into state_dict, the live ones beside them
    key = next(k for k in half["state_dict"] if k.startswith("denoiser.") and half["state_dict"][k].is_floating_point())
    assert not torch.equal(early["state_dict"][key], half["state_dict"][key])


def test_recipe_options_train_and_log_gradient_balance(bundle: Path, tmp_path: Path) -> None:
    """read_write registers bound to classes, snr-cutoff supervision: a fit logs each loss term's
    gradient norm, the clipped share and the register loss."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = {"denoiser__registers__num_registers": 12, "denoiser__registers__mode": "read_write",
             "denoiser__registers__supervision": "attention", "denoiser__registers__supervised_per_class": 2,
             "anatomy_loss__timestep_weighting": "snr_cutoff", "training__grad_norm_every_n_steps": 1}
    config = write_config(tmp_path / "ldm.yaml", bundle, tmp_path, model, max_epochs=1, limit_train_batches=3,
                          limit_val_batches=1, log_every_n_steps=1, gradient_clip_val=1e-3)
    main(["fit", "--config", str(config)])
    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents*"))))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/grad_norm_diffusion_loss", "train/grad_norm_anatomy_loss", "train/grad_norm_register_loss",
            "train/grad_norm", "train/clipped", "val/register_loss", "train/register_loss"} <= scalars
    assert [e.value for e in events.Scalars("train/clipped")] == [1.0]  # every step clipped at 1e-3
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm_register_loss"))


def test_gradient_balance_keeps_the_anatomy_gradient_within_the_bound(bundle: Path, tmp_path: Path) -> None:
    """``max_gradient_ratio``: the anatomy term's gradient norm, measured on its own by the
    gradient-norm logging, stays within the bound of the diffusion term's, by a scale < 1."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    bound = 0.5
    model = {"anatomy_loss__max_gradient_ratio": bound, "anatomy_loss__gradient_balance_every_n_steps": 1,
             "training__grad_norm_every_n_steps": 1, "denoiser__registers__dropout": 0.5,
             "training__preview_every_n_epochs": 0}
    config = write_config(tmp_path / "ldm.yaml", bundle, tmp_path, model, max_epochs=1, limit_train_batches=4,
                          limit_val_batches=0, log_every_n_steps=1)
    main(["fit", "--config", str(config)])
    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents*"))))
    events.Reload()
    values = {tag: [e.value for e in events.Scalars(tag)] for tag in
              ("train/anatomy_gradient_ratio", "train/anatomy_gradient_scale", "train/grad_norm_anatomy_loss",
               "train/grad_norm_diffusion_loss")}
    assert len(values["train/anatomy_gradient_ratio"]) == 4
    assert min(values["train/anatomy_gradient_scale"]) < 1.0  # the bound was active: the head's gradient dominates
    assert max(values["train/anatomy_gradient_ratio"]) <= bound * (1 + 1e-5)
    measured = [a / d for a, d in zip(values["train/grad_norm_anatomy_loss"], values["train/grad_norm_diffusion_loss"],
                                      strict=True)]
    assert max(measured) <= bound * (1 + 1e-4)


def test_edits_by_class_use_the_bound_registers(bundle: Path) -> None:
    model = task(bundle, denoiser__registers__num_registers=12, denoiser__registers__supervision="attention",
                 denoiser__registers__supervised_per_class=2)
    assert model.register_groups == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    spleen = CT_ABDOMEN_CLASSES.index("spleen")
    edited = model.pipeline.edit_registers([RegisterEdit("scale", classes=["spleen"], factor=2.0)])
    assert edited.applied == [{"classes": ["spleen"], "registers": [2 * spleen - 2, 2 * spleen - 1]}]
    assert model.pipeline.association is None  # no calibration sampling was needed
    with pytest.raises(ConfigError, match="owns no registers"):
        model.pipeline.edit_registers([RegisterEdit("ablate", classes=["background"])])


def test_cache_latents_encodes_each_training_slice_once(bundle: Path, tmp_path: Path) -> None:
    from lightning.pytorch import Trainer

    data = AnatomyDataModule(**{**TINY_DATA, "augment": False, "cache_dir": str(tmp_path / "cache")})
    model = task(bundle, training__cache_latents=True)
    trainer = Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                      limit_val_batches=0, enable_progress_bar=False, default_root_dir=str(tmp_path))
    trainer.fit(model, data)
    assert trainer.global_step == 3 * len(trainer.train_dataloader)
    assert model.posterior_cache.encoded == len(model.posterior_cache) == len(data.datasets["train"])


def test_cache_latents_refuses_augmented_data(bundle: Path, tmp_path: Path) -> None:
    from lightning.pytorch import Trainer

    data = AnatomyDataModule(**{**TINY_DATA, "augment": True, "cache_dir": str(tmp_path / "cache")})
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, default_root_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"model.training.cache_latents needs data.augment: false"):
        trainer.fit(task(bundle, training__cache_latents=True), data)


def test_head_refinement_reaches_the_last_checkpoint_and_the_pipeline(bundle: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    checkpoints = tmp_path / "checkpoints"
    callbacks = [{"class_path": "anatldm.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.9}},
                 {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(checkpoints), "save_last": True, "filename": "final"}}]
    model = {"denoiser__head__output_stride": 1, "denoiser__head__image_features": True,
             "denoiser__head__refine_steps": 3}
    config = write_config(tmp_path / "ldm.yaml", bundle, tmp_path, model, max_epochs=1, limit_train_batches=2,
                          limit_val_batches=0, callbacks=callbacks)
    main(["fit", "--config", str(config)])
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    before = torch.load(checkpoints / "final.ckpt", map_location="cpu", weights_only=False)  # the same step, unrefined
    exported = load_file(next((tmp_path / "tb").rglob("pipeline/denoiser/*.safetensors")))
    head = [k for k in last["state_dict"] if k.startswith("denoiser.head.")]
    assert any(k.startswith("denoiser.head.image_projections") for k in head)
    for key in head:
        torch.testing.assert_close(last["state_dict"][key], exported[key[len("denoiser."):]])
        torch.testing.assert_close(last["current_model_state"][key], last["state_dict"][key])
    assert any(not torch.equal(last["state_dict"][k], before["state_dict"][k]) for k in head)
    for key, value in before["state_dict"].items():  # nothing but the head moved
        if key.startswith("denoiser.") and not key.startswith("denoiser.head."):
            assert torch.equal(last["state_dict"][key], value), key
