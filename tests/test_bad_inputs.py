"""Every kind of bad input a researcher hits, through the real ``anatldm`` command.

One table, one row per mistake: broken data files, configs, checkpoints, autoencoder bundles,
sampler settings and output folders, for every subcommand (``fit`` of each stage, ``test``,
``predict``, ``inspect``). Each row must end in exactly one line ``anatldm: error: ...`` naming
the offending key or file, a non-zero exit, no Python traceback, and no file or folder written
anywhere in the run's scratch folder (only a complete slice cache of valid data may appear).

Rows run ``anatldm.cli.main`` in-process (the console script calls nothing else; a subprocess
costs ~6 s of imports per row); :func:`test_console_script` repeats a few rows through the
installed ``anatldm`` script to check the real stderr and exit code.
"""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anatldm.cli import main
from anatldm.models.autoencoder_bundle import BUNDLE_CONFIG, BUNDLE_NETWORK_CONFIG, BUNDLE_WEIGHTS
from tests.conf import TINY_DATA, VAE_DATA, VAE_MODEL, ldm_args
from tests.conftest import labelled_volume, write_nifti

ANATLDM = str(Path(sys.executable).parent / "anatldm")
COMMANDS = {"vae": "fit", "ldm": "fit", "segmenter": "fit", "eval": "test", "predict": "predict",
            "synthesize": "predict", "inspect": "inspect"}
TRAINER = {"accelerator": "cpu", "devices": 1, "max_steps": 1, "limit_val_batches": 1, "num_sanity_val_steps": 0,
           "enable_progress_bar": False, "enable_model_summary": False}


# -- one case's scratch folder ------------------------------------------------------------------
@dataclass
class Setup:
    """The config, input files and extra arguments of one run; mutated by a case's ``breaks``."""

    root: Path
    stage: str
    artefacts: dict[str, Path]
    config: dict = field(default_factory=dict)
    config_text: str | None = None  # raw YAML instead of ``config``
    extra_args: list[str] = field(default_factory=list)
    config_path: Path | None = None

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def set(self, key: str, value: object) -> None:
        node = self.config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def drop(self, key: str) -> None:
        node = self.config
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        del node[last]

    def copy_input(self, source: Path, name: str) -> Path:
        """A copy of a shared artefact (checkpoint, bundle) that a case may break."""
        target = self.inputs / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            import shutil

            shutil.copytree(source, target)
        else:
            target.write_bytes(source.read_bytes())
        return target

    def folder_data(self, subjects: int = 4) -> Path:
        """Folder data (``images/``, ``labels/``, ``classes.json``: 3 classes) in place of phantoms."""
        dataset = self.inputs / "dataset"
        for index in range(subjects):
            image, label = labelled_volume(index)
            write_nifti(dataset / "images" / f"case{index}.nii.gz", image)
            write_nifti(dataset / "labels" / f"case{index}.nii.gz", label)
        (dataset / "classes.json").write_text(json.dumps(["background", "disc", "square"]))
        self.config["data"] = {"class_path": "AnatomyDataModule", "init_args": {
            "source": "folder", "root": str(dataset), "preset": "ct", "image_size": 32, "batch_size": 2,
            "num_workers": 0, "split_fractions": [0.5, 0.25, 0.25], "cache_dir": str(self.root / "cache"),
            "min_foreground": 0.0}}
        if self.stage == "segmenter":
            self.set("model.init_args.num_classes", 3)
        return dataset

    def args(self) -> list[str]:
        self.inputs.mkdir(parents=True, exist_ok=True)
        if self.config_path is None:
            self.config_path = self.inputs / "config.yaml"
            self.config_path.write_text(self.config_text if self.config_text is not None
                                        else yaml.safe_dump(self.config))
        command = COMMANDS[self.stage]
        out = ["--out", str(self.out / "preview.png")] if command == "inspect" else []
        return [command, "--config", str(self.config_path), *out, *self.extra_args]


