"""How good are the anatomy head's masks on real data? (no Lightning)

The head's promise is a mask that matches its image. On generated samples that is measured
by self-consistency (head vs judge, :class:`~anatldm.metrics.SelfConsistencyDice`); on real test
slices it can be measured against the ground truth itself: encode the slice (posterior mean),
noise its latent to timestep ``t``, and compare the head's mask with the label map, by subject
as the judge's gate does (:func:`~anatldm.evaluation.protocol.case_dice`). ``t = 0`` is the call
that labels every sample; larger ``t`` shows how early in sampling the head knows the anatomy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from anatldm.evaluation.slices import CaseOverlap

__all__ = ["HEAD_TIMESTEPS", "HeadDice", "head_dice_by_timestep"]

#: the timesteps of the report's head diagnostic
HEAD_TIMESTEPS: tuple[int, ...] = (0, 50, 200, 500)


def slice_noise(subjects: Sequence[str], positions: Sequence[int], shape: Sequence[int]) -> Tensor:
    """Noise ``(B, *shape)`` seeded by each slice itself (subject, position): the numbers do not
    depend on the batch or the rank (:func:`~anatldm.diffusion.training.slice_seeds`)."""
    from anatldm.diffusion.training import slice_seeds

    seeds = slice_seeds({"subject": list(subjects), "position": list(positions)})
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s)) for s in seeds])


class HeadDice:
    """The anatomy heads' Dice against ground truth on real slices noised to each timestep.

    Args:
        models: name -> :class:`~anatldm.pipelines.AnatomicalLDMPipeline`; models without a head
            are skipped.
        class_names: label names, background first.
        subject_names: every subject of the data (gathered across ranks by index).
        device: where the states live.
        timesteps: noise levels ``t`` (0: the clean latent, the sampler's final call).
    """

    def __init__(self, models: Mapping[str, object], class_names: list[str], subject_names, device,
                 timesteps: Sequence[int] = HEAD_TIMESTEPS) -> None:
        self.models = {name: model for name, model in models.items() if model.denoiser.head is not None}
        self.timesteps = tuple(int(t) for t in timesteps)
        self.overlap = {(name, t): CaseOverlap(class_names, subject_names, device)
                        for name in self.models for t in self.timesteps}

    @torch.no_grad()
    def update(self, images: Tensor, truth: Tensor, subjects: Sequence[str], positions: Sequence[int]) -> None:
        """One batch of real slices ``(B, 1, *S)`` in [-1, 1] with label maps ``(B, *S)``."""
        noise = None
        for name, pipeline in self.models.items():
            latents = pipeline.autoencoder.encode(images)[0] * pipeline.scale_factor  # (B, C_z, *s), posterior mean
            if noise is None or noise.shape != latents.shape:
                noise = slice_noise(subjects, [int(p) for p in positions], latents.shape[1:]).to(latents)
            was_training = pipeline.denoiser.training
            pipeline.denoiser.eval()
            try:
                for t in self.timesteps:
                    t_batch = torch.full((len(latents),), t, device=latents.device, dtype=torch.long)
                    noisy = pipeline.train_scheduler.add_noise(latents, noise, t_batch)
                    reads = t == 0 and pipeline.denoiser.reads_image_features  # as the final sampling call
                    logits = pipeline.denoiser(noisy, t_batch, mask_size=truth.shape[1:],
                                               image_features=pipeline.head_image_features(noisy) if reads else None
                                               ).anatomy_logits
                    self.overlap[(name, t)].update(logits.argmax(1), truth, subjects)
            finally:
                pipeline.denoiser.train(was_training)

    def compute(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{model: {"t=0": {class: dice, ..., "mean": macro}, ...}}`` over all ranks."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for (name, t), overlap in self.overlap.items():
            dice = overlap.case_dice()
            dice["mean"] = float(np.nanmean(list(dice.values())))
            out.setdefault(name, {})[f"t={t}"] = {k: round(v, 4) for k, v in dice.items()}
        return out


def head_dice_by_timestep(pipeline, images: Tensor, masks: Tensor, subjects: Sequence[str],
                          positions: Sequence[int], timesteps: Sequence[int] = HEAD_TIMESTEPS,
                          batch_size: int = 64) -> dict[str, dict[str, float]]:
    """:class:`HeadDice` of one pipeline on real slices ``images (N, 1, *S)``, ``masks (N, *S)``
    (e.g. a screen outside the evaluation): ``{"t=0": {class: dice, ..., "mean"}, ...}``."""
    if pipeline.denoiser.head is None:
        raise ValueError("this model has no anatomy head")
    subjects, positions = list(subjects), list(positions)
    diagnostic = HeadDice({"model": pipeline}, pipeline.class_names, sorted(set(subjects)), pipeline.device,
                          timesteps)
    for s in range(0, len(images), batch_size):
        diagnostic.update(images[s:s + batch_size].to(pipeline.device), masks[s:s + batch_size].to(pipeline.device),
                          subjects[s:s + batch_size], positions[s:s + batch_size])
    return diagnostic.compute()["model"]
