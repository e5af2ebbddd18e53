"""Losses: the anatomy loss and its progressive weight schedule."""

from anatldm.losses.anatomy import AnatomyLoss, AnatomyWeightSchedule

__all__ = ["AnatomyLoss", "AnatomyWeightSchedule"]