def base_config(stage: str, root: Path, artefacts: dict[str, Path]) -> dict:
    cache = str(artefacts["root"] / "cache")  # the phantom slices the stage checkpoints were trained on
    data = {"class_path": "AnatomyDataModule", "init_args": {**TINY_DATA, "cache_dir": cache}}
    trainer = {**TRAINER, "default_root_dir": str(root / "out" / "run")}
    ldm = {"autoencoder": str(artefacts["bundle"]),
           **ldm_args(training__preview_every_n_epochs=0, denoiser__registers__num_registers=4)}
    if stage == "vae":
        return {"trainer": trainer, "data": {"class_path": "AnatomyDataModule",
                                             "init_args": {**VAE_DATA, "cache_dir": cache}},
                "model": {"class_path": "AutoencoderTask",
                          "init_args": {**VAE_MODEL, "export_dir": str(root / "out" / "export")}}}
    if stage == "ldm":
        return {"trainer": trainer, "data": data, "model": {"class_path": "AnatomicalLDMTask", "init_args": ldm}}
    if stage == "segmenter":
        return {"trainer": trainer, "data": data, "model": {"class_path": "SegmenterTask", "init_args": {
            "num_classes": 6, "channels": [8, 16, 32], "strides": [2, 2]}}}
    if stage == "eval":
        return {"trainer": {**trainer, "logger": False},
                "data": {**data, "init_args": {**data["init_args"], "augment": False}},
                "model": {"class_path": "EvaluationTask", "init_args": {
                    "generators": {"register": str(artefacts["register"]), "baseline": str(artefacts["baseline"])},
                    "segmenter": str(artefacts["segmenter"]), "baseline": "baseline", "num_samples": 4,
                    "num_inference_steps": 1, "sample_batch_size": 4, "num_bootstrap": 10,
                    "output_dir": str(root / "out" / "eval")}}}
    if stage == "predict":
        return {"trainer": {**trainer, "logger": False, "callbacks": [
                    {"class_path": "SampleWriter", "init_args": {"output_dir": str(root / "out" / "samples")}}]},
                "model": {"class_path": "AnatomicalLDMTask", "init_args": {
                    "autoencoder": str(artefacts["bundle"]),
                    "sampling": {"sampler": "ddim", "num_inference_steps": 1}}},
                "data": {"class_path": "SampleSeeds", "init_args": {"num_samples": 2, "batch_size": 2}},
                "ckpt_path": str(artefacts["register"])}
    if stage == "synthesize":  # predict with the nnU-Net / MONAI DatasetWriter
        return {"trainer": {**trainer, "logger": False, "callbacks": [
                    {"class_path": "DatasetWriter", "init_args": {"output_dir": str(root / "out" / "export"),
                                                                  "dataset_id": 501, "dataset_name": "Synth"}}]},
                "model": {"class_path": "AnatomicalLDMTask", "init_args": {
                    "autoencoder": str(artefacts["bundle"]),
                    "sampling": {"sampler": "ddim", "num_inference_steps": 1}}},
                "data": {"class_path": "SampleSeeds", "init_args": {"num_samples": 2, "batch_size": 2}},
                "ckpt_path": str(artefacts["register"])}
    if stage == "inspect":
        return {"data": data}
    raise ValueError(stage)


# -- ways to break a run ---------------------------------------------------------------------------
Breaks = Callable[[Setup], None]


def setting(key: str, value: object) -> Breaks:
    return lambda s: s.set(key, value)


def without(key: str) -> Breaks:
    return lambda s: s.drop(key)


def raw_config(text: str) -> Breaks:
    def breaks(s: Setup) -> None:
        s.config_text = text
    return breaks


def arguments(*args: str) -> Breaks:
    return lambda s: s.extra_args.extend(args)


def on_folder_data(then: Callable[[Setup, Path], None] | None = None) -> Breaks:
    def breaks(s: Setup) -> None:
        dataset = s.folder_data()
        if then is not None:
            then(s, dataset)
    return breaks


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(2048))


