"""Utilities on MONAI networks."""

from __future__ import annotations

from monai.networks.nets import UNet
from torch import nn

__all__ = ["bottleneck_module"]


def bottleneck_module(unet: UNet) -> nn.Module:
    """The deepest block of a MONAI ``UNet`` (its encoder's last stage)."""
    module: nn.Module = unet.model
    while True:  # UNet nests Sequential(down, SkipConnection(Sequential(down, ...)), up)
        inner = [m for m in module.children() if m.__class__.__name__ == "SkipConnection"]
        if not inner:
            return module[1] if isinstance(module, nn.Sequential) and len(module) == 3 else module
        module = inner[0].submodule
