"""Slice-level controls of the judge: real slices made anatomically wrong on purpose.

A judge that passes these as often as real slices does not measure anatomy (docs/method.md, 'Controls'):

- :func:`flip_left_right` mirrors a slice: liver and spleen change sides, a layout that never
  occurs in a real axial slice (situs inversus aside). Only slices that hold a lateralised class
  (one whose centroid lies on one side of the midline, :meth:`AnatomyRules.lateralised_classes`)
  make the control: a mirrored slice of symmetric anatomy (kidneys and spine alone) is still
  correct anatomy, and no judge should fail it.
- :func:`splice_levels` joins the upper half of one slice to the lower half of a slice of the
  same subject at least half its slice range away: every organ is real, their combination is not.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["anatomy_breaking_augmentation", "flip_left_right", "splice_levels"]


def flip_left_right(images: Tensor) -> Tensor:
    """Images ``(B, 1, H, W)`` mirrored along their columns (patient left <-> right)."""
    return torch.flip(images, dims=(-1,))


def splice_levels(images: Tensor, subjects: np.ndarray, positions: np.ndarray, min_gap_fraction: float = 0.5,
                  seed: int = 0) -> Tensor:
    """Slices whose lower half comes from another level of the same subject.

    For slice ``i`` the partner ``j`` is drawn (seeded) among slices of the same subject whose
    position differs by at least ``min_gap_fraction`` of that subject's slice range, or among all
    other subjects' slices where none does; rows ``H // 2 ..`` of ``i`` are replaced by ``j``'s.

    Args:
        images: slices ``(B, 1, H, W)``.
        subjects: subject of each slice ``(B,)`` (any hashable values).
        positions: slice position along the slice axis ``(B,)``.
        min_gap_fraction: smallest level distance, as a fraction of the subject's range.
        seed: seed of the partner draw.
    """
    if len(images) < 2:
        raise ValueError(f"splicing needs at least two slices, got {len(images)}")
    subjects, positions = np.asarray(subjects), np.asarray(positions)
    rng = np.random.default_rng(seed)
    partners = np.empty(len(images), dtype=np.int64)
    for i in range(len(images)):
        same = subjects == subjects[i]
        span = positions[same].max() - positions[same].min()
        far = np.nonzero(same & (np.abs(positions - positions[i]) >= max(1.0, min_gap_fraction * span)))[0]
        if far.size == 0:
            far = np.nonzero(~same)[0] if (~same).any() else np.setdiff1d(np.arange(len(images)), [i])
        partners[i] = rng.choice(far)
    spliced = images.clone()
    half = images.shape[-2] // 2
    spliced[..., half:, :] = images[torch.as_tensor(partners)][..., half:, :]
    return spliced


def anatomy_breaking_augmentation(images: Tensor, masks: Tensor, flip_probability: float,
                                  splice_probability: float) -> tuple[Tensor, Tensor]:
    """A training batch with the controls' transformations applied at random, image and mask alike.

    A judge trained only on correct anatomy learns where organs *should* be and can label a flipped
    slice's liver, now on the image-right, as spleen: its labels then report its expectations, not
    the image, and every anatomical error of a generator is corrected away before the rules see
    it. Training it also on left-right flips (probability ``flip_probability`` per slice) and on
    slices whose rows from a random seam in ``[H / 4, 3H / 4)`` down come from another slice of
    the batch (``splice_probability``) takes that prior away: the judge must segment what it sees.
    Randomness from torch's global RNG (reseeded per step by ``StepSeeding``).

    Args:
        images: ``(B, 1, H, W)``.
        masks: ``(B, H, W)``.
        flip_probability: per-slice probability of a left-right flip.
        splice_probability: per-slice probability of a splice with another slice of the batch.
    """
    images, masks = images.clone(), masks.clone()
    batch, height = images.shape[0], images.shape[-2]
    flip = torch.rand(batch) < flip_probability
    images[flip], masks[flip] = images[flip].flip(-1), masks[flip].flip(-1)
    if batch > 1 and splice_probability > 0:
        partners = torch.randperm(batch)
        seams = torch.randint(height // 4, max(height // 4 + 1, 3 * height // 4), (batch,))
        chosen = torch.rand(batch) < splice_probability
        below = (torch.arange(height)[None] >= seams[:, None]) & chosen[:, None]  # (B, H) rows taken from the partner
        below = below.to(images.device)
        images = torch.where(below[:, None, :, None], images[partners], images)
        masks = torch.where(below[:, :, None], masks[partners], masks)
    return images, masks
