"""How much does a guide change the noise prediction? (claim v2's located-cause diagnostic)

    python scripts/register_effect.py CHECKPOINT [CHECKPOINT ...] [--timesteps 50 200 500 800] [--out FILE.json]
    python scripts/register_effect.py CHECKPOINT [...] --guide-fraction 0.25    # autoguidance's guide instead

For real test slices of the checkpoint's own data (the split it was trained beside), encoded by
its autoencoder and noised to each timestep ``t`` (the training scheduler, fixed noise), prints
the relative change of the noise prediction when the register path is switched off,

    e(t) = mean_i ||eps(z_t; R) - eps(z_t; no registers)|| / ||eps(z_t; R)||,

the quantity register guidance amplifies by ``w - 1``. ``e`` near 0 means the registers do not
take part in sampling, whatever their training did. A baseline (no bank) is refused. With
``--guide-fraction f`` the other prediction is autoguidance's guide instead, the run's
``fraction-f.ckpt`` beside the checkpoint (any LDM, the baseline included): ``e`` is then the
size of what autoguidance amplifies, and ``agreement`` (the cosine between ``eps - eps_guide``
and ``eps_true - eps_guide``, the true noise) says whether it points towards the truth. A model
with anatomy-conditioned registers is conditioned as in sampling, on its own head's soft mask of
the same noisy latent, and ``conditioning_change_by_t`` is the same ratio with that condition
replaced by zeros (the first sampling step's): how much the registers respond to the sample.
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
from anatldm.pipelines.guide import load_guide  # noqa: E402
from anatldm.trainers import AnatomicalLDMTask  # noqa: E402


def _relative_change(eps: torch.Tensor, other: torch.Tensor) -> float:
    """mean_i ||eps_i - other_i|| / ||eps_i|| over a batch ``(N, ...)``."""
    return float(((eps - other).flatten(1).norm(dim=1) / eps.flatten(1).norm(dim=1).clamp_min(1e-12)).mean())


@torch.no_grad()
def register_effect(checkpoint: str, timesteps: list[int], max_slices: int = 128, cache_dir: str = ".cache/anatldm",
                    guide_fraction: float | None = None) -> dict:
    task = AnatomicalLDMTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    pipeline = task.pipeline
    guide = None
    if guide_fraction is not None:
        guide_path = Path(checkpoint).parent / f"fraction-{guide_fraction:.2f}.ckpt"
        if not guide_path.is_file():
            raise SystemExit(f"{checkpoint}: no autoguidance guide {guide_path} beside it")
        guide = load_guide(str(guide_path), pipeline)  # as the sampler loads it: same autoencoder, checked
    elif pipeline.denoiser.registers is None:
        raise SystemExit(f"{checkpoint}: no register bank (a baseline); --guide-fraction measures autoguidance")
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["datamodule_hyper_parameters"]
    settings = {k: v for k, v in stored.items() if not k.startswith("_")}
    data = AnatomyDataModule(**{**settings, "cache_dir": cache_dir, "augment": False, "num_workers": 0})
    data.setup()
    indices = data.datasets["test"].indices[:max_slices]
    images = torch.from_numpy(data.cache.images[indices].astype("float32"))[:, None]  # (N, 1, H, W)
    latents = pipeline.autoencoder.encode(images)[0] * pipeline.scale_factor  # posterior mean
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=generator)
    denoiser = pipeline.denoiser
    conditioned = getattr(denoiser, "anatomy_conditioner", None) is not None
    out, agreement, conditioning = {}, {}, {}
    for t in timesteps:
        steps = torch.full((len(latents),), t, dtype=torch.long)
        noisy = pipeline.train_scheduler.add_noise(latents, noise, steps)
        unconditioned = denoiser(noisy, steps)
        eps, anatomy = unconditioned.sample, None  # (N, C, h, w)
        if conditioned:  # as in sampling: the head's soft mask of the same latent
            anatomy = torch.softmax(unconditioned.anatomy_logits.float(), dim=1)
            eps = denoiser(noisy, steps, anatomy=anatomy).sample
            conditioning[str(t)] = _relative_change(eps, unconditioned.sample)
        other = guide(noisy, steps).sample if guide is not None else \
            denoiser(noisy, steps, anatomy=anatomy, use_registers=False).sample
        out[str(t)] = _relative_change(eps, other)
        cosine = torch.nn.functional.cosine_similarity((eps - other).flatten(1), (noise - other).flatten(1), dim=1)
        agreement[str(t)] = float(cosine.mean())
    return {"checkpoint": checkpoint, "guide": f"fraction-{guide_fraction:.2f}" if guide is not None else "no registers",
            "relative_change_by_t": out, "agreement_by_t": agreement, "num_slices": len(indices),
            **({"conditioning_change_by_t": conditioning} if conditioned else {}),
            "register_dropout": float(task.denoiser_config.registers.dropout)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[50, 200, 500, 800])
    parser.add_argument("--max-slices", type=int, default=128)
    parser.add_argument("--guide-fraction", type=float, default=None,
                        help="compare with autoguidance's guide, the run's fraction-F.ckpt, not the register path")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = [register_effect(c, args.timesteps, args.max_slices, guide_fraction=args.guide_fraction)
            for c in args.checkpoints]
    for row in rows:
        print(f"{row['checkpoint']} vs {row['guide']}: " +
              ", ".join(f"t={t}: {v:.4f} (agreement {row['agreement_by_t'][t]:+.3f})"
                        for t, v in row["relative_change_by_t"].items())
              + ("; conditioning: " + ", ".join(f"t={t}: {v:.4f}" for t, v in row["conditioning_change_by_t"].items())
                 if "conditioning_change_by_t" in row else ""))
    if args.out:
        write_text_atomic(args.out, json.dumps({"command": "python scripts/register_effect.py " + " ".join(
            argv if argv is not None else sys.argv[1:]), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
