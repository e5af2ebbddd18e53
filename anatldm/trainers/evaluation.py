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

import logging
import time
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.segmentation import DiceScore

from anatldm.diffusion.sampling import GuidanceConfig, check_guidance
from anatldm.diffusion.schedulers import SamplerName
from anatldm.errors import ConfigError
from anatldm.evaluation import arguments, results, slices
from anatldm.evaluation.controls import flip_left_right, splice_levels
from anatldm.evaluation.edits import evaluate_edits
from anatldm.evaluation.head import HeadDice
from anatldm.evaluation.protocol import EvaluationProtocol
from anatldm.evaluation.report import ClaimCriteria, GateThresholds
from anatldm.metrics import (
    AnatomyRules,
    PlausibilityRate,
    PooledEncoderFeatures,
    RulesConfig,
    make_fid_kid,
)
from anatldm.models.networks import bottleneck_module
from anatldm.models.registers import RegisterEdit
from anatldm.pipelines import AnatomicalLDMPipeline
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
        rules: how the rules are learned (:class:`~anatldm.metrics.RulesConfig`, e.g. ``layout:
            true``, ``range_rules``, ``min_component_pixels``; ``None``: its defaults).
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
        guidance: arm -> its sampling guidance (:class:`~anatldm.diffusion.sampling.GuidanceConfig`),
            one for all its checkpoints or a list, one per checkpoint (autoguidance: each final
            checkpoint with the early checkpoint of its own run as ``guide``); arms not named,
            and early checkpoints, are sampled unguided. Network evaluations per sample go to
            the report (``nfe``).
    """

    def __init__(
        self,
        generators: dict[str, str | list[str]], segmenter: str, baseline: str | None = None,
        training_seeds: list[int] | None = None, early_checkpoints: dict[str, str | list[str]] | None = None,
        num_samples: int | None = None, sampler: SamplerName = "ddim", num_inference_steps: int = 50,
        seed: int = 0, sample_batch_size: int = 16,
        calibration: Literal["judge", "ground_truth"] = "judge", calibration_subjects: int = 0,
        calibration_phantom_seed: int = 2, rules: RulesConfig | None = None,
        gate: GateThresholds | None = None, claim: ClaimCriteria | None = None,
        num_bootstrap: int = 1000, num_bootstrap_costly: int = 200, confidence: float = 0.95,
        kid_subset_size: int = 100, max_training_slices: int = 2000, inception_weights: str | None = None,
        output_dir: str = "runs/eval",
        edits: dict[str, list[RegisterEdit]] | None = None, edit_generator: str | None = None,
        edit_samples: int | None = None,
        guidance: dict[str, GuidanceConfig | list[GuidanceConfig]] | None = None,
    ) -> None:
        self.edits = arguments.check_evaluation_arguments(**locals())
        self.guidance = arguments.model_guidance(guidance, generators,
                                                 arguments.model_names(generators, training_seeds))
        super().__init__()

    # -- construction ------------------------------------------------------------------------
    @property
    def arms(self) -> dict[str, list[str]]:
        """Arm -> its model names (``arm`` alone for one checkpoint, else ``arm/seed<s>``)."""
        return arguments.model_names(self.hparams.generators, self.hparams.training_seeds)

    def configure_model(self) -> None:
        """Load the judge and the generators (Lightning's lazy-construction hook).

        Not done in ``__init__``: a task built inside another task's ``__init__`` would let
        Lightning's ``save_hyperparameters`` frame inspection mix the two argument lists.
        """
        if hasattr(self, "segmenter"):
            return
        hp = self.hparams
        self.segmenter = load_task(SegmenterTask, hp.segmenter, "model.segmenter").eval()
        models, self.checkpoints, self.early = arguments.collect_models(
            hp.generators, hp.early_checkpoints, self.arms,
            lambda path, key: load_task(AnatomicalLDMTask, path, key).pipeline.eval())
        self.generators = nn.ModuleDict({arguments.module_key(name): model for name, model in models.items()})
        for name, guidance in self.guidance.items():  # a bad guide fails now, not after the gate
            try:
                guide = models[name].guide_network(models[name].settings(guidance=guidance))
                check_guidance(models[name].denoiser, guidance, guide)
            except ConfigError as err:
                raise ConfigError(f"model.guidance ({name}): {err}") from None
        self.class_names = list(next(iter(self.generators.values())).class_names)
        arguments.check_model_classes(models, self.class_names, self.segmenter.hparams.num_classes)
        if self.edits:
            self.edit_generator = arguments.edit_generator_arm(hp.edit_generator, self.arms, self.model, self.edits)
        self.features = PooledEncoderFeatures(self.segmenter.network, self.segmenter.feature_channels,
                                              layer=bottleneck_module(self.segmenter.network))
        self.requires_grad_(False)
        self.ceiling_dice = DiceScore(num_classes=len(self.class_names), include_background=False,
                                      average="none", input_format="index")

    def model(self, name: str) -> AnatomicalLDMPipeline:
        return self.generators[arguments.module_key(name)]

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

    def on_test_start(self) -> None:
        self._start_time = time.monotonic()
        datamodule = self.trainer.datamodule
        self.check_inputs(datamodule)
        hp = self.hparams
        images, masks, subjects, what = slices.calibration_slices(datamodule, hp.calibration_subjects,
                                                           hp.calibration_phantom_seed)
        labels = masks if hp.calibration == "ground_truth" else self._segment_all(images)
        source = f"{'ground truth' if hp.calibration == 'ground_truth' else 'judge predictions'} of {what}"
        self.rules = AnatomyRules.fit(labels, self.class_names, subjects=subjects, source=source,
                                      config=results.as_dataclass(RulesConfig, hp.rules))
        self.lateralised = self.rules.lateralised_classes(labels)
        logger.info("rules: %s; lateralised classes (the flip control): %s", source,
                    [self.class_names[c] for c in self.lateralised] or "none")
        self.training_images = slices.evenly_spaced_training_images(datamodule, hp.max_training_slices)
        self.num_test_slices = len(datamodule.datasets["test"])
        self.floor_images = slices.evenly_spaced_training_images(datamodule, self.num_test_slices)
        self.real_plausibility = PlausibilityRate(self.rules).to(self.device)
        self.controls = {name: PlausibilityRate(self.rules).to(self.device) for name in results.CONTROLS}
        self.real_slices = slices.RealSlices(self.class_names, datamodule.cache.subject_names, self.device)
        # the judge on the autoencoder's reconstructions of the same slices: what a mask read from a latent can reach
        self.reconstruction_overlap = slices.CaseOverlap(self.class_names, datamodule.cache.subject_names, self.device)
        self.head_dice = HeadDice({name: self.model(name) for names in self.arms.values() for name in names},
                                  self.class_names, datamodule.cache.subject_names, self.device, judge=self.segment)
        self.protocol = EvaluationProtocol(hp, self.rules, self.class_names, self.segment, self._new_kid,
                                           self.training_images, self.floor_images, self.device, self.global_rank,
                                           self.trainer.world_size)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        masks = self.segment(images)
        self.ceiling_dice.update(masks, batch["mask"])
        self.real_slices.update_overlap(masks, batch["mask"], batch["subject"])
        self.real_plausibility.update(masks)
        lateral = slices.lateral_slices(batch["mask"], self.lateralised)
        if lateral.any():
            self.controls["flipped"].update(self.segment(flip_left_right(images[lateral])))
        generator = next(iter(self.generators.values()))  # every generator shares the autoencoder
        latents = generator.autoencoder.encode(images)[0] * generator.scale_factor  # posterior mean
        reconstructed = self.segment(generator.decode(latents))
        self.controls["reconstructed"].update(reconstructed)
        self.reconstruction_overlap.update(reconstructed, batch["mask"], batch["subject"])
        self.real_slices.append(images, masks, batch["subject"], batch["position"])
        self.head_dice.update(images, batch["mask"], batch["subject"], batch["position"])

    # -- generators, metrics, report -----------------------------------------------------------
    def on_test_epoch_end(self) -> None:
        hp = self.hparams
        real_images, real_masks, subjects, positions = self.real_slices.concatenated()
        if len(real_images) >= 2:
            self.protocol.update_in_batches(self.controls["spliced"],
                                            splice_levels(real_images, subjects, positions, seed=hp.seed))
        ceiling = self.ceiling_dice.compute()  # (C - 1,)
        per_slice = {name: float(ceiling[c - 1]) for c, name in enumerate(self.class_names) if c > 0}
        judge_dice = self.real_slices.case_dice()
        judge_dice_reconstructions = self.reconstruction_overlap.case_dice()
        real, train_features = self.protocol.real_record(real_images, real_masks)
        num_samples = hp.num_samples or self.num_test_slices
        records, kept = self.protocol.sample_models(
            {name: (self.model(name), path) for name, path in self.checkpoints.items()}, self._seeds(num_samples),
            num_samples, self.guidance)
        for name, dice in self.head_dice.compute().items():
            records[name].head_dice_real = dice
        for name, consistency in self.head_dice.reconstruction_consistency().items():
            records[name].consistency_reconstructions = consistency
        control_rates = {name: metric.per_sample().cpu().numpy() for name, metric in self.controls.items()
                         if metric.gathered("passed").numel() > 0}
        real_passed = self.real_plausibility.per_sample().cpu().numpy()
        edit_model = self.model(self.arms[self.edit_generator][0]) if self.edits else None
        edits, edit_samples = evaluate_edits(
            self.protocol, edit_model, self.edit_generator, self.edits,
            self._seeds(hp.edit_samples or hp.num_samples or self.num_test_slices), self.class_names,
            hp.num_bootstrap, hp.confidence, hp.seed) if self.edits else ({}, {})
        if not self.trainer.is_global_zero:
            return
        report = results.build_report(hp, self.arms, self.early, self.rules, self.class_names, self.num_test_slices,
                              getattr(self.trainer.datamodule, "content_hash", None),
                              time.monotonic() - self._start_time, records, real, train_features, judge_dice,
                              per_slice, real_passed, control_rates, num_samples)
        report["real_test"]["segmenter_dice_reconstructions"] = judge_dice_reconstructions
        if edits:
            report["edits"] = edits
        results.write_report(hp.output_dir, report, self.rules, kept, self.class_names, hp.seed, self.trainer.world_size)
        if edits:
            results.write_edit_report(hp.output_dir, edits, edit_samples, edit_model, self.edits, self.edit_generator,
                              self.class_names, hp.confidence, hp.seed, self.trainer.world_size)
        for experiment_logger in self.loggers:
            experiment_logger.log_metrics(results.logged_metrics(report))

    def _seeds(self, num_samples: int) -> list[int]:
        """This rank's share of the seeds ``seed ... seed + num_samples - 1``."""
        rank, world = self.global_rank, self.trainer.world_size
        return [self.hparams.seed + i for i in range(rank, num_samples, world)]

    def _new_kid(self, num_samples: int):
        hp = self.hparams
        subset = max(2, min(hp.kid_subset_size, num_samples, self.num_test_slices))  # KID refuses larger subsets
        return make_fid_kid(self.features, kid_subset_size=subset, kid_subsets=10,
                            inception_weights=hp.inception_weights, seed=hp.seed)
