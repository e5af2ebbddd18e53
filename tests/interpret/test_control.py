"""Controllable generation through the register bank, on a tiny task and through the real CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from anatldm.cli import main
from anatldm.data.phantoms import CT_ABDOMEN_CLASSES
from anatldm.errors import ConfigError
from anatldm.interpret import NoRegisterForClassError
from anatldm.metrics import area_fractions
from anatldm.models.registers import RegisterEdit
from tests.trainers.test_ldm import ANATLDM, task, write_config

LIVER = CT_ABDOMEN_CLASSES.index("liver")


class ThresholdHead(nn.Module):
    """Liver wherever channel 0 of the finest decoder features exceeds ``threshold``."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.reads_image_features = False

    def forward(self, features, output_size, image_features=None):
        level0 = features[0][:, :1]  # (B, 1, h, w)
        logits = torch.full((level0.shape[0], len(CT_ABDOMEN_CLASSES), *level0.shape[2:]), -1e4)
        logits[:, 0] = 0.0
        logits[:, LIVER] = level0[:, 0] - self.threshold
        return F.interpolate(logits, size=tuple(output_size), mode="nearest")


def constructed_model(bundle: Path, **overrides):
    """A tiny LDM whose head marks the liver where register 0 is read strongly at level 0.

    Two registers, one head: register 1 is zero (logit 0, value 0), so register 0's share is
    ``sigmoid(l0)`` with ``l0 = q . k0`` varying over positions, and the level-0 features get
    ``M * f * sigmoid(f * l0)`` in channel 0 when register 0 is scaled by ``f``. The threshold sits
    where ``sigmoid(l0) = 0.6`` (``l0 > 0``), so scaling register 0 up grows the liver, ablating it
    removes it: the association (register 0 <-> liver) and the direction are known.
    """
    torch.manual_seed(0)
    model = task(bundle, denoiser__registers__num_registers=2, denoiser__registers__heads=1,
                 denoiser__registers__levels=[0], sampling__registers_per_class=1, sampling__association_samples=4,
                 sampling__attention_steps=2, **overrides).eval()
    attention = model.denoiser.register_attention["up0"]
    with torch.no_grad():
        model.denoiser.registers.tokens[1] = 0.0
        model.denoiser.registers.tokens[0] *= 20 / model.denoiser.registers.tokens[0].norm()
        value = attention.to_v(model.denoiser.registers.tokens[0])  # (C,)
        attention.to_out.weight.zero_()
        attention.to_out.weight[0] = 100.0 * value / value.dot(value)  # channel 0 += 100 * share of r0
    model.denoiser.head = ThresholdHead(threshold=60.0)
    return model


def liver_area(model, seeds, **sampling) -> float:
    masks = model.pipeline.generate(seeds, **sampling).masks
    return float(area_fractions(masks, len(CT_ABDOMEN_CLASSES))[:, LIVER - 1].mean())


def test_scaling_the_registers_of_a_class_moves_its_area_in_that_direction(tiny_bundle: Path) -> None:
    model = constructed_model(tiny_bundle)
    table = model.pipeline.register_association()
    assert table.shape == (2, len(CT_ABDOMEN_CLASSES)) and table[0, LIVER] > 0.3 > table[1, LIVER]
    seeds = [0, 1, 2, 3]
    base = liver_area(model, seeds)
    assert 0.05 < base < 0.95
    scaled = [RegisterEdit("scale", classes=["liver"], factor=1.5)]
    grown = liver_area(model, seeds, register_edits=scaled)
    assert model.pipeline.generate(seeds[:1], register_edits=scaled).applied_edits == \
        [{"classes": ["liver"], "registers": [0]}]
    ablated = liver_area(model, seeds, register_edits=[RegisterEdit("ablate", classes=["liver"])])
    assert grown > base + 0.05 and ablated < base - 0.05, (base, grown, ablated)


def test_a_class_no_register_carries_is_its_own_error(tiny_bundle: Path) -> None:
    model = constructed_model(tiny_bundle,
                              sampling__register_edits=[RegisterEdit("scale", classes=["spleen"], factor=2.0)])
    with pytest.raises(NoRegisterForClassError, match="no register carries 'spleen'"):
        model.pipeline.generate([0])  # the head never marks the spleen: no register can carry it


def test_anatomy_edits_shorthand_matches_explicit_edit(tiny_bundle: Path) -> None:
    shorthand = constructed_model(tiny_bundle, sampling__anatomy_edits={"liver": 1.5})
    explicit = constructed_model(tiny_bundle,
                                 sampling__register_edits=[RegisterEdit("scale", classes=["liver"], factor=1.5)])
    torch.testing.assert_close(shorthand.pipeline.generate([5]).images, explicit.pipeline.generate([5]).images)


