"""The evaluation protocol's parts that need no Lightning: controls, statistics, gate and report."""

from anatldm.evaluation.controls import flip_left_right, splice_levels
from anatldm.evaluation.report import (
           ClaimCriteria,
           GateThresholds,
           claim_verdict,
           gate_verdict,
           markdown_report,
)
from anatldm.evaluation.statistics import METRICS, MetricSpec, ModelRecord, RealRecord, Statistics

__all__ = ["METRICS", "ClaimCriteria", "GateThresholds", "MetricSpec", "ModelRecord", "RealRecord", "Statistics",
           "claim_verdict", "flip_left_right", "gate_verdict", "markdown_report", "splice_levels"]
