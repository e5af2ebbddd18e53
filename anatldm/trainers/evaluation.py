"""``EvaluationTask``: ``anatldm test`` — realism and segmentation-based anatomical accuracy.

The protocol is fixed in advance (DESIGN section 4): a segmenter trained on real training slices
only labels every slice; the primary anatomical accuracy is the plausibility rate of those
labels against rules fitted on the real training masks; realism is FID/KID on the segmenter's
pooled bottleneck features. Every number comes with a bootstrap 95 % interval, and every
generator with its relative change against the baseline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import CatMetric
from torchmetrics.segmentation import DiceScore

from anatldm import __version__
from anatldm.atomic import write_text_atomic
from anatldm.diffusion.schedulers import SamplerName
from anatldm.errors import (
    CheckpointMismatchError,
    ConfigError,
    check_checkpoint_file,
    check_output_folder,
)
from anatldm.interpret import NoRegisterForClassError, save_association
from anatldm.interpret.effects import edit_effect, edit_effects_markdown
from anatldm.metrics import (
    AnatomyRules,
    AreaWasserstein,
    FrechetSegmentationDistance,
    Memorisation,
    PairwiseMSSSIM,
    PlausibilityRate,
    PooledEncoderFeatures,
    SelfConsistencyDice,
    area_fractions,
    bootstrap_ci,
    frechet_feature_distance,
    kernel_feature_distance,
    make_fid_kid,
    relative_change_ci,
)
from anatldm.models.registers import RegisterEdit
from anatldm.trainers.base import AnatomyTask
from anatldm.trainers.ldm import AnatomicalLDMTask
from anatldm.trainers.segmenter import SegmenterTask, bottleneck_module
from anatldm.visualize import save_overlay_grid

__all__ = ["EvaluationTask", "load_task"]

logger = logging.getLogger(__name__)

#: metric -> (label in the report, higher is better)
METRICS = {
    "plausibility_rate": ("Plausibility rate (primary)", True),
    "fsd": ("Fréchet segmentation distance", False),
    "area_w1": ("Area Wasserstein-1 (mean over classes)", False),
    "fid": ("FID (segmenter features)", False),
    "kid": ("KID (segmenter features)", False),
    "self_consistency_dice": ("Self-consistency Dice (head vs segmenter)", True),
    "diversity_msssim": ("Pairwise MS-SSIM (lower = more diverse)", False),
    "memorisation_rmse": ("Nearest-training-slice RMSE (higher = less copying)", True),
}


def load_task(task_class, path: str, what: str) -> nn.Module:
    """A task from its checkpoint (weights only); a missing or foreign file is one ``ConfigError``
    naming the key ``what``."""
    check_checkpoint_file(path, what)
    try:
        return task_class.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (KeyError, RuntimeError, TypeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
        if isinstance(err, ConfigError):
            raise
        if isinstance(err, CheckpointMismatchError):  # another architecture or class count
            raise ConfigError(f"{what}: {path}: {err}") from None
        raise ConfigError(f"{what}: {path} is not a {task_class.__name__} checkpoint "
                          f"({str(err).splitlines()[0]})") from None


class EvaluationTask(AnatomyTask):
    """Compare generators (LDM checkpoints) against real test slices and each other.

    ``anatldm test`` runs the real test split through the segmenter (its Dice there is the
    ceiling), then samples ``num_samples`` (image, mask) pairs from every generator with fixed
    seeds and the chosen sampler (EMA weights, as saved), and computes for each: plausibility
    rate, Fréchet segmentation distance, area Wasserstein-1, FID and KID on the segmenter's
    features, self-consistency Dice (generators with a head), pairwise MS-SSIM and the RMSE to
    the nearest training slice, each with a bootstrap interval and its relative change against
    ``baseline``. Writes ``report.json``, ``report.md``, ``rules.json`` and one PNG grid per
    generator into ``output_dir``.

    Args:
        generators: name -> ``AnatomicalLDMTask`` checkpoint.
        segmenter: ``SegmenterTask`` checkpoint (trained on real training slices only).
        baseline: name of the generator the others are compared with (``None``: no comparison).
        num_samples: samples per generator; ``None`` = the number of real test slices.
        sampler: ``"ddpm"``, ``"ddim"`` or ``"dpm_solver++"``.
        num_inference_steps: denoiser calls per sample.
        seed: sample ``i`` of every generator uses seed ``seed + i``.
        sample_batch_size: samples generated at once.
        num_bootstrap: bootstrap resamples of each interval.
        confidence: interval level.
        kid_subset_size: samples per KID subset (clipped to the smaller set).
        max_training_slices: training slices compared for memorisation (evenly spaced subset).
        inception_weights: local InceptionV3 weights for a standard FID; ``None`` uses the
            segmenter's features (the report says which).
        output_dir: where the report goes.
        edits: name -> register edits (by index or by class, e.g.
            ``[{operation: scale, classes: [liver], factor: 1.5}]``) applied to
            ``edit_generator``; each is measured against the unedited samples of the same seeds:
            per-class segmenter area change and plausibility change with paired intervals
            (``report.json["edits"]``, ``edits.md``, ``edits_<generator>.png``).
        edit_generator: the generator the edits apply to (default: the first with registers).
        edit_samples: samples per edit (default ``num_samples``).
    """

    def __init__(
        self,
        generators: dict[str, str],
        segmenter: str,
        baseline: str | None = None,
        num_samples: int | None = None,
        sampler: SamplerName = "ddim",
        num_inference_steps: int = 50,
        seed: int = 0,
        sample_batch_size: int = 16,
        num_bootstrap: int = 1000,
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
        if baseline is not None and baseline not in generators:
            raise ConfigError(f"model.baseline '{baseline}' is not one of the generators {sorted(generators)}")
        for key, value in (("num_samples", num_samples), ("num_inference_steps", num_inference_steps),
                           ("sample_batch_size", sample_batch_size), ("num_bootstrap", num_bootstrap)):
            if value is not None and value < 1:
                raise ConfigError(f"model.{key} must be at least 1, got {value}")
        if edit_generator is not None and edit_generator not in generators:
            raise ConfigError(f"model.edit_generator '{edit_generator}' is not one of the generators {sorted(generators)}")
        if edit_samples is not None and edit_samples < 1:
            raise ConfigError(f"model.edit_samples must be at least 1, got {edit_samples}")
        self.edits = {name: [_as_edit(edit, f"model.edits.{name}") for edit in edit_list]
                      for name, edit_list in (edits or {}).items()}
        if not 0 < confidence < 1:
            raise ConfigError(f"model.confidence must lie in (0, 1), got {confidence}")
        check_output_folder(output_dir, "model.output_dir")
        super().__init__()

    # -- construction ------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Load the segmenter and the generators (Lightning's lazy-construction hook).

        Not done in ``__init__``: a task built inside another task's ``__init__`` would let
        Lightning's ``save_hyperparameters`` frame inspection mix the two argument lists.
        """
        if hasattr(self, "segmenter"):
            return
        hp = self.hparams
        self.segmenter = load_task(SegmenterTask, hp.segmenter, "model.segmenter").eval()
        self.generators = nn.ModuleDict({name: load_task(AnatomicalLDMTask, path, f"model.generators.{name}").eval()
                                         for name, path in hp.generators.items()})
        self.class_names = list(next(iter(self.generators.values())).class_names)
        for name, generator in self.generators.items():
            if list(generator.class_names) != self.class_names:
                raise ConfigError(f"model.generators.{name}: classes {generator.class_names} differ from "
                                  f"{self.class_names}")
        if self.segmenter.hparams.num_classes != len(self.class_names):
            raise ConfigError(f"model.segmenter has {self.segmenter.hparams.num_classes} classes, the generators "
                              f"{len(self.class_names)}")
        if self.edits:
            self.edit_generator = hp.edit_generator or next(
                (name for name, g in self.generators.items() if g.denoiser.registers is not None), None)
            generator = self.generators[self.edit_generator] if self.edit_generator else None
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

    def check_inputs(self, datamodule) -> None:
        """Every checkpoint loads, and the segmenter, the generators and the data share classes."""
        self.configure_model()
        if list(getattr(datamodule, "class_names", [])) != self.class_names:
            raise ConfigError(f"data: classes {getattr(datamodule, 'class_names', None)} differ from the "
                              f"generators' {self.class_names}")

    # -- real test slices --------------------------------------------------------------------
    def on_test_start(self) -> None:
        datamodule = self.trainer.datamodule
        self.check_inputs(datamodule)
        train = np.sort(datamodule.datasets["train"].indices)
        self.rules = AnatomyRules.fit(np.asarray(datamodule.cache.masks[train]), self.class_names)
        spaced = np.linspace(0, len(train) - 1, num=min(len(train), self.hparams.max_training_slices)).astype(int)
        self.training_images = torch.from_numpy(np.asarray(datamodule.cache.images[train[spaced]]))[:, None]
        self.num_test_slices = len(datamodule.datasets["test"])
        self.real_plausibility = PlausibilityRate(self.rules).to(self.device)
        self.real_images: list[Tensor] = []
        self.real_masks: list[Tensor] = []

    def segment(self, images: Tensor) -> Tensor:
        """Segmenter label maps ``(B, H, W)`` of images ``(B, 1, H, W)`` in [-1, 1]."""
        return self.segmenter(images).argmax(1)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        masks = self.segment(images)
        self.ceiling_dice.update(masks, batch["mask"])
        self.real_plausibility.update(masks)
        self.real_images.append(images.cpu())
        self.real_masks.append(masks.cpu())

    # -- generators, metrics, report -----------------------------------------------------------
    def on_test_epoch_end(self) -> None:
        hp = self.hparams
        ceiling = self.ceiling_dice.compute()  # (C - 1,)
        real = {"plausibility_rate": self._interval("mean", [self.real_plausibility.per_sample()]),
                "segmenter_dice": {name: float(ceiling[c - 1]) for c, name in enumerate(self.class_names) if c > 0}}
        real_images, real_masks = torch.cat(self.real_images), torch.cat(self.real_masks)
        num_samples = hp.num_samples or self.num_test_slices
        results, samples = {}, {}
        for name, generator in self.generators.items():
            logger.info("evaluating %s: %d samples, %s with %d steps", name, num_samples, hp.sampler,
                        hp.num_inference_steps)
            results[name], samples[name] = self._evaluate_generator(generator, num_samples, real_images, real_masks)
        edits, edit_samples = self._evaluate_edits() if self.edits else ({}, {})
        if not self.trainer.is_global_zero:
            return
        report = self._report(real, results, num_samples)
        if edits:
            report["edits"] = edits
        self._write(report, samples)
        if edits:
            self._write_edits(edits, edit_samples)
        for experiment_logger in self.loggers:
            experiment_logger.log_metrics({f"{name}/{metric}": values["value"] for name, metrics in results.items()
                                           for metric, values in metrics.items() if "value" in values})

    def _seeds(self, num_samples: int) -> list[int]:
        """This rank's share of the seeds ``seed ... seed + num_samples - 1``."""
        rank, world = self.global_rank, self.trainer.world_size
        return [self.hparams.seed + i for i in range(rank, num_samples, world)]

    @torch.no_grad()
    def _evaluate_generator(self, generator: AnatomicalLDMTask, num_samples: int, real_images: Tensor,
                            real_masks: Tensor) -> tuple[dict, dict]:
        hp = self.hparams
        num_classes = len(self.class_names)
        plausibility = PlausibilityRate(self.rules).to(self.device)
        fsd = FrechetSegmentationDistance(num_classes).to(self.device)
        area_w1 = AreaWasserstein(num_classes).to(self.device)
        consistency = SelfConsistencyDice(num_classes).to(self.device)
        diversity = PairwiseMSSSIM(max_pairs=2000, seed=hp.seed).to(self.device)
        memorisation = Memorisation().to(self.device)
        kid_subset = max(2, min(hp.kid_subset_size, num_samples, len(real_images)))  # KID refuses larger subsets
        realism = make_fid_kid(self.features, kid_subset_size=kid_subset, kid_subsets=50,
                               inception_weights=hp.inception_weights, seed=hp.seed)
        fid, kid = realism.fid.to(self.device), realism.kid.to(self.device)
        for metric in (fsd, area_w1):
            metric.update(real_masks.to(self.device), real=True)
        for start in range(0, len(real_images), hp.sample_batch_size):
            chunk = real_images[start:start + hp.sample_batch_size].to(self.device)
            fid.update(chunk, real=True)
            kid.update(chunk, real=True)
        memorisation.update(self.training_images.to(self.device), real=True)
        seeds = self._seeds(num_samples)
        kept = {"image": [], "segmenter_mask": [], "head_mask": []}
        for start in range(0, len(seeds), hp.sample_batch_size):
            batch_seeds = seeds[start:start + hp.sample_batch_size]
            generated = generator.generate(batch_seeds, sampler=hp.sampler, num_inference_steps=hp.num_inference_steps)
            images = generated["image"].float()  # (B, 1, H, W)
            masks = self.segment(images)
            plausibility.update(masks)
            fsd.update(masks, real=False)
            area_w1.update(masks, real=False)
            diversity.update(images)
            memorisation.update(images, real=False)
            fid.update(images, real=False)
            kid.update(images, real=False)
            if generated["mask"] is not None:
                consistency.update(generated["mask"], masks)
            if len(kept["image"]) * hp.sample_batch_size < 16:
                kept["image"].append(images.cpu())
                kept["segmenter_mask"].append(masks.cpu())
                kept["head_mask"].append(None if generated["mask"] is None else generated["mask"].cpu())
        real_features, fake_features = kid.features()
        real_areas, fake_areas = fsd.areas()
        subset = min(hp.kid_subset_size, len(real_features), len(fake_features))

        def kid_statistic(real: Tensor, fake: Tensor) -> Tensor:  # 10 subsets per bootstrap replicate
            return kernel_feature_distance(real, fake, subset, 10, hp.seed)

        results = {
            "plausibility_rate": self._interval("mean", [plausibility.per_sample()]),
            "fsd": self._interval(FrechetSegmentationDistance.statistic, [real_areas, fake_areas]),
            "area_w1": self._interval(AreaWasserstein.statistic, [real_areas, fake_areas]),
            "fid": self._interval(frechet_feature_distance, [real_features, fake_features],
                                  point=float(fid.compute())),
            "kid": self._interval(kid_statistic, [real_features, fake_features], resamples=min(hp.num_bootstrap, 200),
                                  point=float(kid.compute()[0])),
            "diversity_msssim": self._interval("mean", [diversity.pair_values()]),
            "memorisation_rmse": self._interval("mean", [memorisation.per_sample()]),
            "violation_rates": plausibility.violation_rates(),
            "_samples": {"plausibility_rate": ("mean", [plausibility.per_sample()]),
                         "fsd": (FrechetSegmentationDistance.statistic, [real_areas, fake_areas]),
                         "area_w1": (AreaWasserstein.statistic, [real_areas, fake_areas]),
                         "fid": (frechet_feature_distance, [real_features, fake_features]),
                         "kid": (kid_statistic, [real_features, fake_features]),
                         "diversity_msssim": ("mean", [diversity.pair_values()]),
                         "memorisation_rmse": ("mean", [memorisation.per_sample()])},
        }
        if generator.denoiser.head is not None:
            results["self_consistency_dice"] = self._interval("mean", [consistency.per_sample()])
            results["_samples"]["self_consistency_dice"] = ("mean", [consistency.per_sample()])
        return results, kept

    @torch.no_grad()
    def _segmented_samples(self, generator: AnatomicalLDMTask, seeds: list[int],
                           registers: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-sample segmenter areas ``(N, C - 1)`` and plausibility ``(N,)`` of all ranks' samples
        (rank-major), and this rank's first images and masks (for the figure)."""
        hp = self.hparams
        areas, plausibility = CatMetric().to(self.device), PlausibilityRate(self.rules).to(self.device)
        kept_images, kept_masks = [], []
        for start in range(0, len(seeds), hp.sample_batch_size):
            out = generator.generate(seeds[start:start + hp.sample_batch_size], sampler=hp.sampler,
                                     num_inference_steps=hp.num_inference_steps, registers=registers)
            images = out["image"].float()
            masks = self.segment(images)
            areas.update(area_fractions(masks, len(self.class_names)))
            plausibility.update(masks)
            if start == 0:
                kept_images, kept_masks = images[:8].cpu(), masks[:8].cpu()
        return areas.compute().cpu(), plausibility.per_sample().cpu(), kept_images, kept_masks

    def _evaluate_edits(self) -> tuple[dict, dict]:
        """Every edit of ``edits`` against the unedited samples of the same seeds."""
        hp = self.hparams
        generator = self.generators[self.edit_generator]
        seeds = self._seeds(hp.edit_samples or hp.num_samples or self.num_test_slices)
        logger.info("register edits of %s: %d samples each", self.edit_generator, len(seeds))
        base_areas, base_plausible, *base_kept = self._segmented_samples(generator, seeds,
                                                                        generator.denoiser.registers.tokens)
        results, kept = {}, {"unedited": base_kept}
        for name, edits in self.edits.items():
            try:
                tokens = generator.edited_registers(list(edits))
            except NoRegisterForClassError as err:  # the trained model has no register for that class
                logger.warning("edit %s skipped: %s", name, err)
                results[name] = {"generator": self.edit_generator, "edits": [dataclasses.asdict(e) for e in edits],
                                 "skipped": str(err)}
                continue
            areas, plausible, *kept[name] = self._segmented_samples(generator, seeds, tokens)
            effect = edit_effect(base_areas.numpy(), areas.numpy(), base_plausible.numpy(), plausible.numpy(),
                                 self.class_names, hp.num_bootstrap, hp.confidence, hp.seed)
            results[name] = {"generator": self.edit_generator,
                             "edits": [dataclasses.asdict(edit) for edit in edits],
                             "resolved": list(generator.applied_edits), "effect": effect}
        return results, kept

    def _write_edits(self, edits: dict, kept: dict) -> None:
        out = Path(self.hparams.output_dir)
        write_text_atomic(out / "edits.md", edit_effects_markdown(edits, self.class_names, self.hparams.confidence))
        generator = self.generators[self.edit_generator]
        if any(edit.classes for edits in self.edits.values() for edit in edits):  # the table they were chosen from
            save_association(generator.register_association(), self.class_names, out, source="anatomy head",
                             num_samples=generator.association_samples, stem=f"association_{self.edit_generator}")
        columns = min(6, len(kept["unedited"][0]))
        images = torch.cat([images[:columns, 0] for images, _ in kept.values()]).numpy()
        masks = torch.cat([masks[:columns] for _, masks in kept.values()]).numpy()
        titles = [f"{name} · seed {self.hparams.seed + i * self.trainer.world_size}"
                  for name in kept for i in range(columns)]
        save_overlay_grid(images, masks, self.class_names, out / f"edits_{self.edit_generator}.png", titles=titles,
                          columns=columns, title=f"{self.edit_generator}: register edits, same seeds "
                                                 "(segmenter masks)")

    def _interval(self, statistic: str | Callable, samples: list, resamples: int | None = None,
                  point: float | None = None) -> dict[str, float]:
        hp = self.hparams
        if any(len(s) == 0 for s in samples):
            return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
        value, low, high = bootstrap_ci(statistic, samples, resamples or hp.num_bootstrap, hp.confidence, hp.seed)
        return {"value": float(value if point is None else point), "low": float(low), "high": float(high),
                "n": int(len(samples[-1]))}

    def _report(self, real: dict, results: dict[str, dict], num_samples: int) -> dict[str, Any]:
        hp = self.hparams
        if hp.baseline is not None:
            base = results[hp.baseline]["_samples"]
            for name, metrics in results.items():
                if name == hp.baseline:
                    continue
                changes = {}
                for metric, (statistic, samples) in metrics["_samples"].items():
                    if metric not in base or not all(len(s) for s in samples + base[metric][1]):
                        continue
                    try:
                        value, low, high = relative_change_ci(statistic, samples, base[metric][0], base[metric][1],
                                                              min(hp.num_bootstrap, 500), hp.confidence, hp.seed)
                    except ValueError:  # the baseline's value is 0
                        continue
                    changes[metric] = {"value": value, "low": low, "high": high}
                metrics["relative_change_vs_baseline"] = changes
        for metrics in results.values():
            metrics.pop("_samples")
        return {
            "anatldm_version": __version__,
            "protocol": "DESIGN section 4: segmenter trained on real training slices only; plausibility "
                        "rules fitted on real training masks ([0.5, 99.5] percentiles)",
            "feature_source": "inception_v3" if hp.inception_weights else "segmenter bottleneck (domain encoder)",
            "sampler": hp.sampler, "num_inference_steps": hp.num_inference_steps, "seed": hp.seed,
            "num_samples": num_samples, "num_real_test_slices": self.num_test_slices,
            "confidence": hp.confidence, "num_bootstrap": hp.num_bootstrap, "baseline": hp.baseline,
            "generators": dict(hp.generators), "segmenter": hp.segmenter, "class_names": self.class_names,
            "real_test": real, "results": results,
        }

    def _write(self, report: dict, samples: dict[str, dict]) -> None:
        out = Path(self.hparams.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "rules.json", json.dumps(self.rules.to_dict(), indent=1))
        write_text_atomic(out / "report.json", json.dumps(report, indent=1, default=float))
        write_text_atomic(out / "report.md", markdown_table(report))
        for name, kept in samples.items():
            if not kept["image"]:
                continue
            images = torch.cat(kept["image"])[:16, 0].numpy()
            masks = torch.cat(kept["segmenter_mask"])[:16].numpy()
            save_overlay_grid(images, masks, self.class_names, out / f"samples_{name}.png",
                              titles=[f"seed {self.hparams.seed + i * self.trainer.world_size}" for i in range(len(images))],
                              title=f"{name}: samples with the segmenter's masks")
            if kept["head_mask"][0] is not None:
                heads = torch.cat(kept["head_mask"])[:16].numpy()
                save_overlay_grid(images, heads, self.class_names, out / f"samples_{name}_head.png",
                                  title=f"{name}: samples with the anatomy head's masks")
        logger.info("wrote %s", out / "report.md")


def _as_edit(edit: RegisterEdit | dict, key: str) -> RegisterEdit:
    if isinstance(edit, RegisterEdit):
        return edit
    try:
        return RegisterEdit(**edit)
    except TypeError as err:
        raise ConfigError(f"{key}: {edit} is not a register edit ({err})") from None


def _cell(values: dict | None, percent: bool = False) -> str:
    if not values or values.get("value") is None or (isinstance(values["value"], float) and math.isnan(values["value"])):
        return "–"
    if percent:
        return f"{values['value']:+.1%} [{values['low']:+.1%}, {values['high']:+.1%}]"
    return f"{values['value']:.3g} [{values['low']:.3g}, {values['high']:.3g}]"


def markdown_table(report: dict) -> str:
    """One table: metrics as rows, generators (and their change vs the baseline) as columns."""
    names = list(report["results"])
    baseline = report["baseline"]
    header = ["metric", *names]
    changes = [n for n in names if n != baseline and baseline is not None]
    header += [f"{n} vs {baseline}" for n in changes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric, (label, higher_better) in METRICS.items():
        arrow = "↑" if higher_better else "↓"
        row = [f"{label} {arrow}"] + [_cell(report["results"][n].get(metric)) for n in names]
        row += [_cell(report["results"][n].get("relative_change_vs_baseline", {}).get(metric), percent=True)
                for n in changes]
        lines.append("| " + " | ".join(row) + " |")
    real = report["real_test"]
    dice = ", ".join(f"{k} {v:.3f}" for k, v in real["segmenter_dice"].items())
    conf = int(round(report["confidence"] * 100))
    return "\n".join([
        f"Samples per generator: {report['num_samples']} ({report['sampler']}, {report['num_inference_steps']} steps, "
        f"seeds from {report['seed']}); real test slices: {report['num_real_test_slices']}; "
        f"FID/KID features: {report['feature_source']}. Cells: value [{conf} % bootstrap interval]; "
        f"changes are relative to {baseline}.",
        "",
        *lines,
        "",
        f"Reference, real test slices: plausibility rate {_cell(real['plausibility_rate'])}; "
        f"segmenter Dice (the ceiling): {dice}.",
        "",
    ])