def nifti_of(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.unlink()
    write_nifti(path, data, affine)


def image_of(dataset: Path, index: int = 1) -> Path:
    return dataset / "images" / f"case{index}.nii.gz"


def label_of(dataset: Path, index: int = 1) -> Path:
    return dataset / "labels" / f"case{index}.nii.gz"


def broken_artefact(name: str, how: Callable[[Path], None], key: str, target: str = "") -> Breaks:
    """Copy the shared artefact ``name`` into the inputs, break it, and point ``key`` at it."""
    def breaks(s: Setup) -> None:
        path = s.copy_input(s.artefacts[name], f"{name}.copy" + (".ckpt" if name != "bundle" else ""))
        how(path / target if target else path)
        s.set(key, str(path))
    return breaks


def edit_bundle_json(**fields: object) -> Callable[[Path], None]:
    def how(path: Path) -> None:
        metadata = json.loads(path.read_text())
        for name, value in fields.items():
            if value is None:
                metadata.pop(name)
            else:
                metadata[name] = value
        path.write_text(json.dumps(metadata))
    return how


def segmenter_checkpoint_with_classes(num_classes: int) -> Breaks:
    """A real ``SegmenterTask`` checkpoint of another class count (Lightning's format, untrained)."""
    def breaks(s: Setup) -> None:
        import lightning

        from anatldm.trainers import SegmenterTask

        task = SegmenterTask(num_classes=num_classes, channels=(8, 16, 32), strides=(2, 2))
        path = s.inputs / "segmenter3.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                    "pytorch-lightning_version": lightning.__version__}, path)
        s.set("model.init_args.segmenter", str(path))
    return breaks


def not_a_folder(key: str, tail: str) -> Breaks:
    """``key`` names a path below a regular file: nothing can be created there (even as root)."""
    def breaks(s: Setup) -> None:
        blocker = s.inputs / "a_file"
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("not a folder")
        s.set(key, str(blocker / tail))
    return breaks


def all_of(*steps: Breaks) -> Breaks:
    def breaks(s: Setup) -> None:
        for step in steps:
            step(s)
    return breaks


# -- the table ------------------------------------------------------------------------------------
# (id, stage, how the input is broken, what the one error line must contain: the key or the file)
CASES: list[tuple[str, str, Breaks, str]] = [
    # -- config files and their keys
    ("config-file-missing", "segmenter", lambda s: setattr(s, "config_path", s.inputs / "nope.yaml"), "nope.yaml"),
    ("config-yaml-syntax-error", "segmenter", raw_config("model: [unclosed\n  key: : value\n"), "config.yaml"),
    ("config-not-a-mapping", "segmenter", raw_config("- fit\n- segmenter\n"), "config.yaml"),
    ("config-unknown-model-key", "vae", setting("model.init_args.kl_wieght", 1e-6), "kl_wieght"),
    ("config-unknown-data-key", "ldm", setting("data.init_args.imag_size", 32), "imag_size"),
    ("config-unknown-trainer-key", "segmenter", setting("trainer.max_epoch", 3), "max_epoch"),
    ("config-unknown-top-level-key", "segmenter", setting("modle", {"lr": 1}), "modle"),
    ("config-unknown-class-path", "segmenter", setting("model.class_path", "SegmentorTask"), "SegmentorTask"),
    ("config-unknown-option-on-command-line", "ldm", arguments("--model.init_args.num_registerz", "4"),
     "num_registerz"),
    ("config-wrong-type-int", "segmenter", setting("trainer.max_epochs", "abc"), "trainer.max_epochs"),
    ("config-wrong-type-float", "segmenter", setting("model.init_args.lr", "fast"), "model.lr"),
    ("config-wrong-type-list", "vae", setting("model.init_args.channels", "wide"), "model.channels"),
    ("config-missing-required-key", "segmenter", without("model.init_args.num_classes"), "num_classes"),
    ("config-unknown-choice", "ldm", setting("data.init_args.phantom_family", "knee_mri"), "data.phantom_family"),
    # -- numbers that cannot work
    ("data-batch-size-zero", "segmenter", setting("data.init_args.batch_size", 0), "data.batch_size"),
    ("data-batch-size-negative", "ldm", setting("data.init_args.batch_size", -4), "data.batch_size"),
    ("data-num-workers-negative", "segmenter", setting("data.init_args.num_workers", -1), "data.num_workers"),
    ("data-num-subjects-zero", "segmenter", setting("data.init_args.num_subjects", 0), "num_subjects"),
    ("data-image-size-zero", "segmenter", setting("data.init_args.image_size", 0), "data.image_size"),
    ("data-split-fractions-sum", "segmenter", setting("data.init_args.split_fractions", [0.5, 0.5, 0.5]),
     "data.split_fractions"),
    ("data-min-foreground-above-one", "segmenter", setting("data.init_args.min_foreground", 1.5),
     "data.min_foreground"),
    ("data-ct-window-width-negative", "segmenter", setting("data.init_args.ct_window", [-400, 40]),
     "data.ct_window"),
    ("data-spacing-zero", "segmenter", on_folder_data(lambda s, d: s.set("data.init_args.spacing", [0.0, 1.0])),
     "data.spacing"),
    ("vae-learning-rate-negative", "vae", setting("model.init_args.generator_lr", -1e-4), "generator_lr"),
    ("vae-groups-do-not-divide-channels", "vae", setting("model.init_args.norm_num_groups", 3), "norm_num_groups"),
    ("vae-scale-factor-batches-zero", "vae", setting("model.init_args.scale_factor_batches", 0),
     "scale_factor_batches"),
    ("vae-image-size-not-divisible", "vae", setting("data.init_args.image_size", 33), "data.image_size"),
    ("vae-max-epochs-negative", "vae", setting("trainer.max_epochs", -2), "max_epochs"),
    ("ldm-learning-rate-negative", "ldm", setting("model.init_args.lr", -1e-4), "model.lr"),
    ("ldm-min-snr-gamma-zero", "ldm", setting("model.init_args.noise_schedule.min_snr_gamma", 0),
     "model.noise_schedule.min_snr_gamma"),
    ("ldm-anatomy-weight-negative", "ldm", setting("model.init_args.anatomy_loss.weight", -1.0),
     "model.anatomy_loss.weight"),
    ("ldm-anatomy-warmup-above-one", "ldm", setting("model.init_args.anatomy_loss.warmup_fraction", 1.5),
     "model.anatomy_loss.warmup_fraction"),
    ("ldm-num-registers-negative", "ldm", setting("model.init_args.denoiser.registers.num_registers", -2),
     "model.denoiser.registers.num_registers"),
    ("ldm-register-level-out-of-range", "ldm", setting("model.init_args.denoiser.registers.levels", [5]),
     "model.denoiser.registers.levels"),
    ("ldm-groups-do-not-divide-channels", "ldm", setting("model.init_args.denoiser.norm_num_groups", 5), "model"),
    ("ldm-num-train-timesteps-zero", "ldm", setting("model.init_args.noise_schedule.num_train_timesteps", 0),
     "model.noise_schedule.num_train_timesteps"),
    ("ldm-old-flat-key", "ldm", setting("model.init_args.num_registers", 4),
     "model.init_args.num_registers moved to model.init_args.denoiser.registers.num_registers"),
    ("ldm-image-size-differs-from-bundle", "ldm", setting("data.init_args.image_size", 48), "image_size"),
    ("segmenter-one-class", "segmenter", setting("model.init_args.num_classes", 1), "model.num_classes"),
    ("segmenter-learning-rate-negative", "segmenter", setting("model.init_args.lr", -1e-3), "model.lr"),
    ("segmenter-strides-do-not-fit-channels", "segmenter", setting("model.init_args.strides", [2]),
     "model.strides"),
    # -- sampler settings
    ("predict-unknown-sampler", "predict", setting("model.init_args.sampling.sampler", "euler_a"), "sampler"),
    ("predict-zero-steps", "predict", setting("model.init_args.sampling.num_inference_steps", 0),
     "model.sampling.num_inference_steps"),
    ("predict-num-samples-zero", "predict", setting("data.init_args.num_samples", 0), "data.num_samples"),
    ("predict-batch-size-negative", "predict", setting("data.init_args.batch_size", -1), "data.batch_size"),
    ("predict-seed-negative", "predict", setting("data.init_args.seed", -3), "data.seed"),
    ("predict-register-index-out-of-range", "predict",
     setting("model.init_args.sampling.register_edits", [{"operation": "scale", "registers": [99], "factor": 2.0}]),
     "register_edits"),
    ("predict-unknown-register-edit", "predict",
     setting("model.init_args.sampling.register_edits", [{"operation": "shuffle"}]), "register_edits"),
    ("eval-unknown-sampler", "eval", setting("model.init_args.sampler", "heun"), "sampler"),
    ("eval-zero-steps", "eval", setting("model.init_args.num_inference_steps", 0), "model.num_inference_steps"),
    ("eval-num-samples-zero", "eval", setting("model.init_args.num_samples", 0), "model.num_samples"),
    ("eval-sample-batch-size-negative", "eval", setting("model.init_args.sample_batch_size", -8),
     "model.sample_batch_size"),
    ("eval-num-bootstrap-zero", "eval", setting("model.init_args.num_bootstrap", 0), "model.num_bootstrap"),
    ("eval-confidence-above-one", "eval", setting("model.init_args.confidence", 95), "model.confidence"),
    ("eval-baseline-not-a-generator", "eval", setting("model.init_args.baseline", "ldm"), "model.baseline"),
    ("eval-no-generators", "eval", setting("model.init_args.generators", {}), "model.generators"),
    # -- image and label files
    ("data-root-missing", "segmenter", on_folder_data(lambda s, d: s.set("data.init_args.root", str(d / "nope"))),
     "data.root"),
    ("data-empty-folder", "segmenter", on_folder_data(lambda s, d: [p.unlink() for p in d.rglob("*.nii.gz")]),
     "dataset/images: no volumes"),
    ("data-image-without-label", "segmenter", on_folder_data(lambda s, d: label_of(d).unlink()), "case1.nii.gz"),
    ("data-label-without-image", "segmenter", on_folder_data(lambda s, d: image_of(d).unlink()), "case1.nii.gz"),
    ("data-two-files-one-stem", "segmenter",
     on_folder_data(lambda s, d: (d / "images" / "case1.nii").write_bytes(gzip.decompress(image_of(d).read_bytes()))),
     "case1"),
    ("data-corrupt-image", "segmenter", on_folder_data(lambda s, d: garbage(image_of(d))), "images/case1.nii.gz"),
    ("data-truncated-image", "segmenter", on_folder_data(lambda s, d: truncate(image_of(d))), "images/case1.nii.gz"),
    ("data-truncated-label", "vae", on_folder_data(lambda s, d: truncate(label_of(d, 2))), "labels/case2.nii.gz"),
    ("data-empty-label-file", "segmenter", on_folder_data(lambda s, d: label_of(d).write_bytes(b"")),
     "labels/case1.nii.gz"),
    ("data-shape-mismatch", "segmenter",
     on_folder_data(lambda s, d: nifti_of(label_of(d), labelled_volume(1, shape=(20, 18, 5))[1])),
     "labels/case1.nii.gz"),
    ("data-orientation-mismatch", "segmenter",
     on_folder_data(lambda s, d: nifti_of(label_of(d), labelled_volume(1)[1], np.diag([-1.5, 1.5, 3.0, 1.0]))),
     "labels/case1.nii.gz"),
    ("data-labels-out-of-range", "segmenter",
     on_folder_data(lambda s, d: nifti_of(label_of(d), labelled_volume(1)[1] * 4)), "labels/case1.nii.gz"),
    ("data-labels-not-integers", "segmenter",
     on_folder_data(lambda s, d: nifti_of(label_of(d), labelled_volume(1)[1] * np.float32(0.5))),
     "labels/case1.nii.gz"),
    ("data-image-has-nan", "segmenter",
     on_folder_data(lambda s, d: nifti_of(image_of(d), np.where(labelled_volume(1)[1] > 0, np.nan,
                                                                labelled_volume(1)[0]).astype(np.float32))),
     "images/case1.nii.gz"),
    ("data-4d-image", "segmenter",
     on_folder_data(lambda s, d: nifti_of(image_of(d), np.stack([labelled_volume(1)[0]] * 2, axis=-1))),
     "images/case1.nii.gz"),
    ("data-classes-json-missing", "segmenter", on_folder_data(lambda s, d: (d / "classes.json").unlink()),
     "classes.json"),
    ("data-classes-json-corrupt", "segmenter",
     on_folder_data(lambda s, d: (d / "classes.json").write_text('["background", "disc"')), "classes.json"),
    ("data-one-class-name", "segmenter",
     on_folder_data(lambda s, d: (d / "classes.json").write_text('["background"]')), "classes.json"),
    ("data-no-slice-passes-min-foreground", "segmenter",
     on_folder_data(lambda s, d: s.set("data.init_args.min_foreground", 0.99)), "data.min_foreground"),
    ("data-label-map-out-of-range", "segmenter",
     on_folder_data(lambda s, d: s.set("data.init_args.label_map", {0: 0, 1: 1, 2: 7})), "data.label_map"),
    ("data-label-value-not-in-label-map", "segmenter",
     on_folder_data(lambda s, d: s.set("data.init_args.label_map", {0: 0, 1: 1})), "label_map"),
    ("data-folder-without-root", "segmenter",
     on_folder_data(lambda s, d: s.drop("data.init_args.root")), "data.root"),
    ("data-folder-without-preset", "segmenter", on_folder_data(lambda s, d: s.drop("data.init_args.preset")),
     "data.preset"),
    ("data-manifest-missing", "segmenter", on_folder_data(lambda s, d: (
        s.drop("data.init_args.root"), s.set("data.init_args.manifest", str(d / "manifest.csv")))),
     "manifest.csv"),
    ("data-manifest-names-missing-file", "segmenter", on_folder_data(lambda s, d: (
        (d / "manifest.csv").write_text("image,label\nimages/case0.nii.gz,labels/case9.nii.gz\n"),
        s.drop("data.init_args.root"), s.set("data.init_args.manifest", str(d / "manifest.csv")))),
     "case9.nii.gz"),
    ("data-manifest-bad-split", "segmenter", on_folder_data(lambda s, d: (
        (d / "manifest.csv").write_text("image,label,split\nimages/case0.nii.gz,labels/case0.nii.gz,validation\n"),
        s.drop("data.init_args.root"), s.set("data.init_args.manifest", str(d / "manifest.csv")))),
     "manifest.csv"),
    # -- class counts that disagree between stages
    ("segmenter-classes-differ-from-data", "segmenter", setting("model.init_args.num_classes", 4),
     "model.num_classes"),
    ("ldm-data-classes-differ-from-bundle", "ldm", on_folder_data(), "data: classes"),
    ("eval-data-classes-differ-from-generators", "eval", on_folder_data(), "data: classes"),
    ("eval-segmenter-classes-differ", "eval", segmenter_checkpoint_with_classes(3), "model.segmenter"),
    # -- checkpoints
    ("predict-checkpoint-missing", "predict", setting("ckpt_path", "/nonexistent/last.ckpt"),
     "/nonexistent/last.ckpt"),
    ("predict-checkpoint-corrupt", "predict", broken_artefact("register", garbage, "ckpt_path"), "register.copy.ckpt"),
    ("predict-checkpoint-truncated", "predict", broken_artefact("register", truncate, "ckpt_path"),
     "register.copy.ckpt"),
    ("predict-checkpoint-of-the-segmenter", "predict", setting("ckpt_path", "{segmenter}"), "segmenter"),
    ("predict-register-edits-on-a-baseline", "predict", all_of(
        setting("ckpt_path", "{baseline}"), setting("model.init_args.sampling.register_edits", [{"operation": "ablate"}])),
     "register_edits"),
    ("predict-register-source-is-a-baseline", "predict", setting("model.init_args.sampling.register_edits", [
        {"operation": "interpolate", "source": "{baseline}", "alpha": 0.5}]), "baseline"),
    ("predict-register-source-missing", "predict", setting("model.init_args.sampling.register_edits", [
        {"operation": "interpolate", "source": "/nonexistent/other.ckpt", "alpha": 0.5}]), "/nonexistent/other.ckpt"),
    ("eval-generator-missing", "eval", setting("model.init_args.generators.register", "/nonexistent/ldm.ckpt"),
     "model.generators.register"),
    ("eval-generator-corrupt", "eval", broken_artefact("register", garbage, "model.init_args.generators.register"),
     "model.generators.register"),
    ("eval-generator-truncated", "eval",
     broken_artefact("register", truncate, "model.init_args.generators.register"), "model.generators.register"),
    ("eval-generator-is-a-segmenter", "eval", setting("model.init_args.generators.register", "{segmenter}"),
     "model.generators.register"),
    ("eval-segmenter-missing", "eval", setting("model.init_args.segmenter", "/nonexistent/seg.ckpt"),
     "model.segmenter"),
    ("eval-segmenter-truncated", "eval", broken_artefact("segmenter", truncate, "model.init_args.segmenter"),
     "model.segmenter"),
    ("eval-segmenter-is-an-ldm", "eval", setting("model.init_args.segmenter", "{register}"), "model.segmenter"),
    ("fit-resume-checkpoint-missing", "segmenter", setting("ckpt_path", "/nonexistent/resume.ckpt"),
     "/nonexistent/resume.ckpt"),
    ("fit-resume-checkpoint-of-another-stage", "ldm", setting("ckpt_path", "{segmenter}"), "ckpt_path"),
    # -- autoencoder bundles
    ("bundle-missing", "ldm", setting("model.init_args.autoencoder", "/nonexistent/export"), "/nonexistent/export"),
    ("bundle-folder-without-json", "ldm", broken_artefact("bundle", lambda p: p.unlink(), "model.init_args.autoencoder",
                                                          BUNDLE_CONFIG), BUNDLE_CONFIG),
    ("bundle-weights-missing", "ldm", broken_artefact("bundle", lambda p: p.unlink(), "model.init_args.autoencoder",
                                                      BUNDLE_WEIGHTS), BUNDLE_WEIGHTS),
    ("bundle-weights-corrupt", "ldm", broken_artefact("bundle", garbage, "model.init_args.autoencoder",
                                                      BUNDLE_WEIGHTS), BUNDLE_WEIGHTS),
    ("bundle-weights-truncated", "ldm", broken_artefact("bundle", truncate, "model.init_args.autoencoder",
                                                            BUNDLE_WEIGHTS), BUNDLE_WEIGHTS),
    ("bundle-json-corrupt", "ldm", broken_artefact("bundle", truncate, "model.init_args.autoencoder", BUNDLE_CONFIG),
     BUNDLE_CONFIG),
    ("bundle-json-field-missing", "ldm", broken_artefact("bundle", edit_bundle_json(scale_factor=None),
                                                         "model.init_args.autoencoder", BUNDLE_CONFIG), "scale_factor"),
    ("bundle-json-scale-factor-negative", "ldm", broken_artefact(
        "bundle", edit_bundle_json(scale_factor=-1.0), "model.init_args.autoencoder", BUNDLE_CONFIG), "scale_factor"),
    ("bundle-config-differs-from-weights", "ldm", broken_artefact(
        "bundle", edit_bundle_json(latent_channels=3), "model.init_args.autoencoder", BUNDLE_NETWORK_CONFIG),
     BUNDLE_WEIGHTS),
    ("bundle-network-differs", "ldm", broken_artefact(
        "bundle", edit_bundle_json(_class_name="monai.networks.nets.VQVAE"), "model.init_args.autoencoder",
        BUNDLE_NETWORK_CONFIG), "_class_name"),
    ("bundle-json-image-size-differs", "ldm", broken_artefact(
        "bundle", edit_bundle_json(image_size=[64, 64]), "model.init_args.autoencoder", BUNDLE_CONFIG), "image_size"),
    ("bundle-json-classes-differ", "ldm", broken_artefact(
        "bundle", edit_bundle_json(class_names=["background", "liver"]), "model.init_args.autoencoder", BUNDLE_CONFIG),
     "classes"),
    # -- outputs that cannot be written
    ("vae-export-dir-not-writable", "vae", not_a_folder("model.init_args.export_dir", "export"), "export_dir"),
    ("fit-root-dir-not-writable", "segmenter", not_a_folder("trainer.default_root_dir", "run"), "default_root_dir"),
    ("eval-output-dir-not-writable", "eval", not_a_folder("model.init_args.output_dir", "eval"), "output_dir"),
    ("predict-output-dir-not-writable", "predict", lambda s: (
        not_a_folder("writer", "samples")(s),
        s.config["trainer"]["callbacks"][0]["init_args"].update(output_dir=s.config.pop("writer"))), "output_dir"),
    # -- anatldm predict with DatasetWriter (the nnU-Net / MONAI export)
    ("synthesize-non-empty-folder", "synthesize", lambda s: (
        (s.out / "export" / "Dataset501_Synth").mkdir(parents=True),
        (s.out / "export" / "Dataset501_Synth" / "dataset.json").write_text("{}")), "not empty; set overwrite"),
    ("synthesize-dataset-id-zero", "synthesize", setting("trainer.callbacks", [
        {"class_path": "DatasetWriter", "init_args": {"output_dir": "{inputs}/export", "dataset_id": 0}}]),
     "DatasetWriter.dataset_id"),
    ("synthesize-dataset-id-above-999", "synthesize", setting("trainer.callbacks", [
        {"class_path": "DatasetWriter", "init_args": {"output_dir": "{inputs}/export", "dataset_id": 1000}}]),
     "DatasetWriter.dataset_id"),
    ("synthesize-dataset-name-with-space", "synthesize", setting("trainer.callbacks", [
        {"class_path": "DatasetWriter", "init_args": {"output_dir": "{inputs}/export", "dataset_name": "liver data"}}]),
     "DatasetWriter.dataset_name"),
    ("synthesize-dataset-name-with-dot", "synthesize", setting("trainer.callbacks", [
        {"class_path": "DatasetWriter", "init_args": {"output_dir": "{inputs}/export", "dataset_name": "Liver.v2"}}]),
     "DatasetWriter.dataset_name"),
    ("synthesize-id-taken-by-another-dataset", "synthesize", lambda s: (
        (s.out / "export" / "Dataset501_Other").mkdir(parents=True)), "Dataset501_Other"),
    ("synthesize-pairs-from-a-model-without-head", "synthesize", setting("ckpt_path", "{baseline}"),
     "DatasetWriter.labels"),
    ("synthesize-pseudo-labels-without-segmenter", "synthesize", setting("trainer.callbacks", [
        {"class_path": "DatasetWriter", "init_args": {"output_dir": "{inputs}/export", "labels": "segmenter"}}]),
     "DatasetWriter.segmenter"),
    ("synthesize-segmenter-of-other-classes", "synthesize", all_of(
        segmenter_checkpoint_with_classes(3), lambda s: s.set("trainer.callbacks", [
            {"class_path": "DatasetWriter", "init_args": {"output_dir": "{inputs}/export", "labels": "segmenter",
                                                          "segmenter": s.config["model"]["init_args"].pop("segmenter")}}])),
     "DatasetWriter.segmenter"),
    ("synthesize-unknown-training-data-key", "synthesize", setting("trainer.callbacks", [
        {"class_path": "DatasetWriter", "init_args": {"output_dir": "{inputs}/export",
                                                      "training_data": {"imag_size": 32}}}]),
     "DatasetWriter.training_data.imag_size"),
    ("synthesize-memorisation-quantile-one", "synthesize", setting("trainer.callbacks", [
        {"class_path": "DatasetWriter", "init_args": {"output_dir": "{inputs}/export", "memorisation_quantile": 1.0}}]),
     "DatasetWriter.memorisation_quantile"),
    ("synthesize-quality-filter-min-dice-above-one", "synthesize", setting("trainer.callbacks", [
        {"class_path": "DatasetWriter", "init_args": {"output_dir": "{inputs}/export", "quality_filter": {
            "segmenter": "{segmenter}", "min_dice": 1.5}}}]),
     "DatasetWriter.quality_filter.min_dice"),
    ("synthesize-quality-filter-segmenter-missing", "synthesize", setting("trainer.callbacks", [
        {"class_path": "DatasetWriter", "init_args": {"output_dir": "{inputs}/export", "quality_filter": {
            "segmenter": "/nonexistent/own_split.ckpt", "min_dice": 0.5}}}]),
     "DatasetWriter.quality_filter.segmenter"),
    ("synthesize-quality-filter-rules-percentile", "synthesize", setting("trainer.callbacks", [
        {"class_path": "DatasetWriter", "init_args": {"output_dir": "{inputs}/export", "quality_filter": {
            "rules": True, "rules_config": {"low": 120}}}}]),
     "DatasetWriter.quality_filter.rules_config.low"),
    ("synthesize-quality-filter-with-the-judge", "synthesize", lambda s: (
        s.inputs.mkdir(parents=True, exist_ok=True),
        (s.inputs / "report.json").write_text(json.dumps({"segmenter": str(s.artefacts["segmenter"]), "results": {}})),
        s.set("trainer.callbacks", [{"class_path": "DatasetWriter", "init_args": {
            "output_dir": "{inputs}/export", "report": "{inputs}/report.json",
            "quality_filter": {"segmenter": "{segmenter}", "min_dice": 0.5}}}])),
     "is the evaluation judge"),
    ("synthesize-output-dir-not-writable", "synthesize", lambda s: (
        not_a_folder("writer", "export")(s),
        s.config["trainer"]["callbacks"][0]["init_args"].update(output_dir=s.config.pop("writer"))),
     "DatasetWriter.output_dir"),
    # -- anatldm inspect
    ("inspect-config-missing", "inspect", lambda s: setattr(s, "config_path", s.inputs / "nope.yaml"), "nope.yaml"),
    ("inspect-yaml-syntax-error", "inspect", raw_config("data: [unclosed\n"), "config.yaml"),
    ("inspect-no-data-section", "inspect", raw_config("model:\n  class_path: SegmenterTask\n"), "data"),
    ("inspect-unknown-data-key", "inspect", setting("data.init_args.imag_size", 32), "imag_size"),
    ("inspect-truncated-image", "inspect", on_folder_data(lambda s, d: truncate(image_of(d, 0))),
     "images/case0.nii.gz"),
    ("inspect-preview-not-writable", "inspect", all_of(not_a_folder("unused", "x"), without("unused"),
                                                       arguments("--out", "{inputs}/a_file/preview.png")), "--out"),
]


def _resolve(value: object, setup: Setup) -> object:
    """``{register}``, ``{segmenter}``, ``{inputs}`` ... inside a case's values become real paths."""
    if isinstance(value, str) and "{" in value:
        return value.format(inputs=setup.inputs, **{k: str(v) for k, v in setup.artefacts.items()})
    if isinstance(value, dict):
        return {k: _resolve(v, setup) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, setup) for v in value]
    return value


