"""Screen: is the anatomy head under-trained, or is its input the limit?

    python benchmarks/screen_head_refinement.py [--checkpoint runs/quickstart/ldm/checkpoints/last.ckpt]
        [--rounds 2] [--steps 500] [--lr 1e-3]

Continues the head's t = 0 refinement (:func:`~anatldm.diffusion.head_refinement.refine_head`, the
denoiser frozen) of a trained LDM for ``--rounds`` x ``--steps`` more steps on the training latents
of the quickstart's data, and prints, before and after each round, the head's Dice at t = 0 on
the real test slices (:func:`~anatldm.evaluation.head.head_dice_by_timestep`) with the mean
training loss of the round's last 20 steps. Nothing is written back: the checkpoint is only read.
A training loss that keeps falling while the Dice on real slices stays put means the head is not
short of training. A screen: one model, no statistics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from bench_sampling import real_test_slices  # benchmarks/ is on sys.path when run as a script

from anatldm.datamodules import AnatomyDataModule
from anatldm.diffusion import training as ldm_stage
from anatldm.diffusion.head_refinement import refine_head
from anatldm.evaluation.head import head_dice_by_timestep
from anatldm.trainers import AnatomicalLDMTask

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs/quickstart/ldm/checkpoints/last.ckpt")
    parser.add_argument("--data-config", type=Path, default=ROOT / "configs/quickstart/ldm.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    task = AnatomicalLDMTask.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=False).eval()
    data = yaml.safe_load(args.data_config.read_text(encoding="utf-8"))["data"]["init_args"]
    data["cache_dir"] = str(ROOT / data["cache_dir"])
    datamodule = AnatomyDataModule(**data)
    datamodule.setup("fit")

    def batches():
        while True:
            for batch in datamodule.train_dataloader():
                mu, sigma = ldm_stage.posterior_moments(batch, task.autoencoder)
                yield (mu + sigma * torch.randn_like(mu)) * task.scale_factor, batch["mask"]

    real = real_test_slices(args.data_config)
    pipeline, stream = task.pipeline, batches()
    print(json.dumps({"steps": 0, "head_dice_t0": head_dice_by_timestep(pipeline, *real, timesteps=(0,))["t=0"]}),
          flush=True)
    for round_ in range(1, args.rounds + 1):
        losses = refine_head(task.denoiser, stream, task.anatomy_loss, args.steps, args.lr, pipeline.image_feature_reader)
        print(json.dumps({"steps": round_ * args.steps, "train_loss_last_20": round(sum(losses[-20:]) / 20, 4),
                          "head_dice_t0": head_dice_by_timestep(pipeline, *real, timesteps=(0,))["t=0"]}), flush=True)


if __name__ == "__main__":
    main()
