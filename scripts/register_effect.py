"""How much do the registers change the noise prediction? (claim v2's located-cause diagnostic)

    python scripts/register_effect.py CHECKPOINT [CHECKPOINT ...] [--timesteps 50 200 500 800] [--out FILE.json]

For real test slices of the checkpoint's own data (the split it was trained beside), encoded by
its autoencoder and noised to each timestep ``t`` (the training scheduler, fixed noise), prints
the relative change of the noise prediction when the register path is switched off,

    e(t) = mean_i ||eps(z_t; R) - eps(z_t; no registers)|| / ||eps(z_t; R)||,

the quantity register guidance amplifies by ``w - 1``. ``e`` near 0 means the registers do not
take part in sampling, whatever their training did. A baseline (no bank) is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anatldm.atomic import write_text_atomic  # noqa: E402
from anatldm.datamodules import AnatomyDataModule  # noqa: E402
from anatldm.trainers import AnatomicalLDMTask  # noqa: E402


@torch.no_grad()
def register_effect(checkpoint: str, timesteps: list[int], max_slices: int = 128, cache_dir: str = ".cache/anatldm") -> dict:
    task = AnatomicalLDMTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    pipeline = task.pipeline
    if pipeline.denoiser.registers is None:
        raise SystemExit(f"{checkpoint}: no register bank (a baseline)")
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["datamodule_hyper_parameters"]
    settings = {k: v for k, v in stored.items() if not k.startswith("_")}
    data = AnatomyDataModule(**{**settings, "cache_dir": cache_dir, "augment": False, "num_workers": 0})
    data.setup()
    indices = data.datasets["test"].indices[:max_slices]
    images = torch.from_numpy(data.cache.images[indices].astype("float32"))[:, None]  # (N, 1, H, W)
    latents = pipeline.autoencoder.encode(images)[0] * pipeline.scale_factor  # posterior mean
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=generator)
    out = {}
    for t in timesteps:
        steps = torch.full((len(latents),), t, dtype=torch.long)
        noisy = pipeline.train_scheduler.add_noise(latents, noise, steps)
        with_registers = pipeline.denoiser(noisy, steps).sample
        without = pipeline.denoiser(noisy, steps, use_registers=False).sample
        change = (with_registers - without).flatten(1).norm(dim=1) / with_registers.flatten(1).norm(dim=1).clamp_min(1e-12)
        out[str(t)] = float(change.mean())
    return {"checkpoint": checkpoint, "relative_change_by_t": out, "num_slices": len(indices),
            "register_dropout": float(task.denoiser_config.registers.dropout)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[50, 200, 500, 800])
    parser.add_argument("--max-slices", type=int, default=128)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = [register_effect(c, args.timesteps, args.max_slices) for c in args.checkpoints]
    for row in rows:
        print(f"{row['checkpoint']}: dropout {row['register_dropout']:g}; " +
              ", ".join(f"t={t}: {v:.4f}" for t, v in row["relative_change_by_t"].items()))
    if args.out:
        write_text_atomic(args.out, json.dumps({"command": "python scripts/register_effect.py " + " ".join(
            args.checkpoints), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
