"""``DatasetWriter``: ``anatldm predict`` writes an nnU-Net v2 / MONAI data set with a data card.

The thin Lightning part of :mod:`anatldm.export`: it draws the samples' label maps (the model's
anatomy head, or a segmenter's pseudo-labels), scores each sample against the training slices
as it is generated, and hands files to :class:`~anatldm.export.nnunet.NNUNetDatasetBuilder`.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from anatldm import __version__
from anatldm.errors import ConfigError, check_checkpoint_file, check_output_folder
from anatldm.export.datacard import (
    evaluation_section,
    file_sha256,
    licence_note,
    render_datacard,
    training_data_description,
)
from anatldm.export.filter import (
    FilterDecision,
    QualityFilterConfig,
    drops_by_criterion,
    filter_decisions,
    filter_summary,
)
from anatldm.export.geometry import (
    NNUNET_2D_SPACING_FACTOR,
    NiftiSliceWriter,
    in_plane_spacing,
    intensity_description,
    to_raw_intensity,
)
from anatldm.export.memorisation import (
    MemorisationReference,
    audit_summary,
    memorisation_reference,
    save_flagged_pairs,
)
from anatldm.export.nnunet import (
    NNUNetDatasetBuilder,
    check_dataset_id,
    check_dataset_name,
    check_export_target,
    label_dtype,
)
from anatldm.metrics.rules import AnatomyRules
from anatldm.pipelines.ldm import AnatomicalLDMPipelineOutput
from anatldm.visualize import save_overlay_grid

__all__ = ["DatasetWriter"]

logger = logging.getLogger(__name__)

_HPARAMS_NOT_ARGUMENTS = ("_class_path", "_instantiator")


def synthetic_case_id(seed: int) -> str:
    """The case id of the sample drawn with ``seed``."""
    return f"synth_{seed:06d}"


class DatasetWriter(BasePredictionWriter):
    """Write the generated pairs as an nnU-Net v2 raw dataset + MONAI datalist + data card.

    ``anatldm predict --config configs/synthesize.yaml`` writes
    ``<output_dir>/Dataset<ID>_<name>/``: ``imagesTr/synth_<seed>_0000.nii.gz``,
    ``labelsTr/synth_<seed>.nii.gz``, ``dataset.json``, ``datalist.json``, ``datacard.json``,
    ``DATACARD.md``, ``preview.png`` and, when samples are flagged, ``memorisation_flagged.png``.
    Everything is written into a hidden sibling folder, checked with
    :func:`anatldm.export.check_dataset` and renamed into place at the end: a failed or
    interrupted export leaves nothing half-written. Geometry and intensity: see
    :mod:`anatldm.export.geometry` (single-slice RAS+ volumes, nnU-Net's 2D spacing convention, CT
    in HU, MRI in the normalised training scale).

    The quality filter (:mod:`anatldm.export.filter`, ``quality_filter``) leaves out samples whose
    mask disagrees with a segmenter trained on the user's own training split or breaks anatomy
    rules fitted on that split; the card lists every dropped sample's seed and reasons. The
    memorisation audit and the preview see the kept samples only.

    The memorisation audit (:mod:`anatldm.export.memorisation`) compares every sample with the
    model's training slices and with held-out real slices (validation + test split). That data
    is the one the checkpoint was trained on (Lightning stores the data module's settings in it);
    ``training_data`` overrides single settings, e.g. ``{cache_dir: runs/cache}``.

    Args:
        output_dir: folder that receives ``Dataset<ID>_<name>/``.
        dataset_id: nnU-Net dataset id, 1-999 (nnU-Net suggests 500+ for your own data sets).
        dataset_name: ASCII letters, digits, ``_`` and ``-``.
        labels: ``"head"``: the model's anatomy head (needs a model with a head);
            ``"segmenter"``: pseudo-labels of ``segmenter`` (any model, baseline included).
        segmenter: ``SegmenterTask`` checkpoint for ``labels: segmenter``.
        channel_name: nnU-Net channel name; ``None``: ``"CT"`` for the CT preset (nnU-Net's CT
            normalisation), ``"MRI"`` for the MRI preset, else ``"image"``.
        include_real: also export every real training slice (case ids ``real_*``, marked
            ``"source": "real"`` in the datalist and the card).
        memorisation_audit: run the memorisation audit (it needs the training data).
        memorisation_quantile: flag samples closer than this quantile of the held-out slices'
            nearest-training distances.
        drop_memorised: leave flagged samples out of the export (they stay listed in the card).
        training_data: ``AnatomyDataModule`` settings overriding those stored in the checkpoint.
        report: ``report.json`` of ``anatldm test`` whose results for this model go in the card.
        report_model: the model's name in ``report`` (default: the one with this checkpoint).
        overwrite: replace an existing dataset folder of the same name.
        preview_size: samples in ``preview.png``.
        quality_filter: keep only samples that pass it (:class:`~anatldm.export.filter.QualityFilterConfig`);
            ``None``: keep every sample.
    """

    def __init__(self, output_dir: str = "synthetic", dataset_id: int = 501, dataset_name: str = "AnatLDMSynthetic",
                 labels: Literal["head", "segmenter"] = "head", segmenter: str | None = None,
                 channel_name: str | None = None, include_real: bool = False, memorisation_audit: bool = True,
                 memorisation_quantile: float = 0.01, drop_memorised: bool = False,
                 training_data: dict[str, Any] | None = None, report: str | None = None,
                 report_model: str | None = None, overwrite: bool = False, preview_size: int = 16,
                 quality_filter: QualityFilterConfig | None = None) -> None:
        super().__init__(write_interval="batch")
        check_dataset_id(dataset_id, "DatasetWriter.dataset_id")
        check_dataset_name(dataset_name, "DatasetWriter.dataset_name")
        check_output_folder(output_dir, "DatasetWriter.output_dir")
        check_export_target(output_dir, dataset_id, dataset_name, overwrite, "DatasetWriter.output_dir")
        if labels == "segmenter" and segmenter is None:
            raise ConfigError("DatasetWriter.segmenter: labels: segmenter needs a SegmenterTask checkpoint")
        if labels == "head" and segmenter is not None:
            raise ConfigError("DatasetWriter.segmenter is only used with labels: segmenter")
        if segmenter is not None:
            check_checkpoint_file(segmenter, "DatasetWriter.segmenter")
        if not 0 < memorisation_quantile < 1:
            raise ConfigError(f"DatasetWriter.memorisation_quantile must lie in (0, 1), got {memorisation_quantile}")
        if drop_memorised and not memorisation_audit:
            raise ConfigError("DatasetWriter.drop_memorised needs memorisation_audit: true")
        if channel_name is not None and not channel_name.strip():
            raise ConfigError("DatasetWriter.channel_name must not be empty")
        if report is not None and not Path(report).is_file():
            raise ConfigError(f"DatasetWriter.report: {report} not found")
        if preview_size < 0:
            raise ConfigError(f"DatasetWriter.preview_size must be >= 0, got {preview_size}")
        if isinstance(quality_filter, dict):  # from Python
            quality_filter = QualityFilterConfig(**quality_filter)
        if quality_filter is not None and quality_filter.segmenter is not None and labels == "segmenter":
            raise ConfigError(f"{QualityFilterConfig.key}.segmenter compares the anatomy head's masks with a segmenter's; "
                              f"with labels: segmenter the masks already are a segmenter's (use rules: true)")
        self.output_dir = Path(output_dir)
        self.dataset_id, self.dataset_name = dataset_id, dataset_name
        self.labels, self.segmenter_path = labels, segmenter
        self.channel_name = channel_name
        self.include_real = include_real
        self.memorisation_audit, self.memorisation_quantile = memorisation_audit, memorisation_quantile
        self.drop_memorised = drop_memorised
        self.training_overrides = dict(training_data or {})
        self.report_path, self.report_model = report, report_model
        self.overwrite = overwrite
        self.preview_size = preview_size
        self.quality_filter = quality_filter
        self._checked_for: int | None = None
        self._builder: NNUNetDatasetBuilder | None = None

    # -- checks before anything is written (the CLI calls this before ``trainer.predict``) ---
    def check_inputs(self, model, datamodule=None, ckpt_path: str | None = None) -> None:
        """Every setting that needs the model: its head, the segmenter, the training data, the report."""
        if self._checked_for == id(model):
            return
        if not hasattr(model, "pipeline"):
            raise ConfigError(f"DatasetWriter: the model must be an AnatomicalLDMTask, got {type(model).__name__}")
        pipeline = model.pipeline
        head = pipeline.denoiser.head
        if self.labels == "head" and head is None:
            raise ConfigError("DatasetWriter.labels: this model has no anatomy head (a baseline LDM, anatomy_weight 0), "
                              "so its samples come without label maps; set labels: segmenter and name a segmenter "
                              "checkpoint to export pseudo-labelled pairs")
        self.class_names = list(pipeline.class_names)
        self._segmenter = (self._load_segmenter(self.segmenter_path, "DatasetWriter.segmenter")
                           if self.labels == "segmenter" else None)
        quality = self.quality_filter
        self._filter_segmenter = None
        if quality is not None and quality.segmenter is not None:
            self._check_not_the_judge(quality.segmenter)
            self._filter_segmenter = self._load_segmenter(quality.segmenter, f"{QualityFilterConfig.key}.segmenter")
        self.ckpt_path = str(ckpt_path) if ckpt_path else None
        needs_training_data = self.memorisation_audit or self.include_real or (quality is not None and quality.rules)
        self._training_hparams = self._resolve_training_data() if needs_training_data else None
        self._evaluation = (evaluation_section(self.report_path, self.report_model, self.ckpt_path, "DatasetWriter.report")
                            if self.report_path else None)
        self._checked_for = id(model)

    def _load_segmenter(self, path: str, key: str):
        """A ``SegmenterTask`` with the model's classes, frozen."""
        from anatldm.trainers.base import load_task  # trainer modules: imported when used
        from anatldm.trainers.segmenter import SegmenterTask

        segmenter = load_task(SegmenterTask, path, key)
        if segmenter.hparams.num_classes != len(self.class_names):
            raise ConfigError(f"{key}: {path} has {segmenter.hparams.num_classes} classes, the model "
                              f"{len(self.class_names)}")
        return segmenter.eval().requires_grad_(False)

    def _check_not_the_judge(self, path: str) -> None:
        """The filter's segmenter must not be the judge of ``report`` (the same file or the same bytes)."""
        if self.report_path is None:
            return
        from anatldm.errors import read_json

        judge = read_json(self.report_path, ConfigError, "DatasetWriter.report").get("segmenter")
        if not judge or not Path(judge).is_file():
            return
        if Path(judge).resolve() == Path(path).resolve() or file_sha256(judge) == file_sha256(path):
            raise ConfigError(f"{QualityFilterConfig.key}.segmenter: {path} is the evaluation judge of "
                              f"{self.report_path}; filter with a segmenter trained on your own training split "
                              f"(selecting samples by the judge's opinion biases every evaluation with it)")

    def _resolve_training_data(self) -> dict:
        from anatldm.datamodules import AnatomyDataModule

        stored: dict = {}
        if self.ckpt_path:
            checkpoint = torch.load(self.ckpt_path, map_location="cpu", weights_only=True, mmap=True)
            stored = dict(checkpoint.get("datamodule_hyper_parameters") or {})
        accepted = set(inspect.signature(AnatomyDataModule.__init__).parameters) - {"self"}
        for key in self.training_overrides:
            if key not in accepted:
                raise ConfigError(f"DatasetWriter.training_data.{key}: not a setting of AnatomyDataModule")
        if not stored and not self.training_overrides:
            raise ConfigError("DatasetWriter.training_data: the checkpoint holds no data module settings; name the "
                              "model's training data (AnatomyDataModule settings) for the memorisation audit and the "
                              "quality filter's rules, or set memorisation_audit: false and include_real: false")
        hparams = {k: v for k, v in stored.items() if k not in _HPARAMS_NOT_ARGUMENTS and k in accepted}
        hparams.update(self.training_overrides)
        hparams.update(augment=False, num_workers=0)
        return hparams

    # -- Lightning hooks ---------------------------------------------------------------------
    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            raise ConfigError("DatasetWriter writes one data set from one process: set trainer.devices: 1")
        self.check_inputs(pl_module, trainer.datamodule, trainer.ckpt_path)
        for segmenter in (self._segmenter, self._filter_segmenter):
            if segmenter is not None:
                segmenter.to(pl_module.device)
        self.normalization = dict(pl_module.pipeline.normalization)
        self.slices = NiftiSliceWriter(self.normalization)
        self._generation = (None, [])  # the sampling settings and resolved edits of the outputs
        preset = self.normalization.get("preset")
        self.resolved_channel = self.channel_name or {"ct": "CT", "mri": "MRI"}.get(preset, "image")
        self._reference: MemorisationReference | None = None
        self._training_images = self._training_masks = None
        self._data_info: dict = {}
        self._filter_rules: AnatomyRules | None = None
        if self._training_hparams is not None:
            self._load_training_data()
        self._decisions: list[FilterDecision] = []
        self._generated_seeds: list[int] = []  # every sample's seed, dropped ones included
        self._seeds: list[int] = []  # the exported samples' seeds (the memorisation audit's)
        self._case_ids: list[str] = []
        self._distances: list[np.ndarray] = []
        self._nearest: list[np.ndarray] = []
        self._close: dict[int, np.ndarray] = {}  # sample index -> image, for the flagged PNG
        self._counts: dict[str, np.ndarray] = {}  # case id -> pixels per class
        self._dropped: list[str] = []
        self._preview: list[tuple[np.ndarray, np.ndarray, int]] = []
        self._builder = NNUNetDatasetBuilder(self.output_dir, self.dataset_id, self.dataset_name, self.class_names,
                                             self.resolved_channel, self.slices, self.overwrite,
                                             "DatasetWriter.output_dir")
        self._builder.start()

    def _load_training_data(self) -> None:
        from anatldm.datamodules import AnatomyDataModule

        try:
            data = AnatomyDataModule(**self._training_hparams)
        except TypeError as err:
            raise ConfigError(f"DatasetWriter.training_data: {err}") from None
        if list(data.class_names) != self.class_names:
            raise ConfigError(f"DatasetWriter.training_data: classes {data.class_names} differ from the model's "
                              f"{self.class_names}")
        data.setup()
        cache = data.cache
        train = data.datasets["train"].indices
        held_out = np.concatenate([data.datasets[split].indices for split in ("val", "test")])
        self._training_images = np.asarray(cache.images[train], dtype=np.float32)  # (M, H, W)
        self._training_masks = np.asarray(cache.masks[train])
        if self.quality_filter is not None and self.quality_filter.rules:
            self._filter_rules = AnatomyRules.fit(self._training_masks, self.class_names,
                                                  self.quality_filter.fitted_rules,
                                                  subjects=np.asarray(cache.subjects[train]),
                                                  source="ground truth of the model's training split")
        names = [f"{cache.subject_names[int(cache.subjects[i])]}:{int(cache.positions[i])}" for i in train]
        self._training_names = names
        self._data_info = {"content_hash": data.content_hash, "num_training_slices": len(train),
                           "num_held_out_slices": len(held_out),
                           "subjects": {split: len(set(cache.subjects[data.datasets[split].indices].tolist()))
                                        for split in ("train", "val", "test")}}
        if self.memorisation_audit:
            if len(held_out) == 0:
                raise ConfigError("DatasetWriter.training_data: the memorisation audit needs held-out subjects, but "
                                  f"the validation and test splits are empty (split_fractions "
                                  f"{list(data.hparams.split_fractions)})")
            self._reference = memorisation_reference(self._training_images,
                                                     np.asarray(cache.images[held_out], dtype=np.float32),
                                                     self.memorisation_quantile, names)
            logger.info("memorisation audit: %d training slices, %d held-out slices, threshold RMSE %.4f",
                        len(train), len(held_out), self._reference.threshold)

    def write_on_batch_end(self, trainer, pl_module, prediction: AnatomicalLDMPipelineOutput, batch_indices, batch,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        images = prediction.images[:, 0].float().cpu().numpy()  # (B, H, W) in [-1, 1]
        self._generation = (prediction.sampling, prediction.applied_edits)
        if self._segmenter is not None:
            masks = self._segment(self._segmenter, prediction.images, pl_module.device)
        else:
            masks = prediction.masks
        masks = masks.cpu().numpy().astype(label_dtype(len(self.class_names)))  # (B, H, W)
        seeds = list(prediction.seeds)
        self._generated_seeds += seeds
        if self.quality_filter is not None:
            judged = (self._segment(self._filter_segmenter, prediction.images, pl_module.device)
                      if self._filter_segmenter is not None else None)
            decisions = filter_decisions(masks, len(self.class_names), self.quality_filter, judged, self._filter_rules)
            self._decisions += decisions
            kept = [index for index, decision in enumerate(decisions) if decision.keep]
            images, masks, seeds = images[kept], masks[kept], [seeds[index] for index in kept]
            if not kept:
                return
        raw = to_raw_intensity(images, self.normalization)
        if self._reference is not None:
            distance, nearest = self._reference.nearest(images)
            for offset in np.flatnonzero(distance < self._reference.threshold):
                self._close[len(self._seeds) + int(offset)] = images[offset]
            self._distances.append(distance)
            self._nearest.append(nearest)
        for index, seed in enumerate(seeds):
            case_id = synthetic_case_id(seed)
            self._builder.add_case(case_id, raw[index], masks[index], source="synthetic", seed=seed)
            self._counts[case_id] = np.bincount(masks[index].ravel(), minlength=len(self.class_names))
            self._seeds.append(seed)
            self._case_ids.append(case_id)
            if len(self._preview) < self.preview_size:
                self._preview.append((images[index], masks[index], seed))

    @staticmethod
    def _segment(segmenter, images: torch.Tensor, device) -> torch.Tensor:
        """A segmenter's label maps ``(B, H, W)`` of images ``(B, 1, H, W)``."""
        with torch.no_grad():
            return segmenter(images.float().to(device)).argmax(1)

    def on_predict_end(self, trainer, pl_module) -> None:
        builder = self._builder
        if not self._seeds and self._generated_seeds:
            self._fail_empty(f"{QualityFilterConfig.key}: all {len(self._generated_seeds)} samples were dropped "
                             f"({self._drop_reasons()}); nothing was written. Lower min_dice, loosen rules_config, "
                             f"or check the model")
        audit = None
        if self._reference is not None:
            distances, nearest = np.concatenate(self._distances), np.concatenate(self._nearest)
            audit = audit_summary(self._reference, distances, nearest, self._case_ids, self._seeds)
            if audit["flagged"]:
                flagged = [self._case_ids.index(f["case"]) for f in audit["flagged"]]
                save_flagged_pairs(builder.staging / "memorisation_flagged.png",
                                   np.stack([self._close[i] for i in flagged]),
                                   self._training_images[[int(nearest[i]) for i in flagged]],
                                   [(f"{self._case_ids[i]}: RMSE {distances[i]:.3f}",
                                     f"training {self._training_names[int(nearest[i])]}") for i in flagged],
                                   f"flagged (RMSE < {self._reference.threshold:.3f}, the held-out\n"
                                   f"{100 * self.memorisation_quantile:g} % quantile): sample | nearest training slice")
                if self.drop_memorised:
                    for entry in audit["flagged"]:
                        builder.remove_case(entry["case"])
                        self._dropped.append(entry["case"])
        num_synthetic = len(builder.cases)
        if num_synthetic == 0 and self._seeds:
            self._fail_empty(f"DatasetWriter.drop_memorised: all {len(self._seeds)} exported samples were flagged by "
                             f"the memorisation audit and dropped; nothing was written")
        if self.include_real:
            raw = to_raw_intensity(self._training_images, self.normalization)
            for index, name in enumerate(self._training_names):
                mask = self._training_masks[index].astype(label_dtype(len(self.class_names)))
                builder.add_case(f"real_{index:05d}", raw[index], mask, source="real", training_slice=name)
                self._counts[f"real_{index:05d}"] = np.bincount(mask.ravel(), minlength=len(self.class_names))
        if self._preview:
            save_overlay_grid(np.stack([p[0] for p in self._preview]), np.stack([p[1] for p in self._preview]),
                              self.class_names, builder.staging / "preview.png",
                              titles=[f"seed {p[2]}" for p in self._preview])
        card = self._card(pl_module, audit, num_synthetic, len(builder.cases) - num_synthetic)
        builder.write_file("datacard.json", json.dumps(card, indent=2))
        builder.write_file("DATACARD.md", render_datacard(card))
        folder = builder.finish(description=card["dataset"]["description"],
                                extra={"anatldm_intensity": card["dataset"]["intensity"],
                                       "anatldm_normalization": self.normalization,
                                       "licence": card["licence"]})
        self._builder = None
        message = f"wrote {folder} ({card['dataset']['num_cases']} cases)"
        if audit is not None:
            low, high = audit["flagged_fraction_interval"]
            message += (f"; memorisation: {audit['num_flagged']}/{audit['num_samples']} flagged "
                        f"({100 * audit['flagged_fraction']:.1f} % [{100 * low:.1f}, {100 * high:.1f}] %)")
        logger.info(message)

    def _drop_reasons(self) -> str:
        """The quality filter's drops counted by criterion, e.g. ``"dice: 6, rules: 2"``."""
        return ", ".join(f"{name}: {count}" for name, count in drops_by_criterion(self._decisions).items())

    def _fail_empty(self, message: str) -> None:
        self._builder.abort()
        self._builder = None
        raise ConfigError(message)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._builder is not None:
            self._builder.abort()
            self._builder = None

    # -- the data card -----------------------------------------------------------------------
    def _card(self, pl_module, audit: dict | None, num_synthetic: int, num_real: int) -> dict:
        hp, pipeline = pl_module.hparams, pl_module.pipeline
        sampling, applied = self._generation
        sampling = sampling or pipeline.sampling  # the settings the samples were drawn with
        rows, columns = in_plane_spacing(self.normalization)
        height, width = pipeline.image_size
        shape = tuple(self.slices.volume(np.zeros((height, width))).shape)
        spacing_note = "" if self.normalization.get("spacing") else \
            " (nominal 1 mm: the training data kept its native spacing, data.spacing null)"
        has_head = pipeline.denoiser.head is not None
        registers = pipeline.denoiser.registers
        description = training_data_description(self._training_hparams or {}) if self._training_hparams else \
            "the model's training data (not resolved: memorisation_audit and include_real are off)"
        seeds = self._generated_seeds
        exported = [self._counts[case] for case in self._builder.cases]
        counts = np.stack(exported) if exported else np.zeros((0, len(self.class_names)), dtype=np.int64)
        return {
            "anatldm_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "dataset": {
                "folder": self._builder.folder.name, "dataset_id": self.dataset_id, "name": self.dataset_name,
                "description": f"{num_synthetic} synthetic (image, label) slices from anatldm "
                               f"{'with its anatomy head' if self.labels == 'head' else 'pseudo-labelled by a segmenter'}"
                               + (f" and {num_real} real training slices" if num_real else ""),
                "num_cases": num_synthetic + num_real, "num_synthetic": num_synthetic, "num_real": num_real,
                "channel_name": self.resolved_channel, "intensity": intensity_description(self.normalization),
                "normalization": self.normalization,
                "label_dtype": np.dtype(label_dtype(len(self.class_names))).name,
                "geometry": (f"single-slice RAS+ NIfTI volumes of shape {shape}; affine diag "
                             f"{[float(v) for v in np.diag(self.slices.affine)[:3]]} mm: the training slices' in-plane "
                             f"spacing {rows:g} x {columns:g} mm (rows x columns){spacing_note}; out-of-plane "
                             f"{NNUNET_2D_SPACING_FACTOR:g} x the largest in-plane spacing, nnU-Net v2's own "
                             f"representation of 2D images (2D plans, no resampling across slices); image and label "
                             f"share the affine"),
                "dropped_memorised_cases": list(self._dropped),
            },
            "model": {
                "checkpoint": self.ckpt_path,
                "sha256": file_sha256(self.ckpt_path) if self.ckpt_path else None,
                "task": type(pl_module).__name__,
                "description": (f"{type(pl_module).__name__} with {registers.num_registers if registers is not None else 0} "
                                f"anatomical registers and {'an' if has_head else 'no'} anatomy head"),
                "autoencoder": str(hp.get("autoencoder")),
                "hyperparameters": {k: v for k, v in dict(hp).items() if k not in _HPARAMS_NOT_ARGUMENTS},
            },
            "training_data": {"description": description, "settings": self._training_hparams, **self._data_info},
            "generation": {
                "seeds": {"first": min(seeds) if seeds else None, "last": max(seeds) if seeds else None,
                          "count": len(seeds), "all": seeds},
                "sampler": sampling.sampler, "num_inference_steps": sampling.num_inference_steps,
                "guidance": dataclasses.asdict(sampling.guidance),
                "labels": ("the model's anatomy head (argmax of its logits at the end of sampling)" if self.labels == "head"
                           else f"pseudo-labels of the segmenter {self.segmenter_path} (sha256 "
                                f"{file_sha256(self.segmenter_path)})"),
                "register_edits": [dataclasses.asdict(edit) for edit in sampling.edits],
                "register_edits_resolved": applied,
            },
            "classes": [{"value": index, "name": name, "cases": int((counts[:, index] > 0).sum()),
                         "pixels": int(counts[:, index].sum())} for index, name in enumerate(self.class_names)],
            "evaluation": self._evaluation,
            "memorisation": audit,
            "dropped_flagged": bool(self.drop_memorised and audit and audit["flagged"]),
            "quality_filter": self._filter_section(),
            "licence": licence_note(description),
        }

    def _filter_section(self) -> dict | None:
        quality = self.quality_filter
        if quality is None:
            return None
        case_ids = [synthetic_case_id(seed) for seed in self._generated_seeds]
        return filter_summary(quality, self._decisions, case_ids, self._generated_seeds, self._filter_rules,
                              file_sha256(quality.segmenter) if quality.segmenter else None)
