from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from anatldm.metrics import (
    AreaWasserstein,
    FrechetSegmentationDistance,
    SelfConsistencyDice,
    area_fractions,
    frechet_distance,
    gaussian_statistics,
    per_class_dice,
    wasserstein_1d,
)
from tests.metrics.synthetic import CLASS_NAMES, SPLEEN, synthetic_masks

NUM_CLASSES = len(CLASS_NAMES)


def swollen_spleens(masks: np.ndarray) -> np.ndarray:
    masks = masks.copy()
    grown = ndimage.binary_dilation(masks == SPLEEN, structure=np.ones((1, 3, 3)), iterations=2)
    masks[grown & (masks == 0)] = SPLEEN
    return masks


@pytest.fixture(scope="module")
def draws() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    real = synthetic_masks(300, seed=0)
    other = synthetic_masks(300, seed=1)
    return torch.from_numpy(real), torch.from_numpy(other), torch.from_numpy(swollen_spleens(other))


def test_area_fractions() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, :2] = 1
    masks[1, 0, 0] = 2
    expected = torch.tensor([[0.5, 0.0], [0.0, 1 / 16]])
    torch.testing.assert_close(area_fractions(masks, 3), expected)


def test_frechet_distance_matches_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    cov1, cov2 = a @ a.T + np.eye(3), b @ b.T + np.eye(3)
    mean1, mean2 = rng.normal(size=3), rng.normal(size=3)
    from scipy.linalg import sqrtm
    expected = np.sum((mean1 - mean2) ** 2) + np.trace(cov1 + cov2 - 2 * sqrtm(cov1 @ cov2).real)
    value = frechet_distance(*(torch.from_numpy(x) for x in (mean1, cov1, mean2, cov2)))
    assert value.item() == pytest.approx(expected, rel=1e-8)
    same = frechet_distance(torch.from_numpy(mean1), torch.from_numpy(cov1), torch.from_numpy(mean1),
                            torch.from_numpy(cov1))
    assert same.item() == pytest.approx(0.0, abs=1e-8)


def test_fsd_is_small_for_real_vs_real_and_large_for_corrupted(draws) -> None:
    real, other, corrupted = draws
    values = []
    for fake in (other, corrupted):
        metric = FrechetSegmentationDistance(NUM_CLASSES)
        for batch in real.split(100):
            metric.update(batch, real=True)
        metric.update(fake, real=False)
        values.append(metric.compute().item())
    assert values[0] < 0.1 * values[1]
    real_areas, fake_areas = metric.areas()
    assert real_areas.shape == (300, NUM_CLASSES - 1) and fake_areas.shape == (300, NUM_CLASSES - 1)
    assert FrechetSegmentationDistance.statistic(real_areas, fake_areas).item() == pytest.approx(values[1])


def test_fsd_survives_a_class_of_constant_area() -> None:
    masks = torch.zeros(10, 8, 8, dtype=torch.long)
    masks[:, :2, :2] = 1  # class 1 always 4 pixels: zero variance
    masks[torch.arange(10), 5, torch.arange(10) % 8] = 2
    metric = FrechetSegmentationDistance(3)
    metric.update(masks, real=True)
    metric.update(masks.flip(0), real=False)
    assert torch.isfinite(metric.compute()) and metric.compute().item() == pytest.approx(0.0, abs=1e-4)


def test_wasserstein_matches_scipy_and_detects_corruption(draws) -> None:
    real, other, corrupted = draws
    real_areas = area_fractions(real, NUM_CLASSES)
    fake_areas = area_fractions(corrupted[:170], NUM_CLASSES)  # unequal sizes
    ours = wasserstein_1d(real_areas, fake_areas)
    expected = [stats.wasserstein_distance(real_areas[:, k].numpy(), fake_areas[:, k].numpy())
                for k in range(NUM_CLASSES - 1)]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6, atol=1e-12)

    means = []
    for fake in (other, corrupted):
        metric = AreaWasserstein(NUM_CLASSES)
        metric.update(real, real=True)
        metric.update(fake, real=False)
        mean, per_class = metric.compute()
        assert per_class.shape == (NUM_CLASSES - 1,) and mean.item() == pytest.approx(per_class.mean().item())
        means.append(per_class)
    spleen = SPLEEN - 1
    assert means[0].max() < 0.005  # real vs real: small for every class
    assert means[1][spleen] > 3 * means[0].max()


def test_self_consistency_dice() -> None:
    masks = torch.from_numpy(synthetic_masks(20, seed=3))
    metric = SelfConsistencyDice(NUM_CLASSES)
    metric.update(masks, masks.clone())
    assert metric.compute().item() == pytest.approx(1.0)
    metric.reset()
    metric.update(masks, masks.roll(2, dims=2))
    shifted = metric.compute().item()
    assert 0.2 < shifted < 0.9
    assert metric.per_sample().shape == (20,) and metric.per_class().shape == (NUM_CLASSES - 1,)


def test_dice_excludes_classes_and_samples_absent_from_both() -> None:
    head = torch.zeros(3, 4, 4, dtype=torch.long)
    segmenter = torch.zeros(3, 4, 4, dtype=torch.long)
    head[0, :2, :2] = 1  # 4 pixels
    segmenter[0, :2, :1] = 1  # 2 pixels inside: Dice 2 * 2 / 6
    segmenter[1, 0, 0] = 2  # class 2 only in the segmenter: Dice 0
    # sample 2: both all background -> no value
    dice = per_class_dice(head, segmenter, 3)
    assert dice[0, 0].item() == pytest.approx(2 / 3) and dice[0, 1].isnan()
    assert dice[1, 0].isnan() and dice[1, 1].item() == 0.0 and dice[2].isnan().all()
    metric = SelfConsistencyDice(3)
    metric.update(head, segmenter)
    assert metric.per_sample().tolist() == pytest.approx([2 / 3, 0.0])
    assert metric.compute().item() == pytest.approx(1 / 3)


def test_gaussian_statistics_and_errors() -> None:
    mean, cov = gaussian_statistics(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), ridge=0.5)
    torch.testing.assert_close(mean, torch.tensor([1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(cov, torch.tensor([[2.5, 2.0], [2.0, 2.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2 samples"):
        gaussian_statistics(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="num_classes"):
        FrechetSegmentationDistance(1)
    with pytest.raises(ValueError, match="ridge"):
        FrechetSegmentationDistance(3, ridge=-1.0)
    with pytest.raises(ValueError, match="same shape"):
        SelfConsistencyDice(3).update(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(RuntimeError, match="at least 2"):
        metric = FrechetSegmentationDistance(3)
        metric.update(torch.zeros(1, 4, 4, dtype=torch.long), real=True)
        metric.compute()
