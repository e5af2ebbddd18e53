"""Register-conditioned denoiser: MONAI ``DiffusionModelUNet`` + register bank + anatomy head.

The UNet itself is MONAI's, unchanged. Forward hooks on the last residual block of chosen
resolution levels add a slim cross-attention to the register bank (encoder and decoder side),
and hooks on the decoder collect the feature maps the anatomy head reads. With
``num_registers=0`` and ``num_classes=0`` nothing is hooked and the network is exactly the
standard LDM denoiser, which makes the baseline comparison exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from anatldm.config import as_config
from anatldm.errors import ConfigError
from anatldm.models.anatomy_conditioning import AnatomyTokenConditioner
from anatldm.models.anatomy_head import (
    DEFAULT_HEAD_CHANNELS,
    AnatomicalSegmentationHead,
    HeadConfig,
)
from anatldm.models.registers import (
    DEFAULT_REGISTER_DIM,
    DEFAULT_REGISTER_INIT_STD,
    AnatomicalRegisterBank,
    RegisterConfig,
    RegisterMode,
)

__all__ = ["DEFAULT_ATTENTION_LEVELS", "DEFAULT_CHANNELS", "DEFAULT_HEAD_CHANNELS", "DEFAULT_REGISTER_DIM",
           "DEFAULT_REGISTER_INIT_STD", "AnatomicalDenoiser", "DenoiserConfig", "DenoiserOutput",
           "RegisterCrossAttention", "RegisterMode", "RegisterWrite"]


#: UNet channels per level
DEFAULT_CHANNELS: tuple[int, ...] = (128, 256, 512)
#: UNet self-attention per level
DEFAULT_ATTENTION_LEVELS: tuple[bool, ...] = (False, True, True)


@dataclass
class DenoiserConfig:
    """The denoiser UNet, its register bank and its anatomy head (YAML ``model.init_args.denoiser``).

    A new setting of the bank or of the head is one field of :class:`RegisterConfig` or
    :class:`HeadConfig` (with its check and its line below) and its use in
    :class:`AnatomicalDenoiser`; nothing else lists them.

    Args:
        channels: UNet channels per level.
        num_res_blocks: residual blocks per level.
        attention_levels: UNet self-attention per level (kept identical in the baseline).
        norm_num_groups: GroupNorm groups throughout.
        num_head_channels: channels per self-attention head of the UNet.
        registers: the register bank (:class:`~anatldm.models.registers.RegisterConfig`).
        head: the anatomy head (:class:`~anatldm.models.anatomy_head.HeadConfig`).
    """

    #: where these settings sit in a config: errors name ``<key>.<field>``
    key = "model.denoiser"

    channels: tuple[int, ...] = DEFAULT_CHANNELS
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = DEFAULT_ATTENTION_LEVELS
    norm_num_groups: int = 32
    num_head_channels: int = 32
    registers: RegisterConfig = field(default_factory=RegisterConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        self.registers = as_config(RegisterConfig, self.registers)
        self.head = as_config(HeadConfig, self.head)
        key, num_levels = self.key, len(self.channels)
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"{key}.channels must be positive, one per level, got {list(self.channels)}")
        if len(self.attention_levels) != num_levels:
            raise ConfigError(f"{key}.attention_levels has {len(self.attention_levels)} entries for the "
                              f"{num_levels} levels of {key}.channels")
        for name in ("num_res_blocks", "norm_num_groups", "num_head_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be at least 1, got {getattr(self, name)}")
        for name, levels in (("registers.levels", self.registers.levels), ("head.levels", self.head.levels)):
            bad = [level for level in levels if not 0 <= level < num_levels]
            if bad:
                raise ConfigError(f"{key}.{name} {bad} out of range for the {num_levels} levels of {key}.channels")
        if self.head.refine_steps and self.registers.anatomy_conditioning:
            raise ConfigError(f"{key}.head.refine_steps: anatomy-conditioned registers read the head at every "
                              "sampling step, so refining it after training would change the samples; use one of "
                              f"{key}.head.refine_steps and {key}.registers.anatomy_conditioning")

    def denoiser_kwargs(self, spatial_dims: int, in_channels: int, num_classes: int,
                        downsampling: int = 1, decoder_channels: Sequence[int] = ()) -> dict[str, Any]:
        """The :class:`AnatomicalDenoiser` keyword arguments (``num_classes``: 0 builds no head;
        ``downsampling``: the autoencoder's, image side / latent side; ``decoder_channels``: the
        channels of its decoder's activations above the latent grid, coarsest first, needed by
        ``head.image_features``); what a pipeline folder stores."""
        registers, head = self.registers, self.head
        stages = head.upsample_stages(downsampling)
        image_channels: list[int] = []
        if head.image_features and num_classes:
            if len(decoder_channels) < stages:
                raise ConfigError(f"{head.key}.image_features: the autoencoder's decoder has {len(decoder_channels)} "
                                  f"resolutions above the latent grid for the head's {stages} upsampling stages")
            image_channels = [int(c) for c in decoder_channels[:stages]]
        return {"spatial_dims": spatial_dims, "in_channels": in_channels, "channels": list(self.channels),
                "num_res_blocks": self.num_res_blocks, "attention_levels": list(self.attention_levels),
                "norm_num_groups": self.norm_num_groups, "num_head_channels": self.num_head_channels,
                "num_registers": registers.num_registers, "register_dim": registers.dim,
                "register_init_std": registers.init_std, "register_levels": list(registers.levels),
                "register_heads": registers.heads, "register_encoder": registers.encoder,
                "register_mode": registers.mode, "register_dropout": registers.dropout, "num_classes": num_classes,
                "head_levels": list(head.levels), "head_channels": head.channels,
                "head_upsample_stages": stages, "head_image_channels": image_channels,
                "anatomy_conditioning": registers.anatomy_conditioning}

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (the hyperparameters a checkpoint stores)."""
        return asdict(self)


