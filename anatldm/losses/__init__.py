"""Losses: the anatomy loss, its progressive weight schedule and timestep weighting, the
register-attention supervision, and the autoencoder's domain perceptual loss."""

from anatldm.losses.anatomy import (
           AnatomyGradientBalance,
           AnatomyLoss,
           AnatomyLossConfig,
           AnatomyWeightSchedule,
           TimestepWeighting,
)
from anatldm.losses.anatomy_perceptual import AnatomyPerceptualConfig, AnatomyPerceptualLoss
from anatldm.losses.autoencoder import kl_divergence
from anatldm.losses.registers import RegisterAttentionLoss, class_register_groups

__all__ = ["AnatomyGradientBalance", "AnatomyLoss", "AnatomyLossConfig", "AnatomyPerceptualConfig", "AnatomyPerceptualLoss",
           "AnatomyWeightSchedule", "RegisterAttentionLoss", "TimestepWeighting",
           "class_register_groups", "kl_divergence"]
