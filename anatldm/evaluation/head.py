"""How good are the anatomy head's masks on real data? (no Lightning)

The head's promise is a mask that matches its image. On generated samples that is measured
by self-consistency (head vs judge, :class:`~anatldm.metrics.SelfConsistencyDice`); on real test
slices it can be measured against the ground truth itself: encode the slice, noise its latent
to timestep ``t``, and compare the head's mask with the label map, by subject as the judge's
gate does (:func:`~anatldm.evaluation.protocol.case_dice`). ``t = 0`` is the call that labels
every sample; larger ``t`` shows how early in sampling the head knows the anatomy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from anatldm.evaluation.protocol import case_dice

__all__ = ["HEAD_TIMESTEPS", "head_dice_by_timestep"]

#: the timesteps of the report's head diagnostic
HEAD_TIMESTEPS: tuple[int, ...] = (0, 50, 200, 500)


@torch.no_grad()
def head_dice_by_timestep(pipeline, images: Tensor, masks: Tensor, subjects: Sequence[str],
                          timesteps: Sequence[int] = HEAD_TIMESTEPS, seed: int = 0,
                          batch_size: int = 64) -> dict[str, dict[str, float]]:
    """The head's Dice per class against ground truth on real slices noised to each timestep.

    Args:
        pipeline: an :class:`~anatldm.pipelines.AnatomicalLDMPipeline` with a head.
        images: real slices ``(N, 1, *S)`` in [-1, 1].
        masks: their label maps ``(N, *S)``.
        subjects: the subject of each slice (Dice is pooled per subject, then averaged).
        timesteps: noise levels ``t`` (0: the clean latent, the sampler's final call).
        seed: seed of the noise (the same noise for every ``t``).
        batch_size: slices per denoiser call.

    Returns:
        ``{"t=0": {class: dice, ..., "mean": macro}, "t=50": ...}``.
    """
    if pipeline.denoiser.head is None:
        raise ValueError("this model has no anatomy head")
    device, num_classes = pipeline.device, len(pipeline.class_names)
    subjects = np.asarray(list(subjects))
    generator = torch.Generator().manual_seed(seed)
    latents = torch.cat([pipeline.autoencoder.encode(images[s:s + batch_size].to(device))[0]
                         for s in range(0, len(images), batch_size)]) * pipeline.scale_factor  # (N, C_z, *s)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    classes = torch.arange(1, num_classes, device=device).view(1, -1, *([1] * (masks.ndim - 1)))  # (1, C-1, 1..)
    was_training = pipeline.denoiser.training
    pipeline.denoiser.eval()
    results = {}
    try:
        for t in timesteps:
            intersection, cardinality = [], []
            for s in range(0, len(latents), batch_size):
                z, eps = latents[s:s + batch_size], noise[s:s + batch_size]
                t_batch = torch.full((len(z),), int(t), device=device, dtype=torch.long)
                noisy = pipeline.train_scheduler.add_noise(z, eps, t_batch)
                logits = pipeline.denoiser(noisy, t_batch, mask_size=pipeline.image_size).anatomy_logits
                predicted = logits.argmax(1).unsqueeze(1) == classes  # (B, C-1, *S)
                truth = masks[s:s + batch_size].to(device).unsqueeze(1) == classes
                dims = tuple(range(2, predicted.ndim))
                intersection.append((predicted & truth).sum(dims).cpu())
                cardinality.append((predicted.sum(dims) + truth.sum(dims)).cpu())
            dice = case_dice(torch.cat(intersection).numpy(), torch.cat(cardinality).numpy(), subjects,
                             pipeline.class_names)
            dice["mean"] = float(np.nanmean(list(dice.values())))
            results[f"t={int(t)}"] = {k: round(v, 4) for k, v in dice.items()}
    finally:
        pipeline.denoiser.train(was_training)
    return results
