from __future__ import annotations

import pytest
import torch

from anatldm.metrics import Memorisation, PairwiseMSSSIM, msssim_settings, nearest_rmse
from tests.metrics.synthetic import synthetic_images, synthetic_masks


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic_images(synthetic_masks(24, seed=0), seed=0)  # (24, 1, 32, 32)


@pytest.mark.parametrize("size, scales, kernel", [(256, 5, 11), (64, 4, 7), (32, 3, 7), (16, 2, 11), (4, 1, 3)])
def test_msssim_settings_follow_the_image_size(size: int, scales: int, kernel: int) -> None:
    settings = msssim_settings(size, size)
    assert len(settings.betas) == scales and settings.kernel_size == kernel
    assert sum(settings.betas) == pytest.approx(1.0, abs=1e-3)


def test_msssim_settings_reject_tiny_images() -> None:
    with pytest.raises(ValueError, match="at least 3x3"):
        msssim_settings(2, 64)


@pytest.mark.parametrize("size", [32, 64])
def test_identical_images_score_one_different_ones_lower(size: int) -> None:
    masks = synthetic_masks(12, seed=1, size=size)
    diverse = synthetic_images(masks, seed=1)
    metric = PairwiseMSSSIM()
    metric.update(diverse[:1].expand(12, -1, -1, -1).clone())
    assert metric.compute().item() == pytest.approx(1.0, abs=1e-4)
    metric.reset()
    metric.update(diverse[:6])
    metric.update(diverse[6:])
    different = metric.compute().item()
    assert different < 0.95
    assert metric.pair_values().shape == (66,)  # all 12 * 11 / 2 pairs


def test_pairs_are_capped_and_seeded(images: torch.Tensor) -> None:
    first, second = PairwiseMSSSIM(max_pairs=10, seed=3), PairwiseMSSSIM(max_pairs=10, seed=3)
    first.update(images)
    second.update(images)
    values = first.pair_values()
    assert values.shape == (10,)
    torch.testing.assert_close(values, second.pair_values())
    noisier = PairwiseMSSSIM(max_pairs=10, seed=3)
    noisier.update((images + 0.3 * torch.randn_like(images)).clamp(-1, 1))
    assert noisier.compute() < first.compute()


def test_memorisation(images: torch.Tensor) -> None:
    metric = Memorisation(chunk_size=5)
    metric.update(images[:12], real=True)
    metric.update(images[12:], real=True)
    metric.update(images[[3, 17, 8]], real=False)  # copies of training slices
    assert metric.compute().item() == 0.0
    _, index = metric.nearest()
    assert index.tolist() == [3, 17, 8]
    metric.reset()
    metric.update(images, real=True)
    noisy = images[:6] + 0.1 * torch.randn_like(images[:6])
    metric.update(noisy, real=False)
    distances = metric.per_sample()
    assert distances.shape == (6,) and (distances > 0).all()
    assert metric.compute().item() == pytest.approx(0.1, rel=0.1)


def test_nearest_rmse_matches_brute_force() -> None:
    generator = torch.Generator().manual_seed(0)
    queries, references = torch.randn(7, 20, generator=generator), torch.randn(11, 20, generator=generator)
    distance, index = nearest_rmse(queries, references, chunk_size=3)
    brute = ((queries[:, None] - references[None]) ** 2).mean(-1).sqrt()  # (7, 11)
    torch.testing.assert_close(distance, brute.min(1).values)
    assert index.tolist() == brute.argmin(1).tolist()


def test_image_metric_errors(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="max_pairs"):
        PairwiseMSSSIM(max_pairs=0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        PairwiseMSSSIM().update(images[:, 0])
    with pytest.raises(ValueError, match="floating point"):
        Memorisation().update(images.long(), real=True)
    with pytest.raises(RuntimeError, match="at least 2 images"):
        metric = PairwiseMSSSIM()
        metric.update(images[:1])
        metric.compute()
    with pytest.raises(RuntimeError, match="training images"):
        metric = Memorisation()
        metric.update(images, real=False)
        metric.compute()
