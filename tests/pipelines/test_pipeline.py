"""AnatomicalLDMPipeline: Lightning-free import, same samples as the task, a self-contained folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from anatldm.cli import main
from anatldm.errors import ConfigError
from anatldm.interpret.edits import load_register_bank
from anatldm.models.registers import RegisterEdit
from anatldm.pipelines import AnatomicalLDMPipeline
from anatldm.trainers import AnatomicalLDMTask
from tests.conf import ldm_args


def trained_looking_task(bundle: Path, **overrides) -> AnatomicalLDMTask:
    """A tiny task whose register attention and UNet output are non-zero, as after training."""
    torch.manual_seed(0)
    args = ldm_args(**{"denoiser__registers__num_registers": 4, **overrides})
    task = AnatomicalLDMTask(autoencoder=str(bundle), **args).eval()
    for p in [*task.denoiser.register_attention.parameters(), *task.denoiser.unet.out.parameters()]:
        torch.nn.init.normal_(p, std=0.3)
    return task


def test_importing_the_pipeline_imports_no_lightning() -> None:
    code = "import anatldm.pipelines, sys; assert not any(m.startswith('lightning') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_library_packages_do_not_import_the_trainers() -> None:
    """Networks, diffusion, losses, metrics, pipelines and register control stand without the
    LightningModules and callbacks (the dependency points the other way)."""
    packages = ["models", "diffusion", "losses", "metrics", "pipelines", "interpret"]
    code = ("import sys, importlib, pkgutil, anatldm\n"
            f"for name in {packages!r}:\n"
            "    package = importlib.import_module('anatldm.' + name)\n"
            "    for info in pkgutil.iter_modules(package.__path__):\n"
            "        importlib.import_module(f'anatldm.{name}.{info.name}')\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('anatldm.trainers', 'anatldm.callbacks')))\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samples_are_the_tasks_for_the_same_seeds(tiny_bundle: Path, sampler: str) -> None:
    task = trained_looking_task(tiny_bundle, denoiser__registers__mode="read_write", sampling__sampler=sampler,
                                sampling__record_attention=True, sampling__attention_steps=2)
    expected = task.predict_step({"seed": torch.tensor([3, 4, 5])}, 0)
    out = task.pipeline.generate([3, 4, 5], sampler=sampler, return_attention=True, attention_steps=2)
    assert torch.equal(out.images, expected.images) and torch.equal(out.masks, expected.masks)
    assert out.attention.keys() == expected.attention.keys()
    assert all(torch.equal(out.attention[k], expected.attention[k]) for k in out.attention)
    assert out.seeds == expected.seeds == [3, 4, 5] and out.applied_edits == expected.applied_edits == []


def test_edits_are_the_tasks_and_say_what_they_touched(tiny_bundle: Path) -> None:
    task = trained_looking_task(tiny_bundle, denoiser__registers__num_registers=12,
                                denoiser__registers__supervision="attention", denoiser__registers__supervised_per_class=2,
                                sampling__anatomy_edits={"liver": 3.0})
    expected = task.predict_step({"seed": torch.tensor([1, 2])}, 0)
    out = task.pipeline.generate([1, 2], register_edits=[{"operation": "scale", "classes": ["liver"], "factor": 3.0}],
                                 anatomy_edits={})
    assert torch.equal(out.images, expected.images)
    assert out.applied_edits == expected.applied_edits == [{"classes": ["liver"], "registers": [0, 1]}]
    assert not torch.equal(out.images, task.pipeline.generate([1, 2], anatomy_edits={}).images)
    with pytest.raises(ConfigError, match="register_edits: unknown class 'livre'"):
        task.pipeline.check_edits([RegisterEdit("ablate", classes=["livre"])])


def test_save_load_gives_the_same_samples_without_the_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    task = trained_looking_task(bundle)
    expected = task.pipeline.generate(num_samples=3, sampler="dpm_solver++_sde")
    folder = tmp_path / "pipeline"
    task.pipeline.save_pretrained(folder)
    shutil.rmtree(bundle)  # the folder is self-contained
    loaded = AnatomicalLDMPipeline.from_pretrained(folder)
    again = loaded(num_samples=3, sampler="dpm_solver++_sde")
    assert torch.equal(again.images, expected.images) and torch.equal(again.masks, expected.masks)
    assert loaded.class_names == task.class_names and loaded.image_size == task.image_size
    assert loaded.normalization == task.bundle["normalization"]
    loaded.save_pretrained(tmp_path / "again")  # a loaded pipeline saves the same files
    assert json.loads((tmp_path / "again" / "pipeline.json").read_text()) == \
        json.loads((folder / "pipeline.json").read_text())


@pytest.mark.parametrize(("file", "change", "message"), [
    ("pipeline.json", lambda m: m.pop("scale_factor"), "missing field\\(s\\) 'scale_factor'"),
    ("pipeline.json", lambda m: m.update(scale_factor=-1), "field 'scale_factor' must be a positive number"),
    ("pipeline.json", lambda m: m["sampling"].update(sampler="euler"), "field 'sampling.sampler' is 'euler'"),
    ("pipeline.json", lambda m: m["components"].pop("scheduler"), "field 'components'"),
    ("denoiser/config.json", lambda m: m.update(channels=[16, 64]), "weights do not match the config"),
    ("denoiser/config.json", lambda m: m.update(register_levels=[7]), "field 'denoiser' does not build"),
    ("denoiser/config.json", lambda m: m.update(_class_name="x.Other"), "field '_class_name' is 'x.Other'"),
    ("scheduler/config.json", lambda m: m.update(beta_schedule="cubic"), "field 'scheduler' does not build"),
    ("pipeline.json", lambda m: m.update(image_size=[32, "a"]), "field 'image_size' must be a list of positive integers"),
])
def test_a_broken_folder_is_one_config_error_naming_the_file_and_key(tiny_bundle: Path, tmp_path: Path, file: str,
                                                                      change, message: str) -> None:
    trained_looking_task(tiny_bundle).pipeline.save_pretrained(tmp_path)
    metadata = json.loads((tmp_path / file).read_text())
    change(metadata)
    (tmp_path / file).write_text(json.dumps(metadata))
    with pytest.raises(ConfigError, match=message) as error:
        AnatomicalLDMPipeline.from_pretrained(tmp_path)
    assert file.split("/")[0] in str(error.value) and "\n" not in str(error.value)  # names the file


def test_missing_weights_name_the_component_file(tiny_bundle: Path, tmp_path: Path) -> None:
    trained_looking_task(tiny_bundle).pipeline.save_pretrained(tmp_path)
    (tmp_path / "denoiser" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="denoiser/model.safetensors: weights file missing"):
        AnatomicalLDMPipeline.from_pretrained(tmp_path)


def write_format_1_folder(new: Path, old: Path) -> None:
    """The folder ``new`` rewritten as the previous layout wrote it: one ``pipeline.safetensors``
    (every weight, keys ``autoencoder.*`` and ``denoiser.*``) beside a ``pipeline.json`` that holds
    the component configs (the file names and fields of format 1)."""
    index = json.loads((new / "pipeline.json").read_text())
    configs = {}
    for name in ("autoencoder", "denoiser", "scheduler"):
        config = json.loads((new / name / "config.json").read_text())
        configs[name] = {key: value for key, value in config.items() if key != "_class_name"}
    state = {f"{name}.{key}": value for name in ("autoencoder", "denoiser")
             for key, value in load_file(new / name / "model.safetensors").items()}
    old.mkdir()
    save_file(state, old / "pipeline.safetensors", metadata={"format": "pt"})
    del index["components"]
    (old / "pipeline.json").write_text(json.dumps({
        **index, "format_version": 1, "weights": "pipeline.safetensors",
        "autoencoder": {"network": "monai.networks.nets.AutoencoderKL", "config": configs["autoencoder"]},
        "denoiser": {"network": "anatldm.models.denoiser.AnatomicalDenoiser", "config": configs["denoiser"]},
        "scheduler": configs["scheduler"]}))


def test_a_folder_of_the_previous_layout_samples_bit_identically(tiny_bundle: Path, tmp_path: Path) -> None:
    task = trained_looking_task(tiny_bundle)
    task.pipeline.save_pretrained(tmp_path / "new")
    write_format_1_folder(tmp_path / "new", tmp_path / "old")
    old, new = (AnatomicalLDMPipeline.from_pretrained(tmp_path / name) for name in ("old", "new"))
    expected, again = new.generate([0, 1]), old.generate([0, 1])
    assert torch.equal(again.images, expected.images) and torch.equal(again.masks, expected.masks)
    assert old.denoiser_config == new.denoiser_config and old.scheduler_config == new.scheduler_config
    assert torch.equal(load_register_bank(str(tmp_path / "old")), load_register_bank(str(tmp_path / "new")))
    old.save_pretrained(tmp_path / "resaved")  # an old folder saves in the new layout
    assert (tmp_path / "resaved" / "denoiser" / "model.safetensors").is_file()


def test_no_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no pipeline"):
        AnatomicalLDMPipeline.from_pretrained(tmp_path)


def test_fit_exports_the_pipeline_and_export_writes_the_same(stage_checkpoints: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    fitted = AnatomicalLDMPipeline.from_pretrained(stage_checkpoints["root"] / "register" / "pipeline")
    main(["export", "--ckpt_path", str(stage_checkpoints["register"]), "--out", str(tmp_path / "exported"),
          "--num_inference_steps", "3"])
    assert "wrote" in capsys.readouterr().out
    exported = AnatomicalLDMPipeline.from_pretrained(tmp_path / "exported")
    assert torch.equal(fitted.generate([0, 1]).images, exported.generate([0, 1]).images)
    assert exported.denoiser.registers.num_registers == 4 and exported.sampling.num_inference_steps == 3


def test_export_of_a_foreign_checkpoint_is_one_line(stage_checkpoints: dict, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["export", "--ckpt_path", str(stage_checkpoints["segmenter"]), "--out", str(tmp_path / "x")])
    assert done.value.code == 2
    assert "--ckpt_path" in capsys.readouterr().err


def test_the_readme_python_api_runs_as_written(tiny_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    trained_looking_task(tiny_bundle).pipeline.save_pretrained(tmp_path / "runs" / "ldm" / "pipeline")
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["images"].shape == (4, 1, 32, 32) and namespace["masks"].shape == (4, 32, 32)
    assert (tmp_path / "my_pipeline" / "pipeline.json").is_file()


def _checkpoint(task: AnatomicalLDMTask, path: Path) -> str:
    """The task's weights as Lightning writes them (``state_dict`` and ``hyper_parameters``)."""
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return str(path)


