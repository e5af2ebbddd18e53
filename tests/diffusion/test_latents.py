"""PosteriorCache: each slice encoded once, a fresh posterior sample on every visit."""

from __future__ import annotations

import pytest
import torch

from anatldm.diffusion.latents import PosteriorCache


class CountingEncoder:
    """A deterministic 'encoder' (mean and std of each image) that counts the images it saw."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen += len(images)
        return images.mean((2, 3), keepdim=True), images.std((2, 3), keepdim=True) + 0.1


def test_each_slice_is_encoded_once_and_moments_match_the_encoder() -> None:
    encoder, cache = CountingEncoder(), PosteriorCache()
    images = torch.randn(4, 1, 8, 8)
    mu, sigma = cache.moments(["a", "b", "c", "d"], images, encoder)
    expected_mu, expected_sigma = encoder(images)
    encoder.seen -= 4
    assert torch.equal(mu, expected_mu) and torch.equal(sigma, expected_sigma)
    # a new batch mixing seen and unseen slices: only the unseen one is encoded, order kept
    batch = torch.stack([images[2], torch.randn(1, 8, 8), images[0]])
    mu2, _ = cache.moments(["c", "e", "a"], batch, encoder)
    assert encoder.seen == 5 and cache.encoded == 5 and len(cache) == 5
    assert torch.equal(mu2[0], mu[2]) and torch.equal(mu2[2], mu[0])


def test_samples_are_fresh_posterior_draws() -> None:
    cache = PosteriorCache()
    images = torch.randn(2, 1, 8, 8)
    encoder = CountingEncoder()
    first = cache.sample(["a", "b"], images, encoder, generator=torch.Generator().manual_seed(0))
    again = cache.sample(["a", "b"], images, encoder, generator=torch.Generator().manual_seed(0))
    other = cache.sample(["a", "b"], images, encoder, generator=torch.Generator().manual_seed(1))
    mu, sigma = encoder(images)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.testing.assert_close(first, mu + sigma * eps)


def test_keys_and_images_must_match() -> None:
    with pytest.raises(ValueError, match="3 keys for 2 images"):
        PosteriorCache().moments(["a", "b", "c"], torch.randn(2, 1, 4, 4), CountingEncoder())
