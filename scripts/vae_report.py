"""Evaluate an exported autoencoder bundle on held-out subjects and save a reconstruction grid.

    python scripts/vae_report.py --config configs/quickstart/vae.yaml \
        [--bundle runs/quickstart/vae/export] [--split test] [--out docs/images/vae_reconstruction.png]

Reads the bundle the way the diffusion stage does (no Lightning), builds the config's data
module, reconstructs every slice of the split from its posterior mean, and prints PSNR and SSIM
(data range 2 for [-1, 1]; PSNR per image, then averaged) as JSON. The PNG shows rows of
``input | reconstruction | 4 x |difference|`` (the task's TensorBoard grid: difference amplified
four times on the image's grey scale, 0 = black).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchmetrics.functional.image import (  # noqa: E402
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from anatldm.datamodules import AnatomyDataModule  # noqa: E402
from anatldm.models.autoencoder_bundle import load_autoencoder_bundle  # noqa: E402
from anatldm.visualize import reconstruction_grid  # noqa: E402


def evaluate(config_path: Path, bundle: Path | None, split: str, rows: int) -> tuple[dict, np.ndarray]:
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    bundle = bundle or Path(config["model"]["init_args"]["export_dir"])
    network, metadata = load_autoencoder_bundle(bundle)
    datamodule = AnatomyDataModule(**{**config["data"]["init_args"], "num_workers": 0, "augment": False})
    datamodule.setup("test")
    loader = DataLoader(datamodule.datasets[split], batch_size=32, shuffle=False)
    psnr, ssim, shown = [], [], []
    with torch.no_grad():
        for batch in loader:
            images = batch["image"]  # (B, 1, H, W)
            reconstruction = network.reconstruct(images).clamp(-1, 1)  # (B, 1, H, W)
            psnr.append(peak_signal_noise_ratio(reconstruction, images, data_range=2.0, dim=(1, 2, 3),
                                                reduction="none"))
            ssim.append(structural_similarity_index_measure(reconstruction, images, data_range=2.0,
                                                            reduction="none"))
            shown.append(reconstruction_grid(images, reconstruction, max_images=len(images)))  # (1, B * H, 3W)
    psnr, ssim = torch.cat(psnr), torch.cat(ssim)
    height = datamodule.image_size[0]
    panels = torch.cat([grid[0] for grid in shown]).unflatten(0, (-1, height))  # (N, H, 3W) in [0, 1]
    pick = np.linspace(0, len(panels) - 1, rows).round().astype(int)  # spread over the split
    summary = {
        "bundle": str(bundle), "split": split, "slices": len(psnr),
        "subjects": len(set(np.asarray(datamodule.cache.subjects)[datamodule.datasets[split].indices].tolist())),
        "psnr_db": round(float(psnr.mean()), 2), "psnr_db_min": round(float(psnr.min()), 2),
        "ssim": round(float(ssim.mean()), 4), "ssim_min": round(float(ssim.min()), 4),
        "scale_factor": metadata["scale_factor"], "latent_channels": metadata["config"]["latent_channels"],
        "downsampling_factor": metadata.get("downsampling_factor"),
    }
    return summary, panels[pick].numpy()


def save_grid(panels: np.ndarray, summary: dict, out: Path) -> None:
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.05 * len(panels) + 0.6), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        ax.imshow(panel, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    axes[0, 0].set_title("input  |  reconstruction  |  4 x |difference|", fontsize=9)
    fig.suptitle(f"{summary['split']} split ({summary['subjects']} held-out subjects): "
                 f"PSNR {summary['psnr_db']:.1f} dB, SSIM {summary['ssim']:.3f}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the autoencoder's fit config")
    parser.add_argument("--bundle", type=Path, default=None, help="export folder (default: the config's)")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("docs/images/vae_reconstruction.png"))
    args = parser.parse_args(argv)
    summary, panels = evaluate(args.config, args.bundle, args.split, args.rows)
    save_grid(panels, summary, args.out)
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
