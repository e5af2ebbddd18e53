"""The evaluation protocol's sampling and metric states, with no Lightning.

:class:`EvaluationProtocol` samples every model (an :class:`~anatldm.pipelines.AnatomicalLDMPipeline`)
with this rank's seeds and fills the per-sample metric states whose gathered values the report
(:mod:`anatldm.evaluation.results`) turns into intervals; :class:`~anatldm.trainers.EvaluationTask`
wires it to the data and the processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import CatMetric

from anatldm.diffusion.sampling import GuidanceConfig
from anatldm.evaluation.statistics import ModelRecord, RealRecord
from anatldm.metrics import (
    AnatomyRules,
    Memorisation,
    PairwiseMSSSIM,
    PlausibilityRate,
    SelfConsistencyDice,
    area_fractions,
)
from anatldm.pipelines import AnatomicalLDMPipeline

__all__ = ["EvaluationProtocol", "case_dice"]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationProtocol:
    """What sampling and scoring a model needs.

    Args:
        settings: the ``EvaluationTask`` settings (``sample_batch_size``, ``sampler``,
            ``num_inference_steps``, ``seed``; attribute access).
        rules: the calibrated plausibility rules.
        class_names: label names, background first.
        segment: the judge: images ``(B, 1, H, W)`` -> label maps ``(B, H, W)``.
        new_kid: FID/KID metric factory for a number of samples.
        training_images: training slices of the memorisation distance.
        floor_images: training slices of the real floor.
        device: where the metric states live.
        rank: this process's rank.
        world_size: the number of processes.
    """

    settings: Any
    rules: AnatomyRules
    class_names: list[str]
    segment: Callable[[Tensor], Tensor]
    new_kid: Callable[[int], Any]
    training_images: Tensor
    floor_images: Tensor
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @torch.no_grad()
    def real_record(self, real_images: Tensor, real_masks: Tensor) -> tuple[RealRecord, np.ndarray]:
        """The real test set's judge areas and features (all ranks), and the training floor features."""
        hp = self.settings
        areas = CatMetric().to(self.device)
        areas.update(area_fractions(real_masks.to(self.device), len(self.class_names)))
        realism = self.new_kid(len(self.floor_images))
        kid = realism.kid.to(self.device)
        for start in range(0, len(real_images), hp.sample_batch_size):
            kid.update(real_images[start:start + hp.sample_batch_size].to(self.device), real=True)
        rank, world = self.rank, self.world_size
        for start in range(rank * hp.sample_batch_size, len(self.floor_images), world * hp.sample_batch_size):
            kid.update(self.floor_images[start:start + hp.sample_batch_size].to(self.device), real=False)
        real_features, floor_features = kid.features()
        record = RealRecord(areas=areas.compute().reshape(-1, len(self.class_names) - 1).cpu().double().numpy(),
                            features=real_features.cpu().double().numpy())
        return record, floor_features.cpu().double().numpy()

    @torch.no_grad()
    def update_in_batches(self, metric: PlausibilityRate, images: Tensor) -> None:
        """``metric`` updated with the judge's labels of ``images``, ``sample_batch_size`` at a time."""
        size = self.settings.sample_batch_size
        for start in range(0, len(images), size):
            metric.update(self.segment(images[start:start + size].to(self.device)))

    def sample_models(self, models: dict[str, tuple[AnatomicalLDMPipeline, str]], seeds: list[int],
                      num_samples: int, guidance: dict[str, GuidanceConfig] | None = None,
                      ) -> tuple[dict[str, ModelRecord], dict[str, dict]]:
        """:meth:`sample_model` of every model (name -> (pipeline, checkpoint path)), in order;
        ``guidance``: name -> its guidance (a model not named is sampled unguided)."""
        hp = self.settings
        records: dict[str, ModelRecord] = {}
        kept: dict[str, dict] = {}
        for name, (generator, path) in models.items():
            model_guidance = (guidance or {}).get(name, GuidanceConfig())
            logger.info("evaluating %s (%s): %d samples, %s with %d steps, guidance %s", name, path, num_samples,
                        hp.sampler, hp.num_inference_steps, model_guidance.kind)
            records[name], kept[name] = self.sample_model(generator, seeds, num_samples, model_guidance)
            records[name].checkpoint = path
        return records, kept

    @torch.no_grad()
    def sample_model(self, generator: AnatomicalLDMPipeline, seeds: list[int], num_samples: int,
                     guidance: GuidanceConfig | None = None) -> tuple[ModelRecord, dict]:
        """Per-sample results of one model over all ranks (rank-major, the same order for every
        model), sampled with ``guidance`` (default: none)."""
        hp = self.settings
        guidance = guidance if guidance is not None else GuidanceConfig()
        nfe = 0
        num_classes = len(self.class_names)
        plausibility = PlausibilityRate(self.rules).to(self.device)
        areas = CatMetric().to(self.device)
        consistency = SelfConsistencyDice(num_classes).to(self.device)
        diversity = PairwiseMSSSIM(max_pairs=2000, seed=hp.seed).to(self.device)
        memorisation = Memorisation().to(self.device)
        memorisation.update(self.training_images.to(self.device), real=True)
        kid = self.new_kid(num_samples).kid.to(self.device)
        kid.update(self.floor_images[:2].to(self.device), real=True)  # KID needs a real set; only fakes are read
        kept = {"image": [], "segmenter_mask": [], "head_mask": []}
        has_head = generator.denoiser.head is not None
        for generated in generator.generate_batches(seeds, hp.sample_batch_size, sampler=hp.sampler,
                                                    num_inference_steps=hp.num_inference_steps, guidance=guidance):
            nfe = generated.nfe
            images = generated.images.float()  # (B, 1, H, W)
            masks = self.segment(images)
            plausibility.update(masks)
            areas.update(area_fractions(masks, num_classes))
            diversity.update(images)
            memorisation.update(images, real=False)
            kid.update(images, real=False)
            if has_head:
                consistency.update(generated.masks, masks)
            if sum(len(x) for x in kept["image"]) < 16:
                kept["image"].append(images.cpu())
                kept["segmenter_mask"].append(masks.cpu())
                kept["head_mask"].append(generated.masks.cpu() if has_head else None)
        violations = plausibility.gathered("violations").reshape(-1, len(self.rules.rule_names)).cpu().numpy()
        record = ModelRecord(
            passed=plausibility.per_sample().cpu().double().numpy(),
            violations={rule: violations[:, r] for r, rule in enumerate(self.rules.rule_names)},
            areas=areas.compute().reshape(-1, num_classes - 1).cpu().double().numpy(),
            features=kid.features()[1].cpu().double().numpy(),
            memorisation=memorisation.per_sample().cpu().double().numpy(),
            diversity=diversity.pair_values().cpu().double().numpy(),
            consistency=consistency.per_sample().cpu().double().numpy() if has_head else None,
            consistency_per_class={name: round(float(value), 4) for name, value in
                                   zip(self.class_names[1:], consistency.per_class().cpu(), strict=True)}
            if has_head else None,
            nfe=nfe, guidance=asdict(guidance))
        return record, kept

    @torch.no_grad()
    def segmented_samples(self, generator: AnatomicalLDMPipeline, seeds: list[int],
                           registers: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-sample segmenter areas ``(N, C - 1)`` and plausibility ``(N,)`` of all ranks' samples
        (rank-major), and this rank's first images and masks (for the figure)."""
        hp = self.settings
        areas, plausibility = CatMetric().to(self.device), PlausibilityRate(self.rules).to(self.device)
        kept_images, kept_masks = [], []
        batches = generator.generate_batches(seeds, hp.sample_batch_size, sampler=hp.sampler,
                                             num_inference_steps=hp.num_inference_steps, registers=registers)
        for index, out in enumerate(batches):
            images = out.images.float()
            masks = self.segment(images)
            areas.update(area_fractions(masks, len(self.class_names)))
            plausibility.update(masks)
            if index == 0:
                kept_images, kept_masks = images[:8].cpu(), masks[:8].cpu()
        return areas.compute().cpu(), plausibility.per_sample().cpu(), kept_images, kept_masks


def case_dice(intersection: np.ndarray, cardinality: np.ndarray, subjects: np.ndarray,
              class_names: list[str]) -> dict[str, float]:
    """The judge's Dice per class over test *subjects* (cases), as nnU-Net and the Decathlon report it.

    For subject ``s`` and class ``c``: ``2 * sum |P ∩ G| / sum (|P| + |G|)`` over its test slices
    (``intersection`` and ``cardinality``: ``(N, C - 1)`` per slice); then the mean over subjects
    that have the class in the ground truth or the prediction. A slice-wise mean
    (``judge_dice_per_slice``) is also reported; it counts a 5-pixel organ tip as much as a whole
    liver, and is lower.
    """
    dice = {}
    for k, name in enumerate(class_names[1:]):
        scores = [2 * intersection[subjects == s, k].sum() / cardinality[subjects == s, k].sum()
                  for s in np.unique(subjects) if cardinality[subjects == s, k].sum() > 0]
        dice[name] = float(np.mean(scores)) if scores else float("nan")
    return dice
