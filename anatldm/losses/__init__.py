"""Losses: the anatomy loss, its progressive weight schedule and timestep weighting, and the
register-attention supervision."""

from anatldm.losses.anatomy import (
           AnatomyGradientBalance,
           AnatomyLoss,
           AnatomyLossConfig,
           AnatomyWeightSchedule,
           TimestepWeighting,
)
from anatldm.losses.autoencoder import kl_divergence
from anatldm.losses.registers import RegisterAttentionLoss, class_register_groups

__all__ = ["AnatomyGradientBalance", "AnatomyLoss", "AnatomyLossConfig", "AnatomyWeightSchedule", "RegisterAttentionLoss", "TimestepWeighting",
           "class_register_groups", "kl_divergence"]
