"""The guide network of autoguidance: an early checkpoint of the same run, on the same autoencoder.

Karras et al. 2024, "Guiding a diffusion model with a bad version of itself": the guide is a
weaker model of the same kind (here an early EMA checkpoint, e.g. ``fraction-0.25.ckpt``), so it
must predict noise in the same latent space: same autoencoder weights, same scale factor, same
latent shape. :func:`load_guide` checks that and fails with one :class:`~anatldm.errors.ConfigError`
naming ``model.sampling.guidance.guide``. No Lightning: a checkpoint is read as a state dict.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from anatldm.errors import ConfigError
from anatldm.models.denoiser import AnatomicalDenoiser

__all__ = ["load_guide"]

logger = logging.getLogger(__name__)

#: the config key every error of this module names
GUIDE_KEY = "model.sampling.guidance.guide"


def _check_same_autoencoder(path: str, autoencoder: dict[str, Tensor], scale_factor: float, pipeline) -> None:
    """The guide's autoencoder weights and scale factor are the pipeline's."""
    if not math.isclose(scale_factor, pipeline.scale_factor, rel_tol=1e-6):
        raise ConfigError(f"{GUIDE_KEY}: {path} has scale_factor {scale_factor:.6g}, the model "
                          f"{pipeline.scale_factor:.6g}: the guide must share the model's autoencoder")
    own = pipeline.autoencoder.state_dict()
    if set(own) != set(autoencoder) or any(
            own[name].shape != value.shape or not torch.equal(own[name].cpu(), value.cpu())
            for name, value in autoencoder.items()):
        raise ConfigError(f"{GUIDE_KEY}: {path} was trained on another autoencoder than the model; "
                          "the guide must be an early checkpoint of the same run")


def _from_checkpoint(path: str, pipeline) -> AnatomicalDenoiser:
    """The denoiser of an ``AnatomicalLDMTask`` checkpoint of the same architecture as the pipeline's."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True).get("state_dict", {})
    except (OSError, RuntimeError) as err:
        raise ConfigError(f"{GUIDE_KEY}: cannot read the checkpoint {path} ({err})") from None
    if "scale_factor" not in state:
        raise ConfigError(f"{GUIDE_KEY}: {path} is not an AnatomicalLDMTask checkpoint (no 'scale_factor')")
    _check_same_autoencoder(path, {k[len("autoencoder."):]: v for k, v in state.items()
                                   if k.startswith("autoencoder.")}, float(state["scale_factor"]), pipeline)
    guide = AnatomicalDenoiser(**pipeline.denoiser_config)
    weights = {k[len("denoiser."):]: v for k, v in state.items() if k.startswith("denoiser.")}
    try:
        guide.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{GUIDE_KEY}: {path} holds another denoiser than the model's ({first}); "
                          "give a pipeline folder to guide with another architecture") from None
    return guide


def _from_pipeline(path: str, pipeline) -> AnatomicalDenoiser:
    """The denoiser of a pipeline folder on the same autoencoder and latent shape."""
    other = type(pipeline).from_pretrained(path)
    if tuple(other.latent_shape) != tuple(pipeline.latent_shape):
        raise ConfigError(f"{GUIDE_KEY}: {path} samples latents {list(other.latent_shape)}, the model "
                          f"{list(pipeline.latent_shape)}")
    _check_same_autoencoder(path, other.autoencoder.state_dict(), other.scale_factor, pipeline)
    return other.denoiser


def load_guide(path: str, pipeline) -> nn.Module:
    """The guide denoiser at ``path`` (a checkpoint or a pipeline folder) for ``pipeline`` (an
    :class:`~anatldm.pipelines.AnatomicalLDMPipeline`), in eval mode on its device, frozen."""
    source = Path(path)
    if not source.exists():
        raise ConfigError(f"{GUIDE_KEY}: {path} does not exist")
    is_pipeline = source.is_dir() or source.suffix == ".json"
    guide = _from_pipeline(path, pipeline) if is_pipeline else _from_checkpoint(path, pipeline)
    logger.info("autoguidance: guide %s loaded", path)
    return guide.to(pipeline.device).eval().requires_grad_(False)