def snapshot(root: Path) -> dict[str, int]:
    """Every file (its size) and folder (-1) below ``root``."""
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1 for p in root.rglob("*")}


def prepare(case_id: str, tmp_path: Path, artefacts: dict[str, Path]) -> Setup:
    _, stage, breaks, _ = CASES_BY_ID[case_id]
    setup = Setup(tmp_path, stage, artefacts, copy.deepcopy(base_config(stage, tmp_path, artefacts)))
    breaks(setup)
    setup.config = _resolve(setup.config, setup)
    setup.extra_args = _resolve(setup.extra_args, setup)
    (tmp_path / "inputs").mkdir(exist_ok=True)
    return setup


def assert_clean_failure(code: object, stderr: str, before: dict[str, int], setup: Setup, message: str) -> None:
    lines = stderr.strip().splitlines()
    assert code not in (0, None), f"exit code {code}; stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert lines and lines[-1].startswith("anatldm: error: "), stderr[-3000:]
    errors = [line for line in lines if line.startswith("anatldm: error: ")]
    assert len(errors) == 1, errors
    assert message in lines[-1], f"{message!r} not named in: {lines[-1]}"
    after = snapshot(setup.root)
    written = sorted(path for path, size in after.items()
                     if before.get(path) != size and not path.startswith("cache"))
    assert not written, f"written despite the error: {written}"
    cache = setup.root / "cache"
    if cache.is_dir():  # a slice cache appears only complete, and only for valid data
        assert not [p.name for p in cache.iterdir() if p.name.startswith(".")], "half-written cache"


