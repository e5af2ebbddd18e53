"""The anatomy head's Dice on real slices by timestep: per subject, batch-independent, exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anatldm.evaluation.head import HeadDice, head_dice_by_timestep, slice_noise
from anatldm.evaluation.protocol import case_dice
from anatldm.evaluation.slices import class_overlap
from anatldm.trainers import AnatomicalLDMTask
from tests.conf import ldm_args


@pytest.fixture
def slices() -> tuple[torch.Tensor, torch.Tensor, list[str], list[int]]:
    torch.manual_seed(1)
    images = torch.rand(6, 1, 32, 32) * 2 - 1
    masks = torch.zeros(6, 32, 32, dtype=torch.long)
    masks[:, 4:14, 4:20] = 1
    masks[3:, 18:28, 10:26] = 4
    return images, masks, ["s0", "s0", "s1", "s1", "s2", "s2"], [3, 4, 3, 4, 3, 4]


def test_head_dice_is_the_per_subject_dice_of_the_heads_masks(tiny_bundle: Path, slices) -> None:
    torch.manual_seed(0)
    pipeline = AnatomicalLDMTask(autoencoder=str(tiny_bundle), **ldm_args()).pipeline.eval()
    images, masks, subjects, positions = slices
    dice = head_dice_by_timestep(pipeline, images, masks, subjects, positions, timesteps=(0, 200), batch_size=4)
    assert set(dice) == {"t=0", "t=200"}
    # the same numbers by hand at t = 0: posterior mean, the slice's own noise, head at the image size
    with torch.no_grad():
        latents = pipeline.autoencoder.encode(images)[0] * pipeline.scale_factor
        noisy = pipeline.train_scheduler.add_noise(latents, slice_noise(subjects, positions, latents.shape[1:]),
                                                   torch.zeros(6, dtype=torch.long))
        predicted = pipeline.denoiser(noisy, torch.zeros(6, dtype=torch.long), mask_size=(32, 32)).anatomy_logits.argmax(1)
    intersection, cardinality = class_overlap(predicted, masks, len(pipeline.class_names))
    expected = case_dice(intersection.numpy(), cardinality.numpy(), np.asarray(subjects), pipeline.class_names)
    for name, value in expected.items():
        assert dice["t=0"][name] == pytest.approx(value, abs=1e-4, nan_ok=True)
    assert dice["t=0"]["mean"] == pytest.approx(np.nanmean(list(expected.values())), abs=1e-4)


def test_head_dice_does_not_depend_on_the_batch(tiny_bundle: Path, slices) -> None:
    torch.manual_seed(0)
    pipeline = AnatomicalLDMTask(autoencoder=str(tiny_bundle), **ldm_args()).pipeline.eval()
    one = head_dice_by_timestep(pipeline, *slices, timesteps=(50,), batch_size=1)
    six = head_dice_by_timestep(pipeline, *slices, timesteps=(50,), batch_size=6)
    assert one == six


def test_models_without_a_head_are_skipped(tiny_bundle: Path, slices) -> None:
    baseline = AnatomicalLDMTask(autoencoder=str(tiny_bundle),
                                 **ldm_args(denoiser__registers__num_registers=0, anatomy_loss__weight=0.0)).pipeline
    diagnostic = HeadDice({"baseline": baseline}, baseline.class_names, ["s0", "s1", "s2"], "cpu")
    diagnostic.update(*slices)
    assert diagnostic.compute() == {}
    with pytest.raises(ValueError, match="no anatomy head"):
        head_dice_by_timestep(baseline, *slices)


def test_reconstruction_consistency_is_head_vs_judge_on_the_decoded_latents(tiny_bundle: Path, slices) -> None:
    """With a judge, the t = 0 head mask is compared with the judge's mask of the reconstruction:
    a judge that returns the head's own mask gives 1, and a judge is called on decoded images."""
    torch.manual_seed(0)
    pipeline = AnatomicalLDMTask(autoencoder=str(tiny_bundle), **ldm_args()).pipeline.eval()
    images, masks, subjects, positions = slices
    with torch.no_grad():  # t = 0 as the diagnostic's: the posterior mean with the slice's own noise at t = 0
        latents = pipeline.autoencoder.encode(images)[0] * pipeline.scale_factor
        latents = pipeline.train_scheduler.add_noise(latents, slice_noise(subjects, positions, latents.shape[1:]),
                                                     torch.zeros(6, dtype=torch.long))
        head = pipeline.denoiser(latents, torch.zeros(6, dtype=torch.long), mask_size=(32, 32)).anatomy_logits.argmax(1)
        reconstructions = pipeline.decode(latents)
    seen = []

    def judge_returning(labels: torch.Tensor):
        def judge(batch: torch.Tensor) -> torch.Tensor:
            seen.append(batch)
            return labels
        return judge

    names = pipeline.class_names
    agreeing = HeadDice({"m": pipeline}, names, ["s0", "s1", "s2"], "cpu", timesteps=(0, 50), judge=judge_returning(head))
    agreeing.update(images, masks, subjects, positions)
    ceiling = agreeing.reconstruction_consistency()["m"]
    assert torch.allclose(seen[0], reconstructions) and len(seen) == 1  # the decoded latents, at t = 0 only
    assert ceiling["pooled"] == pytest.approx(1.0)
    assert all(ceiling[c] == pytest.approx(1.0) for c in names[1:] if (head == names.index(c)).any())
    other = torch.where(head == 1, 0, 1)  # the judge disagrees on class 1 everywhere
    disagreeing = HeadDice({"m": pipeline}, names, ["s0", "s1", "s2"], "cpu", timesteps=(0,), judge=judge_returning(other))
    disagreeing.update(images, masks, subjects, positions)
    assert disagreeing.reconstruction_consistency()["m"][names[1]] == pytest.approx(0.0)
    assert HeadDice({"m": pipeline}, names, ["s0"], "cpu", timesteps=(50,), judge=judge_returning(head)
                    ).reconstruction_consistency() == {}  # no t = 0, no ceiling
