"""Shared pieces of the evaluation metrics: input checks, area fractions, per-sample states."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["SampleMetric", "area_fractions", "check_images", "check_masks", "gather_state"]


def check_masks(masks: Tensor | np.ndarray, num_classes: int | None = None, name: str = "masks") -> Tensor:
    """Validate a batch of integer label maps ``(B, H, W)`` and return it as an int64 tensor.

    Raises:
        ValueError: if the shape is not ``(B, H, W)``, the dtype is not integer, or a label lies
            outside ``[0, num_classes)``.
    """
    masks = torch.from_numpy(np.ascontiguousarray(masks)) if isinstance(masks, np.ndarray) else torch.as_tensor(masks)
    if masks.ndim != 3:
        raise ValueError(f"{name} must be integer label maps of shape (B, H, W), got shape {tuple(masks.shape)}")
    if masks.dtype.is_floating_point or masks.dtype.is_complex or masks.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {masks.dtype}")
    masks = masks.long()
    if masks.numel() and num_classes is not None:
        low, high = int(masks.min()), int(masks.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{name} holds labels in [{low}, {high}], expected [0, {num_classes - 1}] "
                             f"for num_classes={num_classes}")
    return masks


def check_images(images: Tensor, name: str = "images") -> Tensor:
    """Validate a batch of floating-point images ``(B, C, H, W)`` (slices in [-1, 1])."""
    if not isinstance(images, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point in [-1, 1], got dtype {images.dtype}")
    return images


def area_fractions(masks: Tensor, num_classes: int) -> Tensor:
    """Per-sample area fraction of every foreground class: ``(B, H, W)`` -> ``(B, C - 1)`` float.

    Entry ``[b, c - 1]`` is the number of pixels of class ``c`` in mask ``b`` divided by
    ``H * W``; an absent class has area 0.
    """
    batch = masks.shape[0]
    offsets = torch.arange(batch, device=masks.device).unsqueeze(1) * num_classes  # (B, 1)
    flat = (masks.reshape(batch, -1) + offsets).reshape(-1)  # (B * H * W,)
    counts = torch.bincount(flat, minlength=batch * num_classes).reshape(batch, num_classes)  # (B, C)
    return counts[:, 1:].float() / masks[0].numel()  # (B, C - 1)


def gather_state(metric: Metric, name: str) -> Tensor:
    """A ``"cat"`` list state of ``metric``, concatenated over updates and, under DDP, over ranks.

    Rank-major order (all of rank 0's samples, then rank 1's, ...). A new tensor; an empty state
    gives an empty tensor. A collective call under DDP, like ``compute``: every rank must call it.
    Inside ``compute`` (states already synced) it reads the synced state as it is; with
    ``sync_on_compute=False`` it reads the local state.
    """
    if name not in metric._defaults:
        raise ValueError(f"{type(metric).__name__} has no state '{name}'; states: {sorted(metric._defaults)}")
    sync = metric.sync_on_compute and not metric._is_synced
    with metric.sync_context(should_sync=sync, should_unsync=sync):
        value = getattr(metric, name)
        if isinstance(value, list) and not value:
            return torch.empty(0, device=metric.device)
        return dim_zero_cat(value).clone()


class SampleMetric(Metric):
    """A ``torchmetrics.Metric`` that keeps per-sample values in ``"cat"`` list states.

    ``gathered(name)`` returns one such state concatenated over all updates and, under DDP, over
    all ranks (rank-major order), so a bootstrap can resample it. Like ``compute``, it is a
    collective call under DDP: every rank must call it.
    """

    full_state_update = False

    def gathered(self, name: str) -> Tensor:
        """The ``"cat"`` state ``name`` concatenated over updates and ranks (a new tensor)."""
        return gather_state(self, name)
