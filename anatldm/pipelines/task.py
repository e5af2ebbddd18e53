"""The sampling API of a training task whose networks form an :class:`AnatomicalLDMPipeline`
(no Lightning): the task keeps its inference-only settings and encodes, samples, edits and computes
register associations through the pipeline, which shares the task's modules.

:class:`~anatldm.trainers.ldm.AnatomicalLDMTask` mixes it in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from anatldm.diffusion.schedulers import SamplerName
from anatldm.interpret.edits import load_register_bank
from anatldm.models.registers import RegisterEdit
from anatldm.pipelines.ldm import AnatomicalLDMPipeline

__all__ = ["PipelineSampling"]


class PipelineSampling:
    """Sampling through ``self._pipeline`` with the settings of :meth:`set_sampling`.

    The host (an ``nn.Module``) builds ``self._pipeline`` from its networks and has a
    ``scale_factor`` buffer.
    """

    #: first seed of the calibration samples of the register-class association
    association_seed = AnatomicalLDMPipeline.association_seed

    def set_sampling(self, sampler: SamplerName, num_inference_steps: int, register_edits: list[RegisterEdit] | None,
                     anatomy_edits: dict[str, float] | None, registers_per_class: int, association: str | None,
                     association_samples: int, attention_steps: int) -> None:
        """The inference-only settings (``anatomy_edits`` become edits by class after ``register_edits``)."""
        self.sampler_name, self.num_inference_steps = sampler, num_inference_steps
        self.register_edits = list(register_edits or []) + [
            RegisterEdit("scale", classes=[name], factor=float(factor)) for name, factor in (anatomy_edits or {}).items()]
        self.registers_per_class, self.association_path = registers_per_class, association
        self.association_samples, self.attention_steps = association_samples, attention_steps
        self.applied_edits: list[dict] = []

    @property
    def pipeline(self) -> AnatomicalLDMPipeline:
        """The networks as an :class:`~anatldm.pipelines.AnatomicalLDMPipeline`, with this task's
        sampling settings (it shares the task's modules: no weight is copied)."""
        pipeline = self._pipeline
        pipeline.scale_factor = float(self.scale_factor)
        pipeline.sampler, pipeline.num_inference_steps = self.sampler_name, self.num_inference_steps
        pipeline.registers_per_class, pipeline.association_path = self.registers_per_class, self.association_path
        pipeline.association_samples, pipeline.attention_steps = self.association_samples, self.attention_steps
        return pipeline

    def encode(self, images: Tensor) -> Tensor:
        """Scaled latents ``(B, C_z, *S/f)`` of images ``(B, 1, *S)`` in [-1, 1]."""
        return self.pipeline.encode(images)

    def decode(self, latents: Tensor) -> Tensor:
        """Images ``(B, 1, *S)`` in [-1, 1] from scaled latents."""
        return self.pipeline.decode(latents)

    @property
    def _association(self) -> Tensor | None:
        """The cached register-class table (the pipeline's)."""
        return self._pipeline.association

    def check_edits(self, edits: Sequence[RegisterEdit] | None = None, key: str = "model.register_edits") -> None:
        """Class names, indices and sources of ``edits`` (default ``register_edits``), checked
        before any sampling; errors name the config ``key``."""
        self.pipeline.check_edits(self.register_edits if edits is None else list(edits), key)

    def edited_registers(self, edits: Sequence[RegisterEdit] | None = None) -> Tensor | None:
        """The register tokens after ``edits`` (default ``register_edits``; ``None``: the bank
        unchanged); :attr:`applied_edits` records the registers each edit by class touched."""
        edits = self.register_edits if edits is None else list(edits)
        if not edits:
            return None
        self.applied_edits = []
        edited = self.pipeline.edit_registers(edits, "model.register_edits", load_register_bank)
        self.applied_edits = edited.applied
        return edited.tokens

    def register_association(self) -> Tensor:
        """The ``(K, C)`` register-class correlation table used by edits by class (cached; see
        :meth:`AnatomicalLDMPipeline.register_association`)."""
        return self.pipeline.register_association()

    def compute_association(self, seeds: Sequence[int], batch_size: int = 16,
                            masks_from: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Correlation ``(K, C)`` of each register's attention map with each class of the samples' masks."""
        return self.pipeline.compute_association(seeds, batch_size, masks_from)

    def generate(self, seeds: Sequence[int], sampler: SamplerName | None = None,
                 num_inference_steps: int | None = None, registers: Tensor | None = None,
                 attention_steps: int = 0) -> dict[str, Any]:
        """Sample one (image, mask) pair per seed with :attr:`pipeline` (``register_edits`` applied
        unless ``registers`` is given).

        Returns ``{"image": (B, 1, H, W) in [-1, 1], "mask": (B, H, W) int64 or None,
        "attention": per-level maps or None}``; sample ``i`` depends only on ``seeds[i]``.
        """
        registers = registers if registers is not None else self.edited_registers()
        out = self.pipeline.generate(seeds, sampler=sampler, num_inference_steps=num_inference_steps,
                                     registers=registers, attention_steps=attention_steps)
        return {"image": out.images, "mask": out.masks, "attention": out.attention}
