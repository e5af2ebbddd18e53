from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

from anatldm.metrics import (
    InceptionFeatures,
    PooledEncoderFeatures,
    frechet_feature_distance,
    kernel_feature_distance,
    make_fid_kid,
)
from tests.metrics.synthetic import gaussian_blur, random_encoder, synthetic_images, synthetic_masks


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    real = synthetic_images(synthetic_masks(200, seed=0), seed=0)
    other = synthetic_images(synthetic_masks(200, seed=1), seed=1)
    return real, other


def realism(real: torch.Tensor, fake: torch.Tensor) -> tuple[float, float]:
    metrics = make_fid_kid(PooledEncoderFeatures(random_encoder(), 32), kid_subset_size=50, kid_subsets=20)
    for batch in real.split(64):
        metrics.fid.update(batch, real=True)
        metrics.kid.update(batch, real=True)
    for batch in fake.split(64):
        metrics.fid.update(batch, real=False)
        metrics.kid.update(batch, real=False)
    return metrics.fid.compute().item(), metrics.kid.compute()[0].item()


@pytest.mark.parametrize("degrade", ["blur", "noise"])
def test_fid_and_kid_grow_with_degradation(images, degrade: str) -> None:
    real, other = images
    generator = torch.Generator().manual_seed(0)
    if degrade == "blur":
        mild, strong = gaussian_blur(other, 0.7), gaussian_blur(other, 1.5)
    else:
        mild = (other + 0.1 * torch.randn(other.shape, generator=generator)).clamp(-1, 1)
        strong = (other + 0.3 * torch.randn(other.shape, generator=generator)).clamp(-1, 1)
    scores = [realism(real, fake) for fake in (other, mild, strong)]
    fids, kids = zip(*scores, strict=True)
    assert fids[0] < fids[1] < fids[2], fids
    assert kids[0] < kids[1] < kids[2], kids


def test_kid_is_reproducible_and_leaves_the_global_rng_alone(images) -> None:
    real, other = images
    metrics = make_fid_kid(PooledEncoderFeatures(random_encoder(), 32), kid_subset_size=50, kid_subsets=5, seed=7)
    metrics.kid.update(real, real=True)
    metrics.kid.update(other, real=False)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = metrics.kid.compute()
    assert torch.rand(1) == expected_next
    metrics.kid._computed = None  # force a second evaluation
    torch.testing.assert_close(metrics.kid.compute(), first)
    assert metrics.feature_source == "domain_encoder"


def test_feature_statistics_reproduce_fid_and_kid(images) -> None:
    real, other = images
    blurred = gaussian_blur(other, 1.5)
    metrics = make_fid_kid(PooledEncoderFeatures(random_encoder(), 32), kid_subset_size=50, kid_subsets=20)
    for metric in (metrics.fid, metrics.kid):
        metric.update(real, real=True)
        metric.update(blurred, real=False)
    real_features, fake_features = metrics.kid.features()
    assert real_features.shape == (200, 32) and fake_features.shape == (200, 32)
    fid = frechet_feature_distance(real_features, fake_features)
    assert fid.item() == pytest.approx(metrics.fid.compute().item(), rel=1e-3)
    kid_mean, kid_std = metrics.kid.compute()
    kid = kernel_feature_distance(real_features, fake_features, subset_size=50, subsets=20)
    assert abs(kid.item() - kid_mean.item()) < 3 * kid_std.item()
    baseline = kernel_feature_distance(*(f[:100] for f in (real_features, real_features.flip(0))), subset_size=50)
    assert baseline < kid


def test_pooled_features_from_a_hooked_layer() -> None:
    encoder = random_encoder()
    features = PooledEncoderFeatures(encoder, 16, layer=encoder[1])  # after the first ReLU: 16 channels
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    out = features(images)
    assert out.shape == (3, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, encoder[:2](images).mean(dim=(2, 3)))
    features.train()
    assert not features.training and not encoder.training
    assert features(images.bfloat16()).dtype == torch.float32
    assert not any(p.requires_grad for p in encoder.parameters())


def test_feature_errors(tmp_path: Path) -> None:
    encoder = random_encoder()
    with pytest.raises(ValueError, match="gives 32 features, num_features is 8"):
        PooledEncoderFeatures(encoder, 8)(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="submodule"):
        PooledEncoderFeatures(encoder, 32, layer=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="num_features"):
        make_fid_kid(encoder)  # a bare encoder has no num_features
    with pytest.raises(ValueError, match="encoder_features"):
        make_fid_kid()
    with pytest.raises(ValueError, match="is not a file"):
        make_fid_kid(inception_weights=tmp_path / "missing.pth")


@pytest.mark.skipif(_TORCH_FIDELITY_AVAILABLE, reason="torch-fidelity is installed")
def test_inception_weights_need_torch_fidelity(tmp_path: Path) -> None:
    weights = tmp_path / "pt_inception-2015-12-05.pth"
    weights.write_bytes(b"not really weights")
    with pytest.raises(ValueError, match="torch-fidelity"):
        make_fid_kid(inception_weights=weights)


def test_inception_features_feed_uint8_rgb() -> None:
    seen: list[torch.Tensor] = []

    class FakeInception(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x.float().mean(dim=(2, 3)).repeat(1, 4)  # (N, 12)

    features = InceptionFeatures(FakeInception(), num_features=12)
    out = features(torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1).expand(3, 1, 4, 4))
    assert seen[0].dtype == torch.uint8 and seen[0].shape == (3, 3, 4, 4)
    assert seen[0][:, 0, 0, 0].tolist() == [0, 128, 255] and out.shape == (3, 12)
