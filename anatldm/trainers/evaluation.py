"""``EvaluationTask``: ``anatldm test`` — the judge's gate, then realism and anatomical accuracy.

The protocol is fixed in advance (docs/method.md, 'Evaluation protocol'). A segmenter trained on real slices only (the
judge) labels every slice. The plausibility rules are calibrated on the judge's predictions of
held-out real calibration slices, so real and generated slices face the same judge noise. Before
any generator number, the judge must pass its gate: Dice per class on real test slices, real test
slices passing the rules, left-right-flipped and level-spliced real slices failing them, and an
early checkpoint of each generator scoring below its final one. Then every model (several
training seeds per arm) samples the same seeds; per model, pooled per arm and paired per seed pair
against the baseline arm, every metric comes with a bootstrap interval
(:mod:`anatldm.evaluation.statistics`), and ``report.md`` opens with the gate's verdict.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import CatMetric
from torchmetrics.segmentation import DiceScore

from anatldm.diffusion.schedulers import SamplerName
from anatldm.errors import (
    ConfigError,
    check_output_folder,
)
from anatldm.evaluation.controls import flip_left_right, splice_levels
from anatldm.evaluation.protocol import EvaluationProtocol, case_dice
from anatldm.evaluation.report import (
    ClaimCriteria,
    GateThresholds,
)
from anatldm.evaluation.results import (
    CONTROLS,
    as_dataclass,
    as_list,
    build_report,
    write_edit_report,
    write_report,
)
from anatldm.evaluation.statistics import (
    ModelRecord,
)
from anatldm.interpret import NoRegisterForClassError
from anatldm.interpret.effects import edit_effect, edit_specificity
from anatldm.metrics import (
    AnatomyRules,
    PlausibilityRate,
    PooledEncoderFeatures,
    make_fid_kid,
)
from anatldm.models.networks import bottleneck_module
from anatldm.models.registers import RegisterEdit
from anatldm.pipelines import AnatomicalLDMPipeline
from anatldm.pipelines.ldm import as_register_edit
from anatldm.trainers.base import AnatomyTask, load_task
from anatldm.trainers.ldm import AnatomicalLDMTask
from anatldm.trainers.segmenter import SegmenterTask

__all__ = ["EvaluationTask", "load_task"]

logger = logging.getLogger(__name__)

class EvaluationTask(AnatomyTask):
    """Compare generator arms (LDM checkpoints, one per training seed) on real test slices.

    ``anatldm test`` fits the plausibility rules on the judge's labels of calibration slices, runs
    the real test split and the slice-level controls through the judge (gate), then samples
    ``num_samples`` (image, mask) pairs from every model with the seeds ``seed .. seed + N - 1``
    and the chosen sampler (EMA weights, as saved), and computes for each: plausibility rate,
    Fréchet segmentation distance, area Wasserstein-1, FID and KID on the judge's features,
    self-consistency Dice (models with a head), pairwise MS-SSIM and the RMSE to the nearest
    training slice. Writes ``report.json``, ``report.md``, ``rules.json`` and sample grids into
    ``output_dir``.

    Args:
        generators: arm name -> one ``AnatomicalLDMTask`` checkpoint or a list, one per training
            seed; the k-th checkpoints of two arms form a seed pair (same seed, same data order).
        segmenter: ``SegmenterTask`` checkpoint, the judge (trained on real slices only).
        baseline: the arm the others are compared with (``None``: no comparison).
        training_seeds: the training seed of the k-th checkpoint of every arm (for the report).
        early_checkpoints: arm -> early checkpoint(s) of its first models (the generator negative
            control: the final checkpoint must score higher on the primary metric).
        num_samples: samples per model; ``None`` = the number of real test slices.
        sampler: ``"ddpm"``, ``"ddim"``, ``"dpm_solver++"``, ``"dpm_solver++_sde"`` or ``"unipc"``.
        num_inference_steps: denoiser calls per sample.
        seed: sample ``i`` of every model uses seed ``seed + i``.
        sample_batch_size: samples generated at once.
        calibration: fit the rules on the judge's labels of calibration slices (``"judge"``) or on
            their ground truth (``"ground_truth"``, for data sets with a near-perfect judge).
        calibration_subjects: phantom data: calibration slices from this many extra phantom
            subjects (seed ``calibration_phantom_seed``, disjoint from every evaluation subject);
            0 or folder data: the validation split.
        calibration_phantom_seed: phantom seed of the calibration subjects.
        rules: options of :meth:`AnatomyRules.fit` (e.g. ``layout: true``, ``range_rules``,
            ``min_component_pixels``).
        gate: the judge's pre-registered gate (``None``: :class:`GateThresholds` defaults).
        claim: the claim's success criteria (``None``: no verdict).
        num_bootstrap: bootstrap resamples of mean statistics.
        num_bootstrap_costly: resamples of FSD, FID and KID intervals.
        confidence: interval level.
        kid_subset_size: samples per KID subset (clipped to the smaller set).
        max_training_slices: training slices compared for memorisation (evenly spaced subset).
        inception_weights: local InceptionV3 weights for a standard FID; ``None`` uses the
            judge's features (the report says which).
        output_dir: where the report goes.
        edits: name -> register edits (by index or by class) applied to ``edit_generator``'s first
            model; each is measured against the unedited samples of the same seeds.
        edit_generator: the arm the edits apply to (default: the first with registers).
        edit_samples: samples per edit (default ``num_samples``).
    """

    def __init__(
        self,
        generators: dict[str, str | list[str]],
        segmenter: str,
        baseline: str | None = None,
        training_seeds: list[int] | None = None,
        early_checkpoints: dict[str, str | list[str]] | None = None,
        num_samples: int | None = None,
        sampler: SamplerName = "ddim",
        num_inference_steps: int = 50,
        seed: int = 0,
        sample_batch_size: int = 16,
        calibration: Literal["judge", "ground_truth"] = "judge",
        calibration_subjects: int = 0,
        calibration_phantom_seed: int = 2,
        rules: dict[str, Any] | None = None,
        gate: GateThresholds | None = None,
        claim: ClaimCriteria | None = None,
        num_bootstrap: int = 1000,
        num_bootstrap_costly: int = 200,
        confidence: float = 0.95,
        kid_subset_size: int = 100,
        max_training_slices: int = 2000,
        inception_weights: str | None = None,
        output_dir: str = "runs/eval",
        edits: dict[str, list[RegisterEdit]] | None = None,
        edit_generator: str | None = None,
        edit_samples: int | None = None,
    ) -> None:
        if not generators:
            raise ConfigError("model.generators is empty: name at least one LDM checkpoint")
        counts = {name: len(as_list(paths)) for name, paths in generators.items()}
        if min(counts.values()) < 1:
            raise ConfigError(f"model.generators: every arm needs at least one checkpoint, got {counts}")
        if baseline is not None and baseline not in generators:
            raise ConfigError(f"model.baseline '{baseline}' is not one of the generators {sorted(generators)}")
        if baseline is not None and len(set(counts.values())) > 1:
            raise ConfigError(f"model.generators: arms compared with a baseline need one checkpoint per training "
                              f"seed each, got {counts}")
        if training_seeds is not None and len(training_seeds) != max(counts.values()):
            raise ConfigError(f"model.training_seeds has {len(training_seeds)} entries for "
                              f"{max(counts.values())} checkpoints per arm")
        for name, paths in (early_checkpoints or {}).items():
            if name not in generators:
                raise ConfigError(f"model.early_checkpoints: '{name}' is not one of the generators {sorted(generators)}")
            if len(as_list(paths)) > counts[name]:
                raise ConfigError(f"model.early_checkpoints.{name}: more early checkpoints than final ones")
        claim = as_dataclass(ClaimCriteria, claim) if claim is not None else None
        if claim is not None and (baseline is None or claim.arm not in generators or claim.arm == baseline):
            raise ConfigError(f"model.claim.arm '{claim.arm}' must be a generator other than model.baseline")
        for key, value in (("num_samples", num_samples), ("num_inference_steps", num_inference_steps),
                           ("sample_batch_size", sample_batch_size), ("num_bootstrap", num_bootstrap),
                           ("num_bootstrap_costly", num_bootstrap_costly)):
            if value is not None and value < 1:
                raise ConfigError(f"model.{key} must be at least 1, got {value}")
        if calibration_subjects < 0:
            raise ConfigError(f"model.calibration_subjects must be >= 0, got {calibration_subjects}")
        if edit_generator is not None and edit_generator not in generators:
            raise ConfigError(f"model.edit_generator '{edit_generator}' is not one of the generators {sorted(generators)}")
        if edit_samples is not None and edit_samples < 1:
            raise ConfigError(f"model.edit_samples must be at least 1, got {edit_samples}")
        self.edits = {name: [as_register_edit(edit, f"model.edits.{name}") for edit in edit_list]
                      for name, edit_list in (edits or {}).items()}
        if not 0 < confidence < 1:
            raise ConfigError(f"model.confidence must lie in (0, 1), got {confidence}")
        try:
            AnatomyRules.fit(np.zeros((2, 4, 4), dtype=np.int64), ["background", "a"], **(rules or {}))
        except TypeError as err:
            raise ConfigError(f"model.rules: {err}") from None
        except ValueError as err:
            if "at least two calibration slices" not in str(err):
                raise ConfigError(f"model.rules: {err}") from None
        check_output_folder(output_dir, "model.output_dir")
        super().__init__()

    # -- construction ------------------------------------------------------------------------
    @property
    def arms(self) -> dict[str, list[str]]:
        """Arm -> its model names (``arm`` alone for one checkpoint, else ``arm/seed<s>``)."""
        hp = self.hparams
        seeds = hp.training_seeds
        out = {}
        for arm, paths in hp.generators.items():
            paths = as_list(paths)
            out[arm] = [arm] if isinstance(hp.generators[arm], str) else \
                [f"{arm}/seed{seeds[k] if seeds else k}" for k in range(len(paths))]
        return out

    def configure_model(self) -> None:
        """Load the judge and the generators (Lightning's lazy-construction hook).

        Not done in ``__init__``: a task built inside another task's ``__init__`` would let
        Lightning's ``save_hyperparameters`` frame inspection mix the two argument lists.
        """
        if hasattr(self, "segmenter"):
            return
        hp = self.hparams
        self.segmenter = load_task(SegmenterTask, hp.segmenter, "model.segmenter").eval()
        models, self.checkpoints, self.early = {}, {}, {}
        for arm, names in self.arms.items():
            paths = as_list(hp.generators[arm])
            for k, (name, path) in enumerate(zip(names, paths, strict=True)):
                key = f"model.generators.{arm}" + ("" if len(paths) == 1 else f"[{k}]")
                models[name] = load_task(AnatomicalLDMTask, path, key).pipeline.eval()
                self.checkpoints[name] = path
            for k, path in enumerate(as_list((hp.early_checkpoints or {}).get(arm, []))):
                name = f"{names[k]}@early"
                models[name] = load_task(AnatomicalLDMTask, path, f"model.early_checkpoints.{arm}").pipeline.eval()
                self.checkpoints[name] = path
                self.early.setdefault(arm, []).append(name)
        self.generators = nn.ModuleDict({_module_key(name): model for name, model in models.items()})
        self.class_names = list(next(iter(self.generators.values())).class_names)
        for name, generator in models.items():
            if list(generator.class_names) != self.class_names:
                raise ConfigError(f"model.generators ({name}): classes {generator.class_names} differ from "
                                  f"{self.class_names}")
        if self.segmenter.hparams.num_classes != len(self.class_names):
            raise ConfigError(f"model.segmenter has {self.segmenter.hparams.num_classes} classes, the generators "
                              f"{len(self.class_names)}")
        if self.edits:
            self.edit_generator = hp.edit_generator or next(
                (arm for arm, names in self.arms.items() if self.model(names[0]).denoiser.registers is not None), None)
            generator = self.model(self.arms[self.edit_generator][0]) if self.edit_generator else None
            if generator is None or generator.denoiser.registers is None:
                raise ConfigError(f"model.edits: generator '{self.edit_generator}' has no register bank"
                                  if self.edit_generator else "model.edits: no generator has a register bank")
            for name, edits in self.edits.items():  # fail on a bad edit before any sampling
                generator.check_edits(edits, f"model.edits.{name}")
        self.features = PooledEncoderFeatures(self.segmenter.network, self.segmenter.feature_channels,
                                              layer=bottleneck_module(self.segmenter.network))
        self.requires_grad_(False)
        self.ceiling_dice = DiceScore(num_classes=len(self.class_names), include_background=False,
                                      average="none", input_format="index")

    def model(self, name: str) -> AnatomicalLDMPipeline:
        return self.generators[_module_key(name)]

    def check_inputs(self, datamodule) -> None:
        """Every checkpoint loads, and the judge, the generators and the data share classes."""
        self.configure_model()
        if list(getattr(datamodule, "class_names", [])) != self.class_names:
            raise ConfigError(f"data: classes {getattr(datamodule, 'class_names', None)} differ from the "
                              f"generators' {self.class_names}")

    # -- rules, real test slices, controls ----------------------------------------------------
    def segment(self, images: Tensor) -> Tensor:
        """Judge label maps ``(B, H, W)`` of images ``(B, 1, H, W)`` in [-1, 1]."""
        return self.segmenter(images).argmax(1)

    @torch.no_grad()
    def _segment_all(self, images: np.ndarray) -> np.ndarray:
        out = [self.segment(torch.from_numpy(np.asarray(images[s:s + 64]))[:, None].float().to(self.device)).cpu()
               for s in range(0, len(images), 64)]
        return torch.cat(out).numpy()

    def _calibration_slices(self, datamodule) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """Images, ground-truth masks and subjects of the calibration slices, and what they are."""
        hp = self.hparams
        if hp.calibration_subjects > 0 and getattr(datamodule.hparams, "source", None) == "phantom":
            settings = {**{k: v for k, v in dict(datamodule.hparams).items() if not k.startswith("_")}, "num_subjects": hp.calibration_subjects,
                        "phantom_seed": hp.calibration_phantom_seed, "split_fractions": (1.0, 0.0, 0.0)}
            if hp.calibration_phantom_seed == datamodule.hparams.phantom_seed:
                raise ConfigError(f"model.calibration_phantom_seed {hp.calibration_phantom_seed} is the evaluation "
                                  f"data's phantom seed: calibration subjects must be disjoint from them")
            calibration = type(datamodule)(**settings)
            calibration.prepare_data()
            calibration.setup("predict")  # only the slices: no split is needed
            cache, indices = calibration.cache, np.sort(calibration.datasets["train"].indices)
            what = f"{hp.calibration_subjects} extra phantom subjects (seed {hp.calibration_phantom_seed})"
        else:
            cache, indices = datamodule.cache, np.sort(datamodule.datasets["val"].indices)
            what = "the validation split"
            if len(indices) == 0:
                raise ConfigError("model.calibration: the validation split is empty; give the data a validation "
                                  "fraction or set model.calibration_subjects (phantoms)")
        return (np.asarray(cache.images[indices]), np.asarray(cache.masks[indices]).astype(np.int64),
                np.asarray(cache.subjects[indices]), f"{len(indices)} slices of {what}")

    def on_test_start(self) -> None:
        self._start_time = time.monotonic()
        datamodule = self.trainer.datamodule
        self.check_inputs(datamodule)
        hp = self.hparams
        images, masks, subjects, what = self._calibration_slices(datamodule)
        labels = masks if hp.calibration == "ground_truth" else self._segment_all(images)
        source = f"{'ground truth' if hp.calibration == 'ground_truth' else 'judge predictions'} of {what}"
        self.rules = AnatomyRules.fit(labels, self.class_names, subjects=subjects, source=source, **(hp.rules or {}))
        self.lateralised = self.rules.lateralised_classes(labels)
        logger.info("rules: %s; lateralised classes (the flip control): %s", source,
                    [self.class_names[c] for c in self.lateralised] or "none")
        train = np.sort(datamodule.datasets["train"].indices)
        spaced = np.linspace(0, len(train) - 1, num=min(len(train), hp.max_training_slices)).astype(int)
        self.training_images = torch.from_numpy(np.asarray(datamodule.cache.images[train[spaced]]))[:, None]
        self.num_test_slices = len(datamodule.datasets["test"])
        floor = np.linspace(0, len(train) - 1, num=min(len(train), self.num_test_slices)).astype(int)
        self.floor_images = torch.from_numpy(np.asarray(datamodule.cache.images[train[floor]]))[:, None]
        self.real_plausibility = PlausibilityRate(self.rules).to(self.device)
        self.controls = {name: PlausibilityRate(self.rules).to(self.device) for name in CONTROLS}
        self.real_images: list[Tensor] = []
        self.real_masks: list[Tensor] = []
        self.real_keys: list[tuple[np.ndarray, np.ndarray]] = []
        self.subject_index = {name: k for k, name in enumerate(datamodule.cache.subject_names)}
        self.overlap = {key: CatMetric().to(self.device) for key in ("intersection", "cardinality", "subject")}
        self.protocol = EvaluationProtocol(hp, self.rules, self.class_names, self.segment, self._new_kid,
                                           self.training_images, self.floor_images, self.device, self.global_rank,
                                           self.trainer.world_size)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        masks = self.segment(images)
        self.ceiling_dice.update(masks, batch["mask"])
        classes = torch.arange(1, len(self.class_names), device=masks.device)[:, None, None, None]  # (C - 1, 1, 1, 1)
        predicted, truth = masks[None] == classes, batch["mask"][None] == classes  # (C - 1, B, H, W)
        self.overlap["intersection"].update((predicted & truth).sum(dim=(2, 3)).T.float())  # (B, C - 1)
        self.overlap["cardinality"].update((predicted.sum(dim=(2, 3)) + truth.sum(dim=(2, 3))).T.float())
        self.overlap["subject"].update(torch.tensor([float(self.subject_index[s]) for s in batch["subject"]],
                                                    device=masks.device))
        self.real_plausibility.update(masks)
        lateral = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for c in self.lateralised:
            lateral |= (batch["mask"] == c).flatten(1).any(dim=1)
        if lateral.any():
            self.controls["flipped"].update(self.segment(flip_left_right(images[lateral])))
        generator = next(iter(self.generators.values()))  # every generator shares the autoencoder
        latents = generator.autoencoder.encode(images)[0] * generator.scale_factor  # posterior mean
        self.controls["reconstructed"].update(self.segment(generator.decode(latents)))
        self.real_images.append(images.cpu())
        self.real_masks.append(masks.cpu())
        self.real_keys.append((np.asarray(batch["subject"]), batch["position"].cpu().numpy()))

    def _case_dice(self) -> dict[str, float]:
        """The judge's Dice per class over test *subjects* (cases), as nnU-Net and the Decathlon report it.

        For subject ``s`` and class ``c``: ``2 * sum |P ∩ G| / sum (|P| + |G|)`` over its test slices; then
        the mean over subjects that have the class in the ground truth or the prediction. A slice-wise
        mean (``judge_dice_per_slice``) is also reported; it counts a 5-pixel organ tip as much as a whole
        liver, and is lower.
        """
        intersection = self.overlap["intersection"].compute().reshape(-1, len(self.class_names) - 1).cpu().numpy()
        cardinality = self.overlap["cardinality"].compute().reshape(-1, len(self.class_names) - 1).cpu().numpy()
        subjects = self.overlap["subject"].compute().reshape(-1).cpu().numpy()
        return case_dice(intersection, cardinality, subjects, self.class_names)

    # -- generators, metrics, report -----------------------------------------------------------
    def on_test_epoch_end(self) -> None:
        hp = self.hparams
        real_images, real_masks = torch.cat(self.real_images), torch.cat(self.real_masks)
        subjects = np.concatenate([k[0] for k in self.real_keys])
        positions = np.concatenate([k[1] for k in self.real_keys])
        if len(real_images) >= 2:
            spliced = splice_levels(real_images, subjects, positions, seed=hp.seed)
            for start in range(0, len(spliced), hp.sample_batch_size):
                self.controls["spliced"].update(self.segment(spliced[start:start + hp.sample_batch_size].to(self.device)))
        ceiling = self.ceiling_dice.compute()  # (C - 1,)
        per_slice = {name: float(ceiling[c - 1]) for c, name in enumerate(self.class_names) if c > 0}
        judge_dice = self._case_dice()
        real, train_features = self.protocol.real_record(real_images, real_masks)
        num_samples = hp.num_samples or self.num_test_slices
        records: dict[str, ModelRecord] = {}
        kept: dict[str, dict] = {}
        for name, path in self.checkpoints.items():
            logger.info("evaluating %s (%s): %d samples, %s with %d steps", name, path, num_samples, hp.sampler,
                        hp.num_inference_steps)
            records[name], kept[name] = self.protocol.sample_model(self.model(name), self._seeds(num_samples), num_samples)
            records[name].checkpoint = path
        control_rates = {name: metric.per_sample().cpu().numpy() for name, metric in self.controls.items()
                         if metric.gathered("passed").numel() > 0}
        real_passed = self.real_plausibility.per_sample().cpu().numpy()
        edits, edit_samples = self._evaluate_edits() if self.edits else ({}, {})
        if not self.trainer.is_global_zero:
            return
        report = build_report(hp, self.arms, self.early, self.rules, self.class_names, self.num_test_slices,
                              getattr(self.trainer.datamodule, "content_hash", None),
                              time.monotonic() - self._start_time, records, real, train_features, judge_dice,
                              per_slice, real_passed, control_rates, num_samples)
        if edits:
            report["edits"] = edits
        write_report(hp.output_dir, report, self.rules, kept, self.class_names, hp.seed, self.trainer.world_size)
        if edits:
            write_edit_report(hp.output_dir, edits, edit_samples, self.model(self.arms[self.edit_generator][0]),
                              self.edits, self.edit_generator, self.class_names, hp.confidence, hp.seed,
                              self.trainer.world_size)
        for experiment_logger in self.loggers:
            experiment_logger.log_metrics({f"{name}/{metric}": values["value"]
                                           for name, metrics in report["results"].items()
                                           for metric, values in metrics.items()
                                           if isinstance(values, dict) and "value" in values})

    def _seeds(self, num_samples: int) -> list[int]:
        """This rank's share of the seeds ``seed ... seed + num_samples - 1``."""
        rank, world = self.global_rank, self.trainer.world_size
        return [self.hparams.seed + i for i in range(rank, num_samples, world)]

    def _new_kid(self, num_samples: int):
        hp = self.hparams
        subset = max(2, min(hp.kid_subset_size, num_samples, self.num_test_slices))  # KID refuses larger subsets
        return make_fid_kid(self.features, kid_subset_size=subset, kid_subsets=10,
                            inception_weights=hp.inception_weights, seed=hp.seed)

    def _evaluate_edits(self) -> tuple[dict, dict]:
        """Every edit of ``edits`` against the unedited samples of the same seeds."""
        hp = self.hparams
        generator = self.model(self.arms[self.edit_generator][0])
        seeds = self._seeds(hp.edit_samples or hp.num_samples or self.num_test_slices)
        logger.info("register edits of %s: %d samples each", self.edit_generator, len(seeds))
        base_areas, base_plausible, *base_kept = self.protocol.segmented_samples(generator, seeds,
                                                                        generator.denoiser.registers.tokens)
        results, kept = {}, {"unedited": base_kept}
        for name, edits in self.edits.items():
            try:
                edited = generator.edit_registers(list(edits), "model.register_edits")
            except NoRegisterForClassError as err:  # the trained model has no register for that class
                logger.warning("edit %s skipped: %s", name, err)
                results[name] = {"generator": self.edit_generator, "edits": [dataclasses.asdict(e) for e in edits],
                                 "skipped": str(err)}
                continue
            areas, plausible, *kept[name] = self.protocol.segmented_samples(generator, seeds, edited.tokens)
            effect = edit_effect(base_areas.numpy(), areas.numpy(), base_plausible.numpy(), plausible.numpy(),
                                 self.class_names, hp.num_bootstrap, hp.confidence, hp.seed)
            results[name] = {"generator": self.edit_generator,
                             "edits": [dataclasses.asdict(edit) for edit in edits],
                             "resolved": list(edited.applied), "effect": effect}
            targets = list(dict.fromkeys(c for edit in edits for c in edit.classes or []))
            if targets:  # off-target / target |area change| (lower is more specific)
                results[name]["specificity"] = edit_specificity(base_areas.numpy(), areas.numpy(), self.class_names,
                                                                targets, hp.num_bootstrap, hp.confidence, hp.seed)
        return results, kept



def _module_key(name: str) -> str:
    """A ``ModuleDict`` key for a model name (which may hold ``/``, ``.`` and ``@``)."""
    return name.replace("/", "__").replace(".", "_").replace("@", "___")
