"""How good are the anatomy head's masks on real data? (no Lightning)

The head's promise is a mask that matches its image. On generated samples that is measured
by self-consistency (head vs judge, :class:`~anatldm.metrics.SelfConsistencyDice`); on real test
slices it can be measured against the ground truth itself: encode the slice (posterior mean),
noise its latent to timestep ``t``, and compare the head's mask with the label map, by subject
as the judge's gate does (:func:`~anatldm.evaluation.protocol.case_dice`). ``t = 0`` is the call
that labels every sample; larger ``t`` shows how early in sampling the head knows the anatomy.

With a judge, the same t = 0 call is also compared with the judge's mask of the decoded latent
(the slice's reconstruction): the self-consistency a sample as good as a reconstruction of a real
slice would get. It bounds the self-consistency of samples from above, and separates what the
samples cost from what the head and the judge cannot agree on even on decoded real anatomy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from anatldm.evaluation.slices import CaseOverlap
from anatldm.metrics import SelfConsistencyDice

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
        judge: images ``(B, 1, *S)`` -> label maps ``(B, *S)``; with it (and ``0`` among the
            timesteps), :meth:`reconstruction_consistency` is measured too.
    """

    def __init__(self, models: Mapping[str, object], class_names: list[str], subject_names, device,
                 timesteps: Sequence[int] = HEAD_TIMESTEPS, judge: Callable[[Tensor], Tensor] | None = None) -> None:
        self.models = {name: model for name, model in models.items() if model.denoiser.head is not None}
        self.timesteps = tuple(int(t) for t in timesteps)
        self.class_names = list(class_names)
        self.overlap = {(name, t): CaseOverlap(class_names, subject_names, device)
                        for name in self.models for t in self.timesteps}
        self.judge = judge if 0 in self.timesteps else None
        self.consistency = ({name: SelfConsistencyDice(len(class_names)).to(device) for name in self.models}
                            if self.judge is not None else {})

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
                    reconstruction, features = (pipeline.decode_with_features(noisy) if t == 0 and (
                        self.judge is not None or pipeline.denoiser.reads_image_features) else (None, None))
                    reads = t == 0 and pipeline.denoiser.reads_image_features  # as the final sampling call
                    head = pipeline.denoiser(noisy, t_batch, mask_size=truth.shape[1:],
                                             image_features=features if reads else None).anatomy_logits.argmax(1)
                    self.overlap[(name, t)].update(head, truth, subjects)
                    if t == 0 and self.judge is not None:
                        self.consistency[name].update(head, self.judge(reconstruction))
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

    def reconstruction_consistency(self) -> dict[str, dict[str, float]]:
        """``{model: {class: dice, ..., "pooled": dice}}``: head (t = 0) vs judge on the decoded
        latents of the real slices (:class:`~anatldm.metrics.SelfConsistencyDice`: per class over
        the slices where the class is in either mask; ``pooled``: the mean over slices of each
        slice's macro Dice, as the samples' pooled self-consistency); empty without a judge."""
        out = {}
        for name, metric in self.consistency.items():
            per_class = metric.per_class().cpu()
            values = {c: round(float(v), 4) for c, v in zip(self.class_names[1:], per_class, strict=True)}
            values["pooled"] = round(float(metric.compute()), 4)
            out[name] = values
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
