"""The reverse-diffusion loop: mask-free sampling, the head's mask read from the clean latents."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from anatldm.config import as_config
from anatldm.diffusion.schedulers import SAMPLERS, SamplerName
from anatldm.errors import ConfigError
from anatldm.models.denoiser import AnatomicalDenoiser, DenoiserOutput
from anatldm.models.registers import RegisterEdit

__all__ = ["GuidanceConfig", "SampleOutput", "SamplingConfig", "check_guidance", "guided_prediction", "initial_noise",
           "sample_latents", "step_generators"]

GuidanceKind = Literal["none", "registers", "autoguidance"]


@dataclass
class GuidanceConfig:
    """Guidance of the noise prediction while sampling (YAML ``model.init_args.sampling.guidance``).

    With ``eps`` the model's prediction and ``w`` the weight, every step predicts::

        eps_guided = eps + (w - 1) * (eps - eps_other)      # = eps_other + w * (eps - eps_other)

    written so that ``w = 1`` gives ``eps`` bit for bit. ``"registers"`` (classifier-free
    guidance whose condition is the register memory; train with ``registers.dropout`` > 0):
    ``eps_other`` is the same model without its register path. ``"autoguidance"`` (Karras et
    al. 2024, "Guiding a diffusion model with a bad version of itself"): ``eps_other`` is the
    ``guide``, an early EMA checkpoint of the same run (works for every LDM, the baseline
    included). Either doubles the network evaluations of a step; the head's call at t = 0 uses
    the model alone.

    Args:
        kind: ``"none"`` (off), ``"registers"`` or ``"autoguidance"``.
        weight: the guidance weight ``w`` (>= 0; 1 is the unguided prediction).
        guide: ``"autoguidance"``'s guide: an ``AnatomicalLDMTask`` checkpoint of the same run
            (e.g. ``fraction-0.25.ckpt``) or a pipeline folder, on the model's autoencoder.
    """

    #: where these settings sit in a config: errors name ``<key>.<field>``
    key = "model.sampling.guidance"

    kind: GuidanceKind = "none"
    weight: float = 2.0
    guide: str | None = None

    def __post_init__(self) -> None:
        key = self.key
        if self.kind not in ("none", "registers", "autoguidance"):
            raise ConfigError(f"{key}.kind must be 'none', 'registers' or 'autoguidance', got '{self.kind}'")
        if not self.weight >= 0:
            raise ConfigError(f"{key}.weight must be >= 0, got {self.weight}")
        if self.kind == "autoguidance" and not self.guide:
            raise ConfigError(f"{key}.guide: autoguidance needs a guide checkpoint or pipeline folder")
        if self.kind != "autoguidance" and self.guide:
            raise ConfigError(f"{key}.guide is only read with kind: autoguidance, got kind '{self.kind}'")

    @property
    def enabled(self) -> bool:
        """Whether each step makes a second network evaluation."""
        return self.kind != "none"


@dataclass
class SamplingConfig:
    """How samples are drawn (YAML ``model.init_args.sampling``): inference-only, so a sampling
    config changes them freely while the architecture comes from the checkpoint.

    Args:
        sampler: ``"ddpm"``, ``"ddim"``, ``"dpm_solver++"``, ``"dpm_solver++_sde"`` or ``"unipc"``.
        num_inference_steps: denoiser calls per sample.
        register_edits: edits of the register bank applied when sampling (controllable
            generation), by register index or by class (``classes: [liver]``).
        anatomy_edits: shorthand for edits by anatomy, class name -> factor: the
            ``registers_per_class`` registers most associated with the class are scaled by the
            factor (0 ablates them), e.g. ``{liver: 1.5, kidney: 0}``; applied after ``register_edits``.
        registers_per_class: registers edited per named class (with ``register_supervision:
            attention``, a class's own ``supervised_per_class`` registers instead).
        association: ``association.json`` (written by ``anatldm predict`` with ``SampleWriter``)
            giving the register-class association; ``None`` computes it on first use from
            ``association_samples`` unedited samples (seeds from 1,000,000) and the head's masks.
        association_samples: calibration samples when ``association`` is ``None``.
        record_attention: record the register attention maps while sampling (``SampleWriter``
            then writes attention panels and the register-class association).
        attention_steps: the recorded maps are averaged over this many last sampling steps.
        guidance: register guidance or autoguidance (:class:`GuidanceConfig`); off by default.
    """

    #: where these settings sit in a config: errors name ``<key>.<field>``
    key = "model.sampling"

    sampler: SamplerName = "ddim"
    num_inference_steps: int = 50
    register_edits: list[RegisterEdit] = field(default_factory=list)
    anatomy_edits: dict[str, float] = field(default_factory=dict)
    registers_per_class: int = 2
    association: str | None = None
    association_samples: int = 32
    record_attention: bool = False
    attention_steps: int = 5
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)

    def __post_init__(self) -> None:
        key = self.key
        self.guidance = as_config(GuidanceConfig, self.guidance)
        self.register_edits = [as_register_edit(edit, f"{key}.register_edits") for edit in self.register_edits or []]
        self.anatomy_edits = dict(self.anatomy_edits or {})
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"{key}.sampler must be one of {', '.join(SAMPLERS)}, got '{self.sampler}'")
        for name in ("num_inference_steps", "registers_per_class", "association_samples", "attention_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be at least 1, got {getattr(self, name)}")
        for name, factor in self.anatomy_edits.items():
            if factor < 0:
                raise ConfigError(f"{key}.anatomy_edits.{name}: the factor must be >= 0 (0 ablates), got {factor}")

    @property
    def edits(self) -> list[RegisterEdit]:
        """``register_edits``, then ``anatomy_edits`` as edits by class."""
        return self.register_edits + [RegisterEdit("scale", classes=[name], factor=float(factor))
                                      for name, factor in self.anatomy_edits.items()]


def as_register_edit(edit: RegisterEdit | dict, key: str) -> RegisterEdit:
    """A register edit from a config mapping (``{operation: scale, classes: [liver], factor: 2}``)."""
    if isinstance(edit, RegisterEdit):
        return edit
    try:
        return RegisterEdit(**edit)
    except TypeError as err:
        raise ConfigError(f"{key}: {edit} is not a register edit ({err})") from None

#: mixed with a sample's seed to seed its step noise, a stream distinct from its initial noise (the
#: same seed would repeat the initial noise as the first step's noise; torch's CPU generator reads
#: only the low 32 bits of a seed, so an offset such as 2**40 would not change the stream)
STEP_SEED_KEY = 0x5EED


@dataclass
class SampleOutput:
    """``latents (B, C, *S)`` at t = 0; ``anatomy_logits (B, classes, *mask_size)`` of one extra
    head call on those clean latents at t = 0, or ``None`` for a model without a head; per-level
    register ``attention`` maps averaged over the recorded steps, when asked for; ``nfe``: the
    network evaluations per sample (guidance doubles those of the steps)."""

    latents: torch.Tensor
    anatomy_logits: torch.Tensor | None
    attention: dict[str, torch.Tensor] | None = None
    nfe: int = 0


def guided_prediction(denoiser: AnatomicalDenoiser, model_input: torch.Tensor, timesteps: torch.Tensor,
                      guidance: GuidanceConfig | None = None, guide: AnatomicalDenoiser | None = None,
                      **kwargs) -> DenoiserOutput:
    """The denoiser's output at one step, its ``sample`` guided by ``guidance`` (:class:`GuidanceConfig`):
    ``eps + (w - 1) * (eps - eps_other)``, ``eps_other`` the register-free prediction
    (``"registers"``) or the ``guide``'s (``"autoguidance"``, called on its own bank, unedited,
    with the same ``anatomy`` condition). ``kwargs`` go to the model's call (``mask_size``,
    ``registers``, ``return_attention``, ``anatomy``)."""
    output = denoiser(model_input, timesteps, **kwargs)  # (B, C, *S)
    if guidance is None or not guidance.enabled:
        return output
    if guidance.kind == "registers":
        other = denoiser(model_input, timesteps, registers=kwargs.get("registers"), use_registers=False).sample
    else:
        other = guide(model_input, timesteps, anatomy=kwargs.get("anatomy")).sample  # (B, C, *S)
    return replace(output, sample=output.sample + (guidance.weight - 1) * (output.sample - other.to(output.sample)))


def check_guidance(denoiser: AnatomicalDenoiser, guidance: GuidanceConfig | None,
                   guide: AnatomicalDenoiser | None) -> None:
    """Register guidance needs a register bank, autoguidance a guide network."""
    if guidance is None or not guidance.enabled:
        return
    if guidance.kind == "registers" and denoiser.registers is None:
        raise ConfigError(f"{GuidanceConfig.key}.kind: register guidance needs a register bank, but "
                          "model.denoiser.registers.num_registers is 0")
    if guidance.kind == "autoguidance" and guide is None:
        raise ConfigError(f"{GuidanceConfig.key}.guide: autoguidance needs the guide network")


def initial_noise(seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise ``(B, *shape)`` where sample ``i`` depends only on ``seeds[i]`` (not on the batch)."""
    noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    return torch.stack(noise).to(device)


