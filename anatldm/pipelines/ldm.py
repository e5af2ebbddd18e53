"""``AnatomicalLDMPipeline``: a trained anatomical LDM as a plain ``nn.Module``, no Lightning.

It holds components and configs only: the frozen autoencoder, the denoiser (register bank +
anatomy head), the latent scale factor, the class names, the intensity normalisation, the image
size, the noise-schedule config and the default :class:`~anatldm.diffusion.sampling.SamplingConfig`.
``generate`` returns one :class:`AnatomicalLDMPipelineOutput` (images, masks, attention, applied
edits, seeds), which travels unchanged to the writers and the evaluation; :meth:`save_pretrained`
/ :meth:`from_pretrained` write and read a self-contained folder (:mod:`anatldm.pipelines.pretrained`).

``AnatomicalLDMTask`` trains the same networks and samples through its pipeline (``task.pipeline``
shares the task's modules), so samples of a task and of its exported pipeline are the same for
the same seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anatldm.diffusion.sampling import (
    SamplingConfig,
    as_register_edit,
    initial_noise,
    sample_latents,
    step_generators,
)
from anatldm.diffusion.schedulers import make_sampler, make_train_scheduler
from anatldm.errors import ConfigError
from anatldm.interpret.edits import (
    EditedRegisters,
    NoRegisterForClassError,
    class_registers,
    edit_registers,
    load_association,
    load_register_bank,
)
from anatldm.models.autoencoder_bundle import downsampling_factor
from anatldm.models.decoder_features import decoder_activations
from anatldm.models.denoiser import AnatomicalDenoiser
from anatldm.models.registers import RegisterEdit

__all__ = ["AnatomicalLDMPipeline", "AnatomicalLDMPipelineOutput", "as_register_edit"]

logger = logging.getLogger(__name__)


@dataclass
class AnatomicalLDMPipelineOutput:
    """What :meth:`AnatomicalLDMPipeline.generate` returns (and ``AnatomicalLDMTask.predict_step``,
    unchanged, to ``SampleWriter`` and ``DatasetWriter``).

    Attributes:
        images: ``(B, 1, *S)`` in [-1, 1] (the normalised training scale).
        masks: ``(B, *S)`` int64 class indices from the anatomy head, ``None`` without a head.
        attention: level -> register attention maps ``(B, K, *S_level)`` averaged over the last
            ``attention_steps`` steps, when asked for.
        applied_edits: the registers each edit by class touched (``[{"classes", "registers"}]``).
        seeds: the seed of each sample.
        sampling: the settings the samples were drawn with (edits and guidance included).
        nfe: network evaluations per sample (steps, doubled by guidance, plus the head's call).
    """

    images: Tensor
    masks: Tensor | None
    attention: dict[str, Tensor] | None = None
    applied_edits: list[dict] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    sampling: SamplingConfig | None = None
    nfe: int = 0


class AnatomicalLDMPipeline(nn.Module):
    """Sample (image, mask) pairs from a trained anatomical LDM; no mask or condition is needed.

    Example::

        pipeline = AnatomicalLDMPipeline.from_pretrained("runs/ldm/pipeline")
        out = pipeline.generate(num_samples=16)  # out.images (16, 1, H, W), out.masks (16, H, W)
        out = pipeline.generate(range(4), sampler="ddpm", num_inference_steps=100)  # per-call settings

    Args:
        autoencoder: the frozen ``AutoencoderKL``.
        denoiser: the trained :class:`~anatldm.models.denoiser.AnatomicalDenoiser` (EMA weights).
        scale_factor: latents are ``z * scale_factor`` (``1 / std(z)`` of training latents).
        class_names: label names, background first.
        image_size: spatial size of the images.
        normalization: how raw intensities map to [-1, 1] (the autoencoder bundle's).
        scheduler_config: arguments of :func:`~anatldm.diffusion.make_train_scheduler`.
        autoencoder_config: the ``AutoencoderKL`` constructor arguments (saved with the weights).
        denoiser_config: the ``AnatomicalDenoiser`` constructor arguments.
        register_groups: registers bound to each foreground class in training
            (``register_supervision: attention``); edits by class then use them.
        sampling: default settings of :meth:`generate` (sampler, steps, edits, association).
        association: the ``(K, C)`` register-class table of edits by class; ``None``: read from
            ``sampling.association`` or computed on first use from ``sampling.association_samples`` samples.
    """

    #: first seed of the calibration samples of the register-class association
    association_seed = 1_000_000

    def __init__(
        self,
        autoencoder: nn.Module,
        denoiser: AnatomicalDenoiser,
        scale_factor: float,
        class_names: Sequence[str],
        image_size: Sequence[int],
        normalization: dict[str, Any],
        scheduler_config: dict[str, Any],
        autoencoder_config: dict[str, Any],
        denoiser_config: dict[str, Any],
        register_groups: list[list[int]] | None = None,
        sampling: SamplingConfig | None = None,
        association: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.denoiser = denoiser
        self.scale_factor = float(scale_factor)
        self.class_names = list(class_names)
        self.image_size = tuple(int(s) for s in image_size)
        self.normalization = dict(normalization)
        self.scheduler_config = dict(scheduler_config)
        self.autoencoder_config = dict(autoencoder_config)
        self.denoiser_config = dict(denoiser_config)
        self.register_groups = register_groups
        self.sampling = sampling if sampling is not None else SamplingConfig()
        self.association = association
        self._edited: tuple[tuple, EditedRegisters] | None = None  # the last edited bank, keyed by edits and weights
        self._guide: tuple[str, nn.Module] | None = None  # autoguidance's guide, loaded once per path
        self.train_scheduler = make_train_scheduler(**self.scheduler_config)
        downsampling = downsampling_factor(self.autoencoder_config)
        self.latent_shape = (int(self.autoencoder_config["latent_channels"]),
                             *(s // downsampling for s in self.image_size))

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def train(self, mode: bool = True) -> AnatomicalLDMPipeline:
        super().train(mode)
        self.autoencoder.eval()  # frozen, always
        return self

    # -- latents ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Scaled latents ``(B, C_z, *S/f)`` of images ``(B, 1, *S)`` in [-1, 1] (posterior sample)."""
        return self.autoencoder.encode_stage_2_inputs(images) * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images ``(B, 1, *S)`` in [-1, 1] from scaled latents."""
        return self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor).clamp(-1, 1)

    @torch.no_grad()
    def decode_with_features(self, latents: Tensor) -> tuple[Tensor, list[Tensor]]:
        """One decoder pass: :meth:`decode`'s images and the decoder's activations that the head's
        upsampling stages read (``HeadConfig.image_features``), coarsest first."""
        image, features = decoder_activations(self.autoencoder, latents / self.scale_factor)
        return image.clamp(-1, 1), features[: len(self.denoiser.head.image_projections)]

    def head_image_features(self, latents: Tensor) -> list[Tensor]:
        """The decoder's activations of scaled ``latents`` that the head reads at t = 0."""
        return self.decode_with_features(latents)[1]

    @property
    def image_feature_reader(self) -> Callable[[Tensor], list[Tensor]] | None:
        """:meth:`head_image_features` for a head that reads them, else ``None``."""
        return self.head_image_features if self.denoiser.reads_image_features else None

    # -- register control ---------------------------------------------------------------------
    def check_edits(self, edits: Sequence[RegisterEdit] | None = None,
                    key: str = "model.sampling.register_edits") -> None:
        """Class names, indices and sources of ``edits`` (default: those of :attr:`sampling`),
        checked before any sampling; errors are one-line :class:`~anatldm.errors.ConfigError` naming ``key``."""
        edits = [as_register_edit(edit, key) for edit in (self.sampling.edits if edits is None else edits)]
        if edits and self.denoiser.registers is None:
            raise ConfigError(f"{key} needs a register bank, but model.denoiser.registers.num_registers is 0")
        for edit in edits:
            for name in edit.classes or []:
                if name not in self.class_names:
                    raise ConfigError(f"{key}: unknown class '{name}'; known classes: {', '.join(self.class_names)}")
        if self.denoiser.head is None and any(e.classes for e in edits) and not self.sampling.association \
                and self.association is None:
            raise ConfigError(f"{key}: edits by class need the anatomy head's masks or an association file "
                              "(model.sampling.association); this model has no head")
        if edits:
            try:
                edit_registers(self.denoiser.registers.tokens, [e for e in edits if not e.classes])
            except ValueError as err:
                raise ConfigError(f"{key}: {err}") from None

    def edit_registers(self, edits: Sequence[RegisterEdit | dict], key: str = "model.sampling.register_edits",
                       load_bank: Callable[[str], Tensor] = load_register_bank) -> EditedRegisters:
        """The bank after ``edits`` and the registers each edit by class touched (pure: the
        model is not changed). Edits by class take the bound registers or those of
        :meth:`register_association`."""
        if self.denoiser.registers is None:
            raise ConfigError(f"{key} needs a register bank, but model.denoiser.registers.num_registers is 0")
        edits = [as_register_edit(e, key) for e in edits]
        tokens = self.denoiser.registers.tokens
        cache_key = (repr(edits), tokens.data_ptr(), tokens._version, load_bank)
        if self._edited is not None and self._edited[0] == cache_key:
            return self._edited[1]  # a source bank is a checkpoint read: once per run, not per batch
        try:
            edited = edit_registers(tokens, edits, lambda names: self._class_registers(names), load_bank)
        except NoRegisterForClassError:
            raise
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None
        self._edited = (cache_key, edited)
        return edited

    def _class_registers(self, names: Sequence[str]) -> list[int]:
        return class_registers(names, class_names=self.class_names, register_groups=self.register_groups,
                               association=self.register_association, per_class=self.sampling.registers_per_class)

    def register_association(self) -> Tensor:
        """The ``(K, C)`` register-class correlation table of edits by class (cached): given,
        read from ``sampling.association``, or computed from ``sampling.association_samples``
        unedited samples and the head's masks (:meth:`compute_association`)."""
        if self.association is None:
            if self.sampling.association:
                self.association = load_association(self.sampling.association, self.class_names,
                                                    self.denoiser.registers.num_registers)
            else:
                seeds = range(self.association_seed, self.association_seed + self.sampling.association_samples)
                self.association = self.compute_association(seeds)
        return self.association

    @torch.no_grad()
    def compute_association(self, seeds: Sequence[int], batch_size: int = 16,
                            masks_from: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Correlation ``(K, C)`` of each register's attention map (mean over levels) with each
        class of the samples' masks: the head's, or ``masks_from(images)`` (e.g. a segmenter)."""
        # torchmetrics (and so lightning_utilities) only when calibrating
        from anatldm.interpret.association import RegisterAssociation
        from anatldm.interpret.attention import attention_at_image_size

        if self.denoiser.registers is None:
            raise ConfigError("this model has no register bank (num_registers is 0)")
        if masks_from is None and self.denoiser.head is None:
            raise ConfigError("the register-class association needs the anatomy head's masks or a segmenter; "
                              "this model has no head")
        association = RegisterAssociation(self.denoiser.registers.num_registers, len(self.class_names))
        unedited = replace(self.sampling, register_edits=[], anatomy_edits={})
        for out in self.generate_batches(seeds, batch_size, unedited, return_attention=True):
            masks = out.masks if masks_from is None else masks_from(out.images)
            maps = attention_at_image_size(out.attention, self.image_size)["mean"]  # (B, K, H, W)
            association.update(maps.cpu(), masks.cpu())
        return association.compute()

    # -- guidance -----------------------------------------------------------------------------
    def guide_network(self, sampling: SamplingConfig | None = None) -> nn.Module | None:
        """The guide denoiser of ``sampling.guidance`` (default :attr:`sampling`) with ``kind:
        autoguidance``, loaded once (:func:`~anatldm.pipelines.guide.load_guide`); else ``None``."""
        from anatldm.pipelines.guide import load_guide

        guidance = (self.sampling if sampling is None else sampling).guidance
        if guidance.kind != "autoguidance":
            return None
        if self._guide is None or self._guide[0] != guidance.guide:
            self._guide = (guidance.guide, load_guide(guidance.guide, self))
        return self._guide[1]

    # -- sampling -----------------------------------------------------------------------------
    def settings(self, sampling: SamplingConfig | None = None, **overrides: Any) -> SamplingConfig:
        """``sampling`` (default :attr:`sampling`) with ``overrides`` of its fields, checked once."""
        sampling = self.sampling if sampling is None else sampling
        if not overrides:
            return sampling
        unknown = sorted(set(overrides) - set(SamplingConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown sampling settings {unknown}; SamplingConfig has "
                            f"{', '.join(SamplingConfig.__dataclass_fields__)}")
        return replace(sampling, **overrides)

    def generate_batches(self, seeds: Sequence[int], batch_size: int, sampling: SamplingConfig | None = None,
                         **kwargs: Any):
        """:meth:`generate` over ``seeds`` in batches of ``batch_size`` (the one seed-batching
        loop); yields one output per batch. A sample depends only on its seed, not on its batch."""
        seeds = [int(s) for s in seeds]
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for start in range(0, len(seeds), batch_size):
            yield self.generate(seeds[start:start + batch_size], sampling, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        seeds: Sequence[int] | None = None,
        sampling: SamplingConfig | None = None,
        *,
        num_samples: int | None = None,
        return_attention: bool | None = None,
        registers: Tensor | None = None,
        **overrides: Any,
    ) -> AnatomicalLDMPipelineOutput:
        """Sample one (image, mask) pair per seed; sample ``i`` depends only on ``seeds[i]``.

        Args:
            seeds: one per sample; ``None``: ``0 .. num_samples - 1``.
            sampling: the settings (sampler, steps, edits); default :attr:`sampling`.
            num_samples: samples when ``seeds`` is not given (default 1).
            return_attention: also return the register attention maps (over the last
                ``sampling.attention_steps`` steps); default ``sampling.record_attention``.
            registers: an already edited ``(K, D)`` bank instead of the edits of ``sampling``.
            **overrides: fields of :class:`~anatldm.diffusion.sampling.SamplingConfig` for this
                call (``sampler="ddpm"``, ``num_inference_steps=20``, ``register_edits=[...]``).
        """
        if seeds is None:
            seeds = range(1 if num_samples is None else num_samples)
        elif num_samples is not None and num_samples != len(seeds):
            raise ValueError(f"num_samples {num_samples} differs from the {len(seeds)} seeds given")
        seeds = [int(s) for s in seeds]
        sampling = self.settings(sampling, **overrides)
        applied: list[dict] = []
        if registers is None and sampling.edits:
            edited = self.edit_registers(sampling.edits)
            registers, applied = edited.tokens, edited.applied
        if return_attention is None:
            return_attention = sampling.record_attention
        noise = initial_noise(seeds, self.latent_shape, self.device)
        scheduler = make_sampler(sampling.sampler, self.train_scheduler)
        generator = step_generators(seeds)  # per sample: a sample does not depend on its batch
        guide = self.guide_network(sampling)
        decoded: list[Tensor] = []  # the final call's decoder pass also gives the images

        def read_features(latents: Tensor) -> list[Tensor]:
            images, features = self.decode_with_features(latents)
            decoded.append(images)
            return features

        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            output = sample_latents(self.denoiser, scheduler, noise, sampling.num_inference_steps,
                                    mask_size=self.image_size, registers=registers,
                                    attention_steps=sampling.attention_steps if return_attention else 0,
                                    generator=generator, guidance=sampling.guidance, guide=guide,
                                    image_features=read_features if self.denoiser.reads_image_features else None)
        finally:
            self.denoiser.train(was_training)
        masks = output.anatomy_logits.argmax(1) if output.anatomy_logits is not None else None
        images = decoded[0] if decoded else self.decode(output.latents)
        return AnatomicalLDMPipelineOutput(images, masks, output.attention, applied, seeds, sampling, output.nfe)

    def forward(self, *args: Any, **kwargs: Any) -> AnatomicalLDMPipelineOutput:
        """``pipeline(num_samples=16)`` is :meth:`generate`."""
        return self.generate(*args, **kwargs)

    # -- files ----------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``folder``: ``pipeline.json`` and a subfolder per component (``autoencoder/``,
        ``denoiser/``, ``scheduler/``; self-contained: the autoencoder is included); return the
        JSON path (:mod:`anatldm.pipelines.pretrained`)."""
        from anatldm.pipelines.pretrained import save_pipeline

        return save_pipeline(self, folder, extra)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> AnatomicalLDMPipeline:
        """Load a folder written by :meth:`save_pretrained` (or its ``pipeline.json``; a folder of the
        previous layout too), in eval mode; a broken folder is one :class:`~anatldm.errors.ConfigError` naming the file and key."""
        from anatldm.pipelines.pretrained import load_pipeline

        return load_pipeline(path, device, cls)

