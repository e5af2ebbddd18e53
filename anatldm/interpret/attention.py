"""Register attention maps of generated samples: resized to the image and saved as PNG panels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from anatldm.visualize import class_color, save_figure  # noqa: E402

__all__ = ["attention_at_image_size", "save_attention_panels"]


def attention_at_image_size(attention: Mapping[str, Tensor], image_size: Sequence[int]) -> dict[str, Tensor]:
    """Every level's maps ``(B, K, *S_level)`` resized to ``(B, K, *image_size)`` (float32), plus
    their mean over levels under the key ``"mean"``.

    Bilinear (trilinear in 3D) resizing is a convex combination of neighbouring positions, so
    maps that sum to one over the ``K`` registers at every position still do afterwards.
    """
    if not attention:
        raise ValueError("no attention maps: sample with attention recording on (attention_steps > 0) "
                         "from a model with registers")
    size = tuple(int(s) for s in image_size)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    resized = {}
    for name in sorted(attention):
        maps = attention[name].float()
        if maps.ndim != len(size) + 2:
            raise ValueError(f"attention '{name}' has shape {tuple(maps.shape)}, expected (B, K, *S) "
                             f"with {len(size)} spatial dimensions")
        resized[name] = maps if tuple(maps.shape[2:]) == size else \
            F.interpolate(maps, size=size, mode=mode, align_corners=False)
    resized["mean"] = torch.stack(list(resized.values())).mean(0)
    return resized


def save_attention_panels(image: np.ndarray, mask: np.ndarray | None, attention: Mapping[str, np.ndarray],
                          class_names: Sequence[str], path: str | Path, title: str | None = None) -> Path:
    """One PNG: a row per level (``attention[level]``: ``(K, H, W)``), a panel per register.

    The first column is the image ``(H, W)`` in [-1, 1] with the outlines of ``mask``; each
    register's panel overlays its attention relative to uniform, ``K * share`` (1 = the register
    gets ``1/K`` of the attention; red more, blue less), with one symmetric colour range per row
    given in the row's first title. Written under a temporary name and renamed.
    """
    levels = list(attention)
    num_registers = next(iter(attention.values())).shape[0]
    fig, axes = plt.subplots(len(levels), num_registers + 1, squeeze=False, facecolor="black",
                             figsize=(1.6 * (num_registers + 1), 1.7 * len(levels) + 0.5))
    for row, level in enumerate(levels):
        relative = np.asarray(attention[level], dtype=np.float32) * num_registers  # (K, H, W), 1 = uniform
        spread = max(float(np.abs(relative - 1).max()), 1e-6)
        ax = axes[row, 0]
        ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
        if mask is not None:
            for c in range(1, len(class_names)):
                if (mask == c).any():
                    ax.contour(mask == c, levels=[0.5], colors=[class_color(c)], linewidths=0.7)
        ax.set_title(f"{level}: 1 ± {spread:.1%}", color="white", fontsize=7)
        for k in range(num_registers):
            ax = axes[row, k + 1]
            ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
            ax.imshow(relative[k], cmap="RdBu_r", vmin=1 - spread, vmax=1 + spread, alpha=0.7)
            ax.set_title(f"r{k}", color="white", fontsize=7)
        for ax in axes[row]:
            ax.axis("off")
    if title:
        fig.suptitle(title, color="white", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