def step_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample for the step noise of stochastic samplers (DDPM, SDE solvers).

    diffusers draws sample ``i``'s noise from ``generators[i]`` (``randn_tensor`` with a list), so
    a sample does not depend on its batch; seeded from ``(seed, STEP_SEED_KEY)`` by NumPy's ``SeedSequence``, a stream
    distinct from the sample's initial noise. CPU generators give the same numbers on every device.
    """
    states = [np.random.SeedSequence((int(seed), STEP_SEED_KEY)).generate_state(1)[0] for seed in seeds]
    return [torch.Generator().manual_seed(int(state)) for state in states]


@torch.no_grad()
def sample_latents(
    denoiser: AnatomicalDenoiser,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    num_inference_steps: int,
    mask_size: Sequence[int] | None = None,
    registers: torch.Tensor | None = None,
    attention_steps: int = 0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: Callable[[int, int], None] | None = None,
    guidance: GuidanceConfig | None = None,
    guide: AnatomicalDenoiser | None = None,
    image_features: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
) -> SampleOutput:
    """Run the sampler from ``noise`` to clean latents; no mask or condition is needed.

    The head's mask comes from one more denoiser call on the final (clean) latents at t = 0, not
    from the last step's input (still noisy at t = 19 for DDIM-50): the mask describes the
    image that is decoded. The extra call costs one step.

    Args:
        denoiser: the trained denoiser (EMA weights in practice), in eval mode.
        scheduler: a fresh sampler from :func:`~anatldm.diffusion.make_sampler`.
        noise: initial latents ``(B, C, *S)``.
        num_inference_steps: denoiser calls.
        mask_size: spatial size of the head's mask (the image size).
        registers: edited ``(K, D)`` register tokens, or ``None`` for the learned bank.
        attention_steps: record register attention over the last this many steps (0: none).
        generator: randomness of stochastic samplers (DDPM): one generator, or one per sample
            (:func:`step_generators`, batch-independent samples).
        progress: called with ``(step, total)`` after each step.
        guidance: guidance of each step's prediction (:func:`guided_prediction`); ``None``: none.
        guide: the guide network of ``guidance.kind: autoguidance`` (eval mode).
        image_features: for a head that reads them (``HeadConfig.image_features``), the frozen
            autoencoder decoder's activations of the final latents, read by the t = 0 call.
    """
    check_guidance(denoiser, guidance, guide)
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    output = None
    attention: dict[str, torch.Tensor] = {}
    timesteps = scheduler.timesteps
    recorded = min(attention_steps, len(timesteps))  # maps are averaged over the steps recorded
    # deterministic samplers (UniPC) take no generator
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    conditioned = getattr(denoiser, "anatomy_conditioner", None) is not None
    anatomy = None  # anatomy-conditioned registers: the head's previous prediction (zeros at the first step)
    for index, t in enumerate(timesteps):
        record = index >= len(timesteps) - attention_steps
        model_input = scheduler.scale_model_input(latents, t)
        output = guided_prediction(denoiser, model_input, t.expand(latents.shape[0]), guidance, guide,
                                   mask_size=mask_size, registers=registers, return_attention=record, anatomy=anatomy)
        if conditioned:
            anatomy = torch.softmax(output.anatomy_logits.float(), dim=1)  # (B, classes, *mask_size)
        if record:
            for name, maps in output.attention.items():
                attention[name] = attention.get(name, 0) + maps / recorded
        latents = scheduler.step(output.sample, t, latents, **step_kwargs).prev_sample
        if progress is not None:
            progress(index + 1, len(timesteps))
    logits = None
    nfe = len(timesteps) * (2 if guidance is not None and guidance.enabled else 1)
    if output is not None and output.anatomy_logits is not None:
        clean = torch.zeros(latents.shape[0], dtype=torch.long, device=latents.device)  # t = 0
        logits = denoiser(latents, clean, mask_size=mask_size, registers=registers, anatomy=anatomy,
                          image_features=image_features(latents) if image_features is not None else None
                          ).anatomy_logits  # the model alone
        nfe += 1
    return SampleOutput(latents, logits, attention or None, nfe)