def test_generated_attention_has_the_right_shape_and_sums_to_one(tiny_bundle: Path) -> None:
    model = task(tiny_bundle).eval()
    out = model.pipeline.generate([0, 1, 2], return_attention=True, attention_steps=2)
    assert set(out.attention) == {"up0", "up1"}
    for name, maps in out.attention.items():
        latent = model.latent_shape[1] // (2 ** int(name[-1]))
        assert maps.shape == (3, 4, latent, latent)
        torch.testing.assert_close(maps.sum(1), torch.ones(3, latent, latent))


@pytest.mark.parametrize("overrides", [
    {"sampling__anatomy_edits": {"livre": 2.0}},
    {"sampling__register_edits": [RegisterEdit("ablate", classes=["kidneys"])]},
])
def test_unknown_class_lists_the_known_ones(tiny_bundle: Path, overrides: dict) -> None:
    with pytest.raises(ConfigError, match="unknown class .*; known classes: background, liver, spleen, kidney"):
        task(tiny_bundle, **overrides)


def test_bad_anatomy_edit_settings(tiny_bundle: Path) -> None:
    with pytest.raises(ConfigError, match="factor must be >= 0"):
        task(tiny_bundle, sampling__anatomy_edits={"liver": -1.0})
    with pytest.raises(ConfigError, match="model.sampling.anatomy_edits needs a register bank"):
        task(tiny_bundle, denoiser__registers__num_registers=0, sampling__anatomy_edits={"liver": 2.0})
    with pytest.raises(ConfigError, match="either 'registers' or 'classes'"):
        task(tiny_bundle, sampling__register_edits=[RegisterEdit("ablate", registers=[0], classes=["liver"])]
             ).pipeline.generate([0])


def test_predict_saves_attention_association_and_edits(tiny_bundle: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ldm.yaml", tiny_bundle, tmp_path, max_epochs=1, limit_train_batches=2,
                          limit_val_batches=1)
    main(["fit", "--config", str(config), "--model.init_args.training.preview_every_n_epochs", "0"])
    checkpoint = next((tmp_path / "tb").rglob("*.ckpt"))
    out = tmp_path / "samples"
    sample = {
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "SampleWriter",
                                   "init_args": {"output_dir": str(out), "attention_panels": 2}}]},
        "model": {"class_path": "AnatomicalLDMTask",
                  "init_args": {"autoencoder": str(tiny_bundle), "sampling": {
                      "sampler": "ddim", "num_inference_steps": 2, "record_attention": True, "attention_steps": 2,
                      "association_samples": 2,
                      "register_edits": [{"operation": "scale", "registers": [1], "factor": 2.0}]}}},
        "data": {"class_path": "SampleSeeds", "init_args": {"num_samples": 3, "batch_size": 2, "seed": 7}},
        "ckpt_path": str(checkpoint),
    }
    (tmp_path / "sample.yaml").write_text(yaml.safe_dump(sample))
    main(["predict", "--config", str(tmp_path / "sample.yaml")])
    assert sorted(p.name for p in out.glob("*_attention.png")) == ["sample_000007_attention.png",
                                                                   "sample_000008_attention.png"]
    record = json.loads((out / "association.json").read_text(encoding="utf-8"))
    assert record["num_samples"] == 3 and len(record["correlation"]) == 4
    assert len(record["correlation"][0]) == len(CT_ABDOMEN_CLASSES)
    assert (out / "association.png").stat().st_size > 1000 and (out / "association.csv").is_file()
    assert json.loads((out / "edits.json").read_text(encoding="utf-8"))["edits"][0]["registers"] == [1]
    assert not list(out.glob(".*partial*"))
    # an unknown class through the CLI: one line naming the known classes, nothing written
    bad = tmp_path / "bad"
    result = subprocess.run([ANATLDM, "predict", "--config", str(tmp_path / "sample.yaml"),
                             "--trainer.callbacks.init_args.output_dir", str(bad),
                             "--model.init_args.sampling.anatomy_edits", "{spleeen: 2.0}"],
                            capture_output=True, text=True, encoding="utf-8", timeout=300)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("anatldm: error: ")
    assert "unknown class 'spleeen'" in last and "known classes: background, liver, spleen" in last
    assert "Traceback" not in result.stderr and not bad.exists()
