"""Memorisation audit of generated slices against the training slices (no Lightning).

For every sample: the pixel RMSE to its nearest training slice
(:func:`anatldm.metrics.memorisation.nearest_rmse`, images in [-1, 1]). The reference for "not
memorised" is a real slice of a subject the model never saw: the held-out (validation and test)
slices' own nearest-training distances. A sample closer to the training set than the
``quantile`` (default the 1st percentile) of that reference is **flagged**: closer than 99 % of
unseen real slices are to it. Without memorisation about ``quantile`` of the samples are
flagged by chance; a much larger flagged fraction points to copying. The flagged fraction gets a
Wilson score interval (Wilson 1927; exact enough at the small counts involved).

Nearest-neighbour copy detection as in Carlini et al. (USENIX Security 2023) and Somepalli et al.
(CVPR 2023), calibrated on held-out real data instead of a fixed distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

from anatldm.metrics.memorisation import nearest_rmse
from anatldm.visualize import save_overlay_grid

__all__ = ["MemorisationReference", "audit_summary", "memorisation_reference", "save_flagged_pairs",
           "wilson_interval"]


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / trials``."""
    if trials <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, float(centre - half))
    high = 1.0 if successes == trials else min(1.0, float(centre + half))
    return low, high


def _flat(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(images, dtype=np.float32))
    return tensor.reshape(tensor.shape[0], -1)  # (N, D)


@dataclass
class MemorisationReference:
    """Training slices and the held-out threshold; :meth:`nearest` scores samples batch by batch.

    Args:
        training: training slices ``(M, H, W)`` in [-1, 1].
        held_out: real slices of unseen subjects ``(K, H, W)`` in [-1, 1].
        quantile: flag samples closer than this quantile of the held-out distances.
        training_names: a label per training slice (e.g. ``subject:position``) for the card.
    """

    training: torch.Tensor
    reference_distances: np.ndarray
    quantile: float
    threshold: float
    training_names: list[str] = field(default_factory=list)

    def nearest(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(B,)`` nearest-training RMSE and ``(B,)`` index of that slice."""
        distance, index = nearest_rmse(_flat(images), self.training)
        return distance.numpy(), index.numpy()


def memorisation_reference(training: np.ndarray, held_out: np.ndarray, quantile: float = 0.01,
                           training_names: Sequence[str] | None = None) -> MemorisationReference:
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    if len(training) == 0 or len(held_out) == 0:
        raise ValueError("the memorisation audit needs training slices and held-out slices")
    flat_training = _flat(training)
    reference, _ = nearest_rmse(_flat(held_out), flat_training)
    reference = reference.numpy()
    return MemorisationReference(flat_training, reference, quantile, float(np.quantile(reference, quantile)),
                                 list(training_names or []))


def audit_summary(reference: MemorisationReference, distances: np.ndarray, nearest: np.ndarray,
                  case_ids: Sequence[str], seeds: Sequence[int], confidence: float = 0.95) -> dict:
    """The card's ``memorisation`` section: threshold, flagged fraction with its interval, flagged cases."""
    distances = np.asarray(distances, dtype=np.float64)
    flagged = np.flatnonzero(distances < reference.threshold)
    low, high = wilson_interval(len(flagged), len(distances), confidence)
    name = (lambda i: reference.training_names[i]) if reference.training_names else str
    return {
        "distance": "pixel RMSE in the training scale [-1, 1] to the nearest training slice",
        "num_training_slices": int(reference.training.shape[0]),
        "num_held_out_slices": int(len(reference.reference_distances)),
        "quantile": reference.quantile,
        "threshold": reference.threshold,
        "held_out_distance": {"min": float(reference.reference_distances.min()),
                              "median": float(np.median(reference.reference_distances)),
                              "max": float(reference.reference_distances.max())},
        "sample_distance": {"min": float(distances.min()), "median": float(np.median(distances)),
                            "max": float(distances.max())} if len(distances) else None,
        "num_samples": int(len(distances)),
        "num_flagged": int(len(flagged)),
        "flagged_fraction": float(len(flagged) / len(distances)) if len(distances) else float("nan"),
        "flagged_fraction_interval": [low, high],
        "confidence": confidence,
        "interval_method": "Wilson score",
        "expected_fraction_without_memorisation": reference.quantile,
        "flagged": [{"case": case_ids[i], "seed": int(seeds[i]), "distance": float(distances[i]),
                     "nearest_training_slice": name(int(nearest[i])), "nearest_training_index": int(nearest[i])}
                    for i in flagged],
    }


def save_flagged_pairs(path: str | Path, samples: np.ndarray, nearest_training: np.ndarray,
                       titles: Sequence[tuple[str, str]], title: str) -> Path:
    """Side by side: each flagged sample (left) and its nearest training slice (right), in [-1, 1]."""
    images = np.stack([image for pair in zip(samples, nearest_training, strict=True) for image in pair])
    names = [name for pair in titles for name in pair]
    return save_overlay_grid(images, None, [], path, titles=names, columns=2, title=title)
