"""Evaluation: from predictions (or a checkpoint and a manifest) to metrics with confidence intervals.

Two layers:

- pure, on a predictions table: :func:`evaluate_predictions` (thresholds and temperature chosen on the
  validation split, everything measured on test) and :func:`to_dict` (the content of ``metrics.json``);
- model forward: :func:`predict_manifest` turns a checkpoint and a manifest into predictions rows;
- the input gate's counts and the in-scope-only metrics: :mod:`medclass.evaluate.gated`.

Figures and the HTML report are drawn from the ``metrics.json`` data by :mod:`medclass.report`.
"""

from __future__ import annotations

from medclass.evaluate.core import (
    LEVELS,
    ClassResult,
    Curve,
    EvaluationConfig,
    EvaluationResult,
    LevelResult,
    SubgroupClass,
    SubgroupResult,
    evaluate_predictions,
)
from medclass.evaluate.paired import compare_tables, join_predictions
from medclass.evaluate.predict import find_training_metrics, image_id, predict_manifest
from medclass.evaluate.serialize import SCHEMA, to_dict
from medclass.evaluate.table import (
    PredictionTable,
    infer_classes,
    prediction_table,
    predictions_fieldnames,
    read_predictions,
    split_rows,
    write_predictions,
)

__all__ = [
    "LEVELS",
    "SCHEMA",
    "ClassResult",
    "Curve",
    "EvaluationConfig",
    "EvaluationResult",
    "LevelResult",
    "PredictionTable",
    "SubgroupClass",
    "SubgroupResult",
    "compare_tables",
    "evaluate_predictions",
    "find_training_metrics",
    "image_id",
    "infer_classes",
    "join_predictions",
    "predict_manifest",
    "prediction_table",
    "predictions_fieldnames",
    "read_predictions",
    "split_rows",
    "to_dict",
    "write_predictions",
]
