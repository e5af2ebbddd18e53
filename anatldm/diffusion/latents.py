"""Posterior moments of a frozen encoder, cached per training slice."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor

Encoder = Callable[[Tensor], tuple[Tensor, Tensor]]


class PosteriorCache:
    """The autoencoder's posterior ``(mu, sigma)`` of each slice, computed the first time the
    slice is seen and reused after, so that a latent-diffusion run encodes every slice once
    instead of once per epoch.

    A latent is still a fresh posterior sample on every visit, ``z = mu + sigma * eps`` (what
    MONAI's ``AutoencoderKL.encode_stage_2_inputs`` draws), so training sees the same
    distribution as with encoding on every step. Only valid while a slice's image is the same
    on every visit: never with random augmentation.

    >>> cache = PosteriorCache()
    >>> encode = lambda x: (x.mean((1, 2, 3), keepdim=True).expand(-1, 2, 1, 1), torch.ones(len(x), 2, 1, 1))
    >>> mu, sigma = cache.moments(["a", "b"], torch.ones(2, 1, 4, 4), encode)
    >>> mu.shape, len(cache), cache.encoded
    (torch.Size([2, 2, 1, 1]), 2, 2)
    >>> _ = cache.moments(["b", "c"], torch.ones(2, 1, 4, 4), encode); cache.encoded
    3
    """

    def __init__(self) -> None:
        self._moments: dict[Hashable, tuple[Tensor, Tensor]] = {}
        self.encoded = 0  # slices passed through the encoder so far

    def __len__(self) -> int:
        return len(self._moments)

    @torch.no_grad()
    def moments(self, keys: Sequence[Hashable], images: Tensor, encode: Encoder) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)``, each ``(B, C_z, *S/f)``, of ``images`` ``(B, 1, *S)`` whose slices are
        named by ``keys``; only the slices not seen before go through ``encode``."""
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        missing = [i for i, key in enumerate(keys) if key not in self._moments]
        if missing:
            mu, sigma = encode(images[missing])
            for row, i in enumerate(missing):
                self._moments[keys[i]] = (mu[row].detach(), sigma[row].detach())
            self.encoded += len(missing)
        mus, sigmas = zip(*(self._moments[key] for key in keys), strict=True)
        return torch.stack(mus), torch.stack(sigmas)

    def sample(self, keys: Sequence[Hashable], images: Tensor, encode: Encoder,
               generator: torch.Generator | None = None) -> Tensor:
        """One posterior sample ``mu + sigma * eps`` per slice (``eps`` from ``generator`` or the
        global RNG)."""
        mu, sigma = self.moments(keys, images, encode)
        eps = torch.randn(mu.shape, generator=generator, device="cpu" if generator is not None else mu.device)
        return mu + sigma * eps.to(mu)