def test_autoguidance_reads_its_guide_once_from_a_checkpoint_of_the_same_run(tiny_bundle: Path,
                                                                             tmp_path: Path) -> None:
    task = trained_looking_task(tiny_bundle)
    unguided = task.pipeline.generate([3, 4], sampler="dpm_solver++_sde")
    itself = _checkpoint(task, tmp_path / "itself.ckpt")
    same = task.pipeline.generate([3, 4], sampler="dpm_solver++_sde",
                                  guidance={"kind": "autoguidance", "weight": 3.0, "guide": itself})
    assert torch.equal(same.images, unguided.images) and torch.equal(same.masks, unguided.masks)
    assert (unguided.nfe, same.nfe) == (3 + 1, 2 * 3 + 1)
    guide = task.pipeline.guide_network(task.pipeline.settings(guidance={"kind": "autoguidance", "guide": itself}))
    assert guide is task.pipeline._guide[1] and guide is not task.denoiser  # loaded once, kept
    early = trained_looking_task(tiny_bundle)
    for p in early.denoiser.unet.out.parameters():  # a different ("early") model
        torch.nn.init.normal_(p, std=0.3)
    guided = task.pipeline.generate([3, 4], sampler="dpm_solver++_sde",
                                    guidance={"kind": "autoguidance", "weight": 2.0,
                                              "guide": _checkpoint(early, tmp_path / "early.ckpt")})
    assert not torch.allclose(guided.images, unguided.images)


