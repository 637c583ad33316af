"""Evaluation metrics: pure functions of ``(y_true, y_score)`` returning frozen dataclasses.

Degenerate input (one class only) warns with :class:`MetricWarning` and gives NaN; unusable input
(empty, NaN scores, non-0/1 labels) raises :class:`~medclass.errors.DataError`.
"""

from __future__ import annotations

from medclass.metrics._checks import MetricWarning
from medclass.metrics.aggregate import AGGREGATORS, Aggregated, aggregate
from medclass.metrics.auc import AUCResult, AUCSummary, auc_summary, auc_with_ci, roc_auc
from medclass.metrics.bootstrap import (
    DEFAULT_FPR_GRID,
    BootstrapCI,
    RocBand,
    bootstrap_auc,
    bootstrap_average_auc,
    fast_auc,
)
from medclass.metrics.calibration import (
    CalibrationResult,
    ReliabilityBin,
    TemperatureScaling,
    brier_score,
    calibration,
    top_label_calibration,
)
from medclass.metrics.delong import (
    DeLongComparison,
    DeLongResult,
    compare,
    delong_auc,
    delong_covariance,
    delong_mean_auc,
    midranks,
)
from medclass.metrics.operating import (
    THRESHOLD_RULES,
    FixedPoint,
    MulticlassSummary,
    OperatingPoint,
    ThresholdRule,
    argmax_summary,
    choose_threshold,
    operating_point,
    parse_threshold_rule,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
    tpr_at_fpr,
    wilson_ci,
)
from medclass.metrics.threshold_ci import (
    MIN_VALIDATION_CASES,
    Interval,
    ThresholdCI,
    small_validation_message,
    threshold_ci,
)

__all__ = [
    "AGGREGATORS",
    "DEFAULT_FPR_GRID",
    "MIN_VALIDATION_CASES",
    "THRESHOLD_RULES",
    "AUCResult",
    "AUCSummary",
    "Aggregated",
    "BootstrapCI",
    "CalibrationResult",
    "DeLongComparison",
    "DeLongResult",
    "FixedPoint",
    "Interval",
    "MetricWarning",
    "MulticlassSummary",
    "OperatingPoint",
    "ReliabilityBin",
    "RocBand",
    "TemperatureScaling",
    "ThresholdCI",
    "ThresholdRule",
    "aggregate",
    "argmax_summary",
    "auc_summary",
    "auc_with_ci",
    "bootstrap_auc",
    "bootstrap_average_auc",
    "brier_score",
    "calibration",
    "choose_threshold",
    "compare",
    "delong_auc",
    "delong_covariance",
    "delong_mean_auc",
    "fast_auc",
    "midranks",
    "operating_point",
    "parse_threshold_rule",
    "roc_auc",
    "sensitivity_at_specificity",
    "small_validation_message",
    "specificity_at_sensitivity",
    "threshold_ci",
    "top_label_calibration",
    "tpr_at_fpr",
    "wilson_ci",
]