CASES_BY_ID = {case[0]: case for case in CASES}
assert len(CASES_BY_ID) == len(CASES), "duplicate case id"


@pytest.fixture(scope="module")
def artefacts(tiny_bundle: Path, stage_checkpoints: dict[str, Path]) -> dict[str, Path]:
    return {**stage_checkpoints, "bundle": tiny_bundle}


@pytest.mark.parametrize("case_id", [case[0] for case in CASES])
def test_bad_input(case_id: str, tmp_path: Path, artefacts: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    message = CASES_BY_ID[case_id][3]
    setup = prepare(case_id, tmp_path, artefacts)
    args = setup.args()
    message = str(_resolve(message, setup))
    before = snapshot(tmp_path)
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as done:
        code = done.code
    except Exception as error:  # the console script would print this as a traceback
        pytest.fail("traceback:\n" + "".join(traceback.format_exception(error))[-4000:])
    assert_clean_failure(code, capsys.readouterr().err, before, setup, message)


CONSOLE_CASES = ["config-yaml-syntax-error", "data-truncated-image", "predict-checkpoint-truncated",
                 "eval-segmenter-is-an-ldm", "bundle-weights-corrupt"]


@pytest.mark.parametrize("case_id", CONSOLE_CASES)
def test_console_script(case_id: str, tmp_path: Path, artefacts: dict[str, Path]) -> None:
    """The same rows through the installed ``anatldm`` script: real stderr, real exit code."""
    setup = prepare(case_id, tmp_path, artefacts)
    args = setup.args()
    before = snapshot(tmp_path)
    result = subprocess.run([ANATLDM, *args], capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 2
    assert_clean_failure(result.returncode, result.stderr, before, setup, str(_resolve(CASES_BY_ID[case_id][3], setup)))


def test_case_count() -> None:
    """The issue asks for the number of bad inputs covered."""
    assert len(CASES) >= 100
    assert {stage for _, stage, _, _ in CASES} == set(COMMANDS)
