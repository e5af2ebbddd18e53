"""PNG grids of slices with their label maps outlined, for users to look at."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from torch import Tensor  # noqa: E402

from anatldm.atomic import write_atomic  # noqa: E402

__all__ = ["CLASS_COLORS", "class_color", "reconstruction_grid", "render_overlay_grid", "sample_grid", "save_figure",
           "save_overlay_grid"]

#: one colour per foreground class (background has none)
CLASS_COLORS = ("#ff3b30", "#ffcc00", "#34c759", "#00c7ff", "#af52de", "#ff9500", "#52d1dc", "#f15bb5")


def _figure(
    images: np.ndarray,
    masks: np.ndarray | None,
    class_names: Sequence[str],
    titles: Sequence[str] | None = None,
    columns: int = 4,
    title: str | None = None,
) -> plt.Figure:
    """A dark figure of ``images (N, H, W)`` in [-1, 1] with the outlines of ``masks (N, H, W)``."""
    images = np.asarray(images, dtype=np.float32)
    rows = int(np.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows + 0.6), squeeze=False,
                             facecolor="black")
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(images):
            continue
        ax.imshow(images[index], cmap="gray", vmin=-1, vmax=1, interpolation="bilinear")
        if masks is not None:
            for c in range(1, len(class_names)):
                if (masks[index] == c).any():
                    ax.contour(masks[index] == c, levels=[0.5], colors=[class_color(c)], linewidths=0.9)
        if titles is not None:
            ax.set_title(titles[index], color="white", fontsize=8)
    if masks is not None:
        handles = [Line2D([], [], color=class_color(c), label=name) for c, name in enumerate(class_names) if c > 0]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False,
                   labelcolor="white")
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout(rect=(0, 0.03 if masks is not None else 0, 1, 0.98 if title else 1))
    return fig


def class_color(class_index: int) -> str:
    """The outline colour of foreground class ``class_index`` (1, 2, ...)."""
    return CLASS_COLORS[(class_index - 1) % len(CLASS_COLORS)]


def render_overlay_grid(images: np.ndarray, masks: np.ndarray | None, class_names: Sequence[str],
                        titles: Sequence[str] | None = None, columns: int = 4) -> np.ndarray:
    """The grid of :func:`save_overlay_grid` as an RGB array ``(H, W, 3) uint8`` (for loggers)."""
    fig = _figure(images, masks, class_names, titles, columns)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def save_overlay_grid(
    images: np.ndarray,
    masks: np.ndarray | None,
    class_names: Sequence[str],
    path: str | Path,
    titles: Sequence[str] | None = None,
    columns: int = 4,
    title: str | None = None,
) -> Path:
    """Save ``images (N, H, W)`` in [-1, 1] with the outlines of ``masks (N, H, W)`` as a PNG.

    The PNG is written to a temporary name and renamed, so no half-written file is left.
    """
    return save_figure(_figure(images, masks, class_names, titles, columns, title), path)


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 80, facecolor: str = "black") -> Path:
    """Write ``fig`` as a PNG under a temporary name, rename it to ``path`` and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, lambda partial: fig.savefig(partial, dpi=dpi, format="png", facecolor=facecolor))
    finally:
        plt.close(fig)
    return path


def reconstruction_grid(images: Tensor, reconstructions: Tensor, max_images: int = 8,
                        difference_gain: float = 4.0) -> Tensor:
    """Rows of ``input | reconstruction | |difference|`` as one ``(1, H * n, 3 * W)`` image in [0, 1].

    Inputs are in [-1, 1]. The difference is shown as ``|input - reconstruction| * difference_gain``
    on the image's grey scale (0 black, 2 white), so small errors stay visible. 3D volumes show
    their middle slice along the last axis.
    """
    images, reconstructions = images[:max_images].float(), reconstructions[:max_images].float()
    if images.ndim == 5:  # (B, C, H, W, D) -> middle slice (B, C, H, W)
        images, reconstructions = images[..., images.shape[-1] // 2], reconstructions[..., images.shape[-1] // 2]
    images, reconstructions = images[:, :1], reconstructions[:, :1].clamp(-1, 1)  # (n, 1, H, W)
    difference = ((images - reconstructions).abs() * difference_gain).clamp(0, 2) - 1  # (n, 1, H, W)
    rows = torch.cat([images, reconstructions, difference], dim=-1)  # (n, 1, H, 3W)
    grid = torch.cat(list(rows), dim=-2)  # (1, n * H, 3W)
    return ((grid + 1) / 2).clamp(0, 1).cpu()


def sample_grid(samples: dict, class_names: list[str], columns: int = 4) -> np.ndarray:
    """:func:`render_overlay_grid` of generated samples (``{"image": (B, 1, H, W), "mask": (B, H, W) or None}``)."""
    return render_overlay_grid(samples["image"][:, 0].float().cpu().numpy(),
                               None if samples["mask"] is None else samples["mask"].cpu().numpy(),
                               class_names, columns=columns)