def test_a_baseline_is_autoguided_by_a_pipeline_folder(tiny_bundle: Path, tmp_path: Path) -> None:
    baseline = trained_looking_task(tiny_bundle, denoiser__registers__num_registers=0, anatomy_loss__weight=0.0)
    guide = trained_looking_task(tiny_bundle, denoiser__registers__num_registers=0, anatomy_loss__weight=0.0)
    for p in guide.denoiser.unet.out.parameters():
        torch.nn.init.normal_(p, std=0.3)
    folder = tmp_path / "guide"
    guide.pipeline.save_pretrained(folder)
    unguided = baseline.pipeline.generate([1, 2])
    guided = baseline.pipeline.generate([1, 2], guidance={"kind": "autoguidance", "weight": 2.0, "guide": str(folder)})
    assert guided.masks is None and guided.nfe == 2 * 3
    assert not torch.allclose(guided.images, unguided.images)


def test_a_guide_of_another_autoencoder_is_one_config_error(tiny_bundle: Path, tmp_path: Path) -> None:
    task = trained_looking_task(tiny_bundle)
    state = task.state_dict()
    scaled = {**state, "scale_factor": state["scale_factor"] * 2}
    torch.save({"state_dict": scaled}, tmp_path / "scaled.ckpt")
    name = next(k for k in state if k.startswith("autoencoder.") and state[k].is_floating_point())
    other = {**state, name: state[name] + 1.0}
    torch.save({"state_dict": other}, tmp_path / "other.ckpt")
    shapes = {**state, "denoiser.registers.tokens": torch.zeros(2, 16)}
    torch.save({"state_dict": shapes}, tmp_path / "shapes.ckpt")
    for file, match in (("scaled.ckpt", "has scale_factor"), ("other.ckpt", "trained on another autoencoder"),
                        ("shapes.ckpt", "holds another denoiser than the model's"), ("none.ckpt", "does not exist")):
        with pytest.raises(ConfigError, match=f"model.sampling.guidance.guide: .*{match}"):
            task.pipeline.generate([0], guidance={"kind": "autoguidance", "guide": str(tmp_path / file)})


