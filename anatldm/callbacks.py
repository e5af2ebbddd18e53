"""Lightning callbacks of anatldm: writing generated (image, mask) pairs to disk."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from anatldm.data.orientation import display_to_ras
from anatldm.errors import check_output_folder
from anatldm.visualize import save_overlay_grid

__all__ = ["SampleWriter", "to_raw_intensity"]

logger = logging.getLogger(__name__)


def to_raw_intensity(images: np.ndarray, normalization: dict) -> np.ndarray:
    """Undo the ``ct`` preset (back to HU); other presets stay in [-1, 1]."""
    if normalization.get("preset") == "ct" and normalization.get("ct_window"):
        width, level = normalization["ct_window"]
        low = level - width / 2
        return ((images + 1) / 2 * width + low).astype(np.float32)
    return images.astype(np.float32)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial.nii.gz")
    nib.save(nib.Nifti1Image(array, affine), partial)
    os.replace(partial, path)


class SampleWriter(BasePredictionWriter):
    """Write each generated pair as NIfTI (image + label map) and a PNG grid of the first ones.

    Files: ``sample_<seed>_image.nii.gz`` (HU for CT, [-1, 1] otherwise),
    ``sample_<seed>_label.nii.gz`` (class indices), ``classes.json`` (the class names),
    ``samples.png`` (up to ``grid_size`` samples with mask outlines). Every file is written
    under a temporary name and renamed, so an interrupted run leaves no half-written file.
    Slices are stored as one-slice RAS+ volumes in the orientation of the training data.

    Args:
        output_dir: folder of the outputs, created if needed.
        grid_size: samples shown in ``samples.png``.
    """

    def __init__(self, output_dir: str = "samples", grid_size: int = 16) -> None:
        super().__init__(write_interval="batch")
        check_output_folder(output_dir, "SampleWriter.output_dir")
        self.output_dir = Path(output_dir)
        self.grid_size = grid_size
        self._grid: list[tuple[np.ndarray, np.ndarray | None, int]] = []

    def on_predict_start(self, trainer, pl_module) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._grid = []
        if trainer.is_global_zero:
            classes = self.output_dir / "classes.json"
            classes.with_suffix(".partial").write_text(json.dumps(pl_module.class_names), encoding="utf-8")
            os.replace(classes.with_suffix(".partial"), classes)

    def write_on_batch_end(self, trainer, pl_module, prediction: dict[str, Any], batch_indices, batch,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        images = prediction["image"][:, 0].float().cpu().numpy()  # (B, H, W) in [-1, 1]
        masks = None if prediction["mask"] is None else prediction["mask"].cpu().numpy().astype(np.uint8)
        normalization = pl_module.bundle.get("normalization", {})
        spacing = normalization.get("spacing") or [1.0, 1.0]
        affine = np.diag([float(spacing[1]), float(spacing[0]), 1.0, 1.0])  # columns = x, rows = y
        raw = to_raw_intensity(images, normalization)
        for index, seed in enumerate(prediction["seed"].tolist()):
            stem = f"sample_{int(seed):06d}"
            _save_nifti(display_to_ras(raw[index][None]), affine, self.output_dir / f"{stem}_image.nii.gz")
            if masks is not None:
                _save_nifti(display_to_ras(masks[index][None]), affine, self.output_dir / f"{stem}_label.nii.gz")
            if len(self._grid) < self.grid_size:
                self._grid.append((images[index], None if masks is None else masks[index], int(seed)))

    def on_predict_end(self, trainer, pl_module) -> None:
        if not self._grid:
            return
        images = np.stack([g[0] for g in self._grid])
        masks = None if self._grid[0][1] is None else np.stack([g[1] for g in self._grid])
        path = save_overlay_grid(images, masks, pl_module.class_names, self.output_dir / f"samples_rank{trainer.global_rank}.png"
                                 if trainer.world_size > 1 else self.output_dir / "samples.png",
                                 titles=[f"seed {g[2]}" for g in self._grid])
        logger.info("wrote %s and the NIfTI pairs to %s", path.name, self.output_dir)