@dataclass
class DenoiserOutput:
    """``sample``: predicted noise (or v) ``(B, C, *S)``; ``anatomy_logits``:
    ``(B, num_classes, *mask_size)`` or ``None`` without a head; ``attention``: per level,
    register attention maps ``(B, K, *S_level)`` averaged over heads, when asked for."""

    sample: torch.Tensor
    anatomy_logits: torch.Tensor | None = None
    attention: dict[str, torch.Tensor] | None = None


class RegisterCrossAttention(nn.Module):
    """Slim residual cross-attention from a feature map to the register tokens.

    GroupNorm, then queries from the features and keys/values from the ``K`` registers, then a
    zero-initialised output projection (so training starts from the plain UNet). Unlike MONAI's
    ``SpatialTransformer`` there is no self-attention and no feed-forward: the cost is two
    ``C x C`` projections per position plus ``K`` attention logits. Keys and values are
    computed once per call from the ``(K, D)`` bank (per sample after a :class:`RegisterWrite`).

    Args:
        channels: channels ``C`` of the feature map.
        register_dim: width ``D`` of the register tokens.
        num_heads: attention heads (must divide ``channels``).
        norm_num_groups: groups of the input GroupNorm.
    """

    def __init__(self, channels: int, register_dim: int, num_heads: int = 4, norm_num_groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide channels ({channels})")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(register_dim, channels, bias=False)
        self.to_v = nn.Linear(register_dim, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, registers: torch.Tensor,
                return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, C, *S)``, ``registers (K, D)`` (the bank) or ``(B, K, D)`` (per sample, after a
        write) -> ``(x + attention output, maps (B, K, *S) or None)``."""
        batch, channels, *spatial = x.shape
        heads, head_dim = self.num_heads, channels // self.num_heads
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        q = self.to_q(h).view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, h, N, c)
        tokens = registers if registers.ndim == 3 else registers.unsqueeze(0)  # (B or 1, K, D)
        k = self.to_k(tokens).view(tokens.shape[0], -1, heads, head_dim).transpose(1, 2)  # (B or 1, h, K, c)
        v = self.to_v(tokens).view(tokens.shape[0], -1, heads, head_dim).transpose(1, 2)  # (B or 1, h, K, c)
        k, v = k.expand(batch, -1, -1, -1).to(q.dtype), v.expand(batch, -1, -1, -1).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, c)
        out = self.to_out(out.transpose(1, 2).reshape(batch, -1, channels))  # (B, N, C)
        maps = None
        if return_attention:
            weights = torch.softmax(q @ k.transpose(-1, -2) * head_dim**-0.5, dim=-1)  # (B, h, N, K)
            maps = weights.mean(1).transpose(1, 2).reshape(batch, -1, *spatial)  # (B, K, *S)
        return x + out.transpose(1, 2).reshape(x.shape), maps  # (B, C, *S)


class RegisterWrite(nn.Module):
    """The registers read the image: a per-sample update of the tokens from a feature map.

    ``tokens <- tokens + W_o Attention(q = W_q LN(tokens), k = W_k GN(x), v = W_v GN(x))``, the
    ``K`` tokens attending to the ``N`` feature positions, as register tokens are updated in a
    ViT (Darcet et al., 2024). ``W_o`` starts at zero, so a new model starts as the read-only
    form. Cost: two ``C x C`` projections per position plus ``K x N`` attention logits.

    Args:
        channels: channels ``C`` of the feature map.
        register_dim: width ``D`` of the register tokens.
        num_heads: attention heads (must divide ``channels``).
        norm_num_groups: groups of the feature GroupNorm.
    """

    def __init__(self, channels: int, register_dim: int, num_heads: int = 4, norm_num_groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide channels ({channels})")
        self.num_heads = num_heads
        self.norm_tokens = nn.LayerNorm(register_dim)
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.to_q = nn.Linear(register_dim, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.Linear(channels, register_dim)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, registers: torch.Tensor) -> torch.Tensor:
        """``x (B, C, *S)``, ``registers (K, D)`` or ``(B, K, D)`` -> updated tokens ``(B, K, D)``."""
        batch, channels = x.shape[:2]
        heads, head_dim = self.num_heads, channels // self.num_heads
        tokens = (registers if registers.ndim == 3 else registers.unsqueeze(0)).expand(batch, -1, -1)  # (B, K, D)
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        q = self.to_q(self.norm_tokens(tokens)).view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, h, K, c)
        k = self.to_k(h).view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, h, N, c)
        v = self.to_v(h).view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, h, N, c)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))  # (B, h, K, c)
        return tokens + self.to_out(out.transpose(1, 2).reshape(batch, -1, channels)).to(tokens.dtype)


class AnatomicalDenoiser(nn.Module):
    """MONAI ``DiffusionModelUNet`` conditioned on an anatomical register bank, with a head.

    Levels are numbered from the finest (0, the latent's resolution) to the coarsest.

    Args:
        spatial_dims: 2 or 3.
        in_channels: latent channels.
        channels: UNet channels per level.
        num_res_blocks: residual blocks per level.
        attention_levels: MONAI self-attention per level (kept identical in the baseline).
        norm_num_groups: GroupNorm groups throughout.
        num_head_channels: channels per self-attention head of the UNet.
        num_registers: tokens ``K`` in the register bank; 0 builds the standard LDM denoiser.
        register_dim: token width ``D``.
        register_init_std: standard deviation of the tokens' initialisation. Tokens enter the
            keys without a norm, so small tokens give near-uniform attention (every register
            read everywhere, a bias rather than a memory); 1.0 gives attention logits of about
            unit scale at the start.
        register_levels: levels whose decoder blocks cross-attend to the registers.
        register_heads: heads of the register cross-attention.
        register_encoder: the encoder blocks of ``register_levels`` cross-attend too.
        register_mode: ``"read"``: the features read the same bank for every sample (the
            method's literal form, a persistent memory); ``"read_write"``: at each register
            level the tokens first read the feature map (:class:`RegisterWrite`), then the
            features read the updated tokens; the update carries on to the next level.
        register_dropout: in training mode, each sample's register path is dropped (its
            cross-attention residuals contribute nothing) with this probability, drawn from the
            global (training) RNG; never in eval mode. 0: off (no random number drawn).
        num_classes: classes of the anatomy head (background included); 0 builds no head.
        head_levels: decoder levels fused by the head (2-3 recommended).
        head_channels: width of the head's fusion block.
        anatomy_conditioning: per-sample tokens from the head's previous prediction
            (:class:`~anatldm.models.anatomy_conditioning.AnatomyTokenConditioner`); needs
            registers and a head.
        head_upsample_stages: learned x2 stages of the head after the fusion
            (:class:`AnatomicalSegmentationHead`; ``HeadConfig.output_stride``).
        head_image_channels: channels of the autoencoder decoder's activations that the head's
            upsampling stages read at t = 0, one per stage (``HeadConfig.image_features``;
            :func:`~anatldm.models.decoder_features.decoder_activation_channels`); empty: none.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        num_res_blocks: int = DenoiserConfig.num_res_blocks,
        attention_levels: Sequence[bool] = DEFAULT_ATTENTION_LEVELS,
        norm_num_groups: int = DenoiserConfig.norm_num_groups,
        num_head_channels: int = DenoiserConfig.num_head_channels,
        num_registers: int = RegisterConfig.num_registers,
        register_dim: int = DEFAULT_REGISTER_DIM,
        register_init_std: float = DEFAULT_REGISTER_INIT_STD,
        register_levels: Sequence[int] = RegisterConfig.levels,
        register_heads: int = RegisterConfig.heads,
        register_encoder: bool = RegisterConfig.encoder,
        register_mode: RegisterMode = RegisterConfig.mode,
        register_dropout: float = RegisterConfig.dropout,
        num_classes: int = 0,
        head_levels: Sequence[int] = HeadConfig.levels,
        head_channels: int = DEFAULT_HEAD_CHANNELS,
        head_upsample_stages: int = 0,
        head_image_channels: Sequence[int] = (),
        anatomy_conditioning: bool = False,
    ) -> None:
        super().__init__()
        num_levels = len(channels)
        if len(attention_levels) != num_levels:
            raise ValueError(f"attention_levels has {len(attention_levels)} entries for {num_levels} levels")
        for name, levels in (("register_levels", register_levels), ("head_levels", head_levels)):
            bad = [level for level in levels if not 0 <= level < num_levels]
            if bad:
                raise ValueError(f"{name} {bad} out of range for {num_levels} levels")
        if register_mode not in ("read", "read_write"):
            raise ValueError(f"register_mode must be 'read' or 'read_write', got '{register_mode}'")
        if not 0 <= register_dropout <= 1:
            raise ValueError(f"register_dropout must lie in [0, 1], got {register_dropout}")
        if num_registers < 0 or num_classes < 0:
            raise ValueError(f"num_registers and num_classes must be >= 0, got {num_registers}, {num_classes}")
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels,
            channels=tuple(channels), num_res_blocks=num_res_blocks, attention_levels=tuple(attention_levels),
            norm_num_groups=norm_num_groups, num_head_channels=num_head_channels,
        )
        self.num_levels = num_levels
        self.registers = AnatomicalRegisterBank(num_registers, register_dim, register_init_std) if num_registers else None
        self.register_levels = tuple(register_levels) if num_registers else ()
        self.register_attention = nn.ModuleDict()
        sides = ("down", "up") if register_encoder else ("up",)
        for level in self.register_levels:
            for side in sides:
                self.register_attention[f"{side}{level}"] = RegisterCrossAttention(
                    channels[level], register_dim, register_heads, norm_num_groups)
        self.register_mode = register_mode
        self.register_dropout = float(register_dropout)
        self.register_write = nn.ModuleDict()  # read_write: the tokens read each register level first
        if register_mode == "read_write":
            for level in self.register_levels:
                for side in sides:
                    self.register_write[f"{side}{level}"] = RegisterWrite(
                        channels[level], register_dim, register_heads, norm_num_groups)
        self.head_levels = tuple(sorted(head_levels)) if num_classes else ()
        self.head = (AnatomicalSegmentationHead(spatial_dims, [channels[lv] for lv in self.head_levels],
                                                num_classes, head_channels, min(norm_num_groups, head_channels),
                                                head_upsample_stages, head_image_channels)
                     if num_classes else None)
        if anatomy_conditioning and not (num_registers and num_classes):
            raise ValueError("anatomy_conditioning needs a register bank and a head "
                             f"(num_registers {num_registers}, num_classes {num_classes})")
        self.anatomy_conditioner = (AnatomyTokenConditioner(num_classes, num_registers, register_dim, spatial_dims)
                                    if anatomy_conditioning else None)
        self._state: dict = {}
        hooked = {("down", lv) for lv in self.register_levels if register_encoder}
        hooked |= {("up", lv) for lv in (*self.register_levels, *self.head_levels)}
        for side, level in sorted(hooked):
            self._block(side, level).register_forward_hook(self._make_hook(side, level))

    @property
    def reads_image_features(self) -> bool:
        """Whether the head's t = 0 call reads the autoencoder decoder's activations."""
        return self.head is not None and self.head.reads_image_features

    @classmethod
    def from_config(cls, config: DenoiserConfig, spatial_dims: int, in_channels: int,
                    num_classes: int, downsampling: int = 1) -> AnatomicalDenoiser:
        """The denoiser of ``config`` on ``in_channels``-channel latents of an autoencoder that
        downsamples by ``downsampling``; ``num_classes`` 0 builds no head."""
        return cls(**config.denoiser_kwargs(spatial_dims, in_channels, num_classes, downsampling))

    def _block(self, side: str, level: int) -> nn.Module:
        """The last residual block of a level, on the encoder or the decoder side."""
        if side == "down":
            return self.unet.down_blocks[level].resnets[-1]
        return self.unet.up_blocks[self.num_levels - 1 - level].resnets[-1]

    def _make_hook(self, side: str, level: int):
        name = f"{side}{level}"

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if not self._state:  # the UNet called on its own, outside forward()
                return output
            keep = self._state["keep"]  # None: every sample reads the registers; False: none does
            if keep is not False and name in self.register_write:  # the tokens read this level first
                self._state["tokens"] = self.register_write[name](output, self._state["tokens"])
            if keep is not False and name in self.register_attention:
                attended, maps = self.register_attention[name](output, self._state["tokens"],
                                                               self._state["return_attention"])
                # register dropout: a dropped sample keeps its features as if it had no register path
                output = attended if keep is None else torch.where(keep.view(-1, *([1] * (output.ndim - 1))),
                                                                   attended, output)
                if maps is not None:
                    self._state["attention"][name] = maps
            if side == "up" and level in self.head_levels:
                self._state["features"][level] = output
            return output

        return hook

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, mask_size: Sequence[int] | None = None,
                registers: torch.Tensor | None = None, return_attention: bool = False,
                anatomy: torch.Tensor | None = None, use_registers: bool = True,
                image_features: Sequence[torch.Tensor] | None = None) -> DenoiserOutput:
        """Predict the noise of ``x (B, C, *S)`` at ``timesteps (B,)``.

        Args:
            mask_size: spatial size of the head's logits (default: the latent's).
            registers: edited ``(K, D)`` tokens to use instead of the learned bank.
            return_attention: also return each level's register attention maps.
            anatomy: with anatomy-conditioned registers, the soft label map ``(B, classes, *S')``
                the tokens respond to (the head's previous prediction); ``None``: zeros.
            use_registers: ``False`` gives the register-free ("null") prediction of register
                guidance: no register path at all, as a sample dropped by ``register_dropout``.
            image_features: for a head with ``head_image_channels``, the frozen autoencoder
                decoder's activations of ``x`` (:func:`~anatldm.models.decoder_features.decoder_activations`;
                t = 0 calls only); ``None``: the head reads none.
        """
        tokens = None
        if self.registers is not None:
            tokens = self.registers.tokens if registers is None else registers  # (K, D)
            if tokens.shape != self.registers.tokens.shape:
                raise ValueError(f"registers of shape {tuple(tokens.shape)} for a bank of "
                                 f"{tuple(self.registers.tokens.shape)}")
        elif registers is not None:
            raise ValueError("this denoiser has no register bank (num_registers=0)")
        if self.anatomy_conditioner is not None and use_registers:  # the null prediction reads no tokens
            if anatomy is None:
                anatomy = x.new_zeros(x.shape[0], self.head.num_classes, *x.shape[2:])  # (B, classes, *S)
            tokens = self.anatomy_conditioner(tokens, anatomy)  # (B, K, D)
        keep = None if use_registers else False
        if use_registers and tokens is not None and self.training and self.register_dropout > 0:
            keep = torch.rand(x.shape[0], device=x.device) >= self.register_dropout  # (B,) the samples that read
        self._state = {"tokens": tokens, "features": {}, "attention": {}, "return_attention": return_attention,
                       "keep": keep}
        try:
            sample = self.unet(x, timesteps)  # (B, C, *S)
            features = [self._state["features"][level] for level in self.head_levels]
            attention = self._state["attention"] if return_attention else None
        finally:
            self._state = {}
        logits = None
        if self.head is not None:
            logits = self.head(features, tuple(mask_size or x.shape[2:]),
                               image_features)  # (B, classes, *mask_size)
        return DenoiserOutput(sample, logits, attention)