def test_predict_samples_with_the_register_guidance_of_its_config(tiny_bundle: Path) -> None:
    unguided = trained_looking_task(tiny_bundle).predict_step({"seed": torch.tensor([5, 6])}, 0)
    task = trained_looking_task(tiny_bundle, sampling__guidance={"kind": "registers", "weight": 2.0})
    guided = task.predict_step({"seed": torch.tensor([5, 6])}, 0)
    assert guided.nfe == 2 * 3 + 1 and guided.sampling.guidance.kind == "registers"
    assert not torch.allclose(guided.images, unguided.images)
    with pytest.raises(ConfigError, match="model.sampling.guidance.kind: register guidance needs a register bank"):
        trained_looking_task(tiny_bundle, denoiser__registers__num_registers=0,
                             sampling__guidance={"kind": "registers"})


def test_a_head_that_reads_the_decoder_labels_samples_from_the_decoded_latent(tiny_bundle: Path,
                                                                              tmp_path: Path) -> None:
    task = trained_looking_task(tiny_bundle, denoiser__head__output_stride=1, denoiser__head__clean_fraction=0.25,
                                denoiser__head__image_features=True)
    pipeline = task.pipeline
    assert pipeline.denoiser.reads_image_features
    out = pipeline.generate([0, 1], sampler="ddim", num_inference_steps=2)
    latents = pipeline.encode(out.images)  # not the sampled latents: check the wiring on the final call instead
    calls = []
    decode_with_features = pipeline.decode_with_features
    pipeline.decode_with_features = lambda z: calls.append(z.shape) or decode_with_features(z)
    again = pipeline.generate([0, 1], sampler="ddim", num_inference_steps=2)
    assert calls == [torch.Size([2, *pipeline.latent_shape])]  # once, at the t = 0 call only
    assert torch.equal(again.masks, out.masks)
    zero = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        plain = pipeline.denoiser(latents, zero, mask_size=pipeline.image_size).anatomy_logits
        read = pipeline.denoiser(latents, zero, mask_size=pipeline.image_size,
                                 image_features=pipeline.head_image_features(latents)).anatomy_logits
    assert not torch.equal(plain, read)
    folder = tmp_path / "pipeline"
    pipeline.save_pretrained(folder)
    loaded = AnatomicalLDMPipeline.from_pretrained(folder)
    assert loaded.denoiser.reads_image_features
    assert torch.equal(loaded.generate([0, 1], sampler="ddim", num_inference_steps=2).masks, out.masks)
