"""Real-slice bookkeeping of the evaluation protocol (no Lightning): the calibration slices of
the plausibility rules, the training slices of the memorisation distance and the real floor,
and the per-slice class overlap behind the judge's per-case Dice."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import CatMetric

from anatldm.errors import ConfigError
from anatldm.evaluation.protocol import case_dice

__all__ = ["CaseOverlap", "RealSlices", "calibration_slices", "class_overlap", "evenly_spaced_training_images", "lateral_slices"]


def calibration_slices(datamodule, calibration_subjects: int,
                       calibration_phantom_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Images, ground-truth masks and subjects of the calibration slices, and what they are:
    ``calibration_subjects`` extra phantom subjects (seed ``calibration_phantom_seed``) for
    phantom data, else the validation split."""
    if calibration_subjects > 0 and getattr(datamodule.hparams, "source", None) == "phantom":
        settings = {**{k: v for k, v in dict(datamodule.hparams).items() if not k.startswith("_")}, "num_subjects": calibration_subjects,
                    "phantom_seed": calibration_phantom_seed, "split_fractions": (1.0, 0.0, 0.0)}
        if calibration_phantom_seed == datamodule.hparams.phantom_seed:
            raise ConfigError(f"model.calibration_phantom_seed {calibration_phantom_seed} is the evaluation "
                              f"data's phantom seed: calibration subjects must be disjoint from them")
        calibration = type(datamodule)(**settings)
        calibration.prepare_data()
        calibration.setup("predict")  # only the slices: no split is needed
        cache, indices = calibration.cache, np.sort(calibration.datasets["train"].indices)
        what = f"{calibration_subjects} extra phantom subjects (seed {calibration_phantom_seed})"
    else:
        cache, indices = datamodule.cache, np.sort(datamodule.datasets["val"].indices)
        what = "the validation split"
        if len(indices) == 0:
            raise ConfigError("model.calibration: the validation split is empty; give the data a validation "
                              "fraction or set model.calibration_subjects (phantoms)")
    return (np.asarray(cache.images[indices]), np.asarray(cache.masks[indices]).astype(np.int64),
            np.asarray(cache.subjects[indices]), f"{len(indices)} slices of {what}")


def evenly_spaced_training_images(datamodule, count: int) -> Tensor:
    """``(N, 1, H, W)``: ``min(count, len)`` training slices evenly spaced over the (sorted) training split."""
    train = np.sort(datamodule.datasets["train"].indices)
    spaced = np.linspace(0, len(train) - 1, num=min(len(train), count)).astype(int)
    return torch.from_numpy(np.asarray(datamodule.cache.images[train[spaced]]))[:, None]


def class_overlap(masks: Tensor, truth: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per slice and foreground class: ``|P ∩ G|`` and ``|P| + |G|`` of label maps ``(B, H, W)``,
    each ``(B, C - 1)`` float."""
    classes = torch.arange(1, num_classes, device=masks.device)[:, None, None, None]  # (C - 1, 1, 1, 1)
    predicted, truth = masks[None] == classes, truth[None] == classes  # (C - 1, B, H, W)
    return ((predicted & truth).sum(dim=(2, 3)).T.float(),  # (B, C - 1)
            (predicted.sum(dim=(2, 3)) + truth.sum(dim=(2, 3))).T.float())


def lateral_slices(truth: Tensor, lateralised: list[int]) -> Tensor:
    """``(B,)`` bool: the slices whose ground truth ``(B, H, W)`` holds a lateralised class."""
    lateral = torch.zeros(len(truth), dtype=torch.bool, device=truth.device)
    for c in lateralised:
        lateral |= (truth == c).flatten(1).any(dim=1)
    return lateral


class CaseOverlap:
    """Per-slice class overlap of predicted and true label maps over all ranks, and the per-case
    Dice it gives (:func:`~anatldm.evaluation.protocol.case_dice`).

    Args:
        class_names: label names, background first.
        subject_names: every subject of the data (their index is gathered across ranks).
        device: where the states live.
    """

    def __init__(self, class_names: list[str], subject_names, device: torch.device) -> None:
        self.class_names = list(class_names)
        self.subject_index = {name: k for k, name in enumerate(subject_names)}
        self.overlap = {key: CatMetric().to(device) for key in ("intersection", "cardinality", "subject")}

    def update(self, masks: Tensor, truth: Tensor, subjects) -> None:
        """The overlap of predicted masks and ground truth ``(B, H, W)`` of slices of ``subjects``."""
        intersection, cardinality = class_overlap(masks, truth, len(self.class_names))  # (B, C - 1) each
        self.overlap["intersection"].update(intersection)
        self.overlap["cardinality"].update(cardinality)
        self.overlap["subject"].update(torch.tensor([float(self.subject_index[s]) for s in subjects],
                                                    device=masks.device))

    def case_dice(self) -> dict[str, float]:
        """Dice per class over *subjects* (cases) of all ranks."""
        gathered = {key: metric.compute().cpu().numpy() for key, metric in self.overlap.items()}
        foreground = len(self.class_names) - 1
        return case_dice(gathered["intersection"].reshape(-1, foreground),
                         gathered["cardinality"].reshape(-1, foreground), gathered["subject"].reshape(-1),
                         self.class_names)


class RealSlices:
    """The real test slices seen by this rank (images, judge masks, subjects, positions) and the
    per-slice class overlap of all ranks behind the judge's per-case Dice.

    Args:
        class_names: label names, background first.
        subject_names: every subject of the data (their index is gathered across ranks).
        device: where the overlap states live.
    """

    def __init__(self, class_names: list[str], subject_names, device: torch.device) -> None:
        self.class_names = list(class_names)
        self.images: list[Tensor] = []
        self.masks: list[Tensor] = []
        self.keys: list[tuple[np.ndarray, np.ndarray]] = []
        self.judge = CaseOverlap(class_names, subject_names, device)

    def update_overlap(self, masks: Tensor, truth: Tensor, subjects) -> None:
        """The overlap of judge masks and ground truth ``(B, H, W)`` of slices of ``subjects``."""
        self.judge.update(masks, truth, subjects)

    def append(self, images: Tensor, masks: Tensor, subjects, positions: Tensor) -> None:
        """Keep this rank's images ``(B, 1, H, W)``, judge masks and slice keys (on the CPU)."""
        self.images.append(images.cpu())
        self.masks.append(masks.cpu())
        self.keys.append((np.asarray(subjects), positions.cpu().numpy()))

    def concatenated(self) -> tuple[Tensor, Tensor, np.ndarray, np.ndarray]:
        """This rank's images, judge masks, subjects and positions."""
        return (torch.cat(self.images), torch.cat(self.masks), np.concatenate([k[0] for k in self.keys]),
                np.concatenate([k[1] for k in self.keys]))

    def case_dice(self) -> dict[str, float]:
        """The judge's Dice per class over test *subjects* (cases) of all ranks."""
        return self.judge.case_dice()
