"""Raw versus calibrated probabilities in an evaluation: NLL, ECE and Brier of both, per split.

Predictions rows made with a calibrated checkpoint carry the calibrated probabilities as ``prob:<class>``
and the raw ones as ``raw:<class>`` (:func:`medclass.evaluate.predict_manifest`); the metrics are
:func:`medclass.calibrate.scores`. AUC is the same for both (the calibration is monotone in the positive
class's log-odds), so only the probability-quality numbers are compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medclass.calibrate import scores
from medclass.evaluate.table import prediction_table
from medclass.names import PROB_PREFIX, RAW_PROB_PREFIX

__all__ = ["raw_vs_calibrated"]


def _as_raw(row: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    return {**row, **{f"{PROB_PREFIX}{c}": row[f"{RAW_PROB_PREFIX}{c}"] for c in classes}}


def raw_vs_calibrated(
    splits: Mapping[str, Sequence[Mapping[str, Any]]], positive_class: str | None = None
) -> dict[str, dict[str, dict[str, float]]] | None:
    """``{split: {"raw": {nll, ece, brier}, "calibrated": {...}}}`` for each named split's rows, or None when
    the rows hold no ``raw:<class>`` columns (probabilities that were not calibrated).

    Raises DataError for rows :func:`~medclass.evaluate.table.prediction_table` refuses.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, rows in splits.items():
        if not rows:
            continue
        table = prediction_table(rows, what=f"{name} split")
        if any(f"{RAW_PROB_PREFIX}{c}" not in rows[0] for c in table.classes):
            return None
        raw = prediction_table([_as_raw(r, table.classes) for r in rows], table.classes, table.task)
        y = table.y_index if table.task == "multiclass" else table.y
        k = table.classes.index(positive_class) if positive_class in table.classes else 1
        k = min(k, len(table.classes) - 1)
        out[name] = {
            "raw": scores(y, raw.scores, table.task, k),
            "calibrated": scores(y, table.scores, table.task, k),
        }
    return out or None
