"""Reports: ``metrics.json``, figures (PNG) and a self-contained ``report.html`` from plain data.

The report never sees a model: it is drawn from the ``metrics.json`` dict that
:func:`medclass.evaluate.to_dict` makes, optional facts about the data and model, and the training
run's ``metrics.csv`` rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medclass.fileio import atomic_write_bytes, atomic_write_text
from medclass.report.figures import (
    confusion_figure,
    pr_figure,
    reliability_figure,
    roc_figure,
    to_png,
    training_figure,
)
from medclass.report.html import render_html

log = logging.getLogger(__name__)

__all__ = [
    "confusion_figure",
    "evaluation_figures",
    "pr_figure",
    "reliability_figure",
    "render_html",
    "roc_figure",
    "to_png",
    "training_figure",
    "write_evaluation",
]


def _confusions(level: Mapping[str, Any], task: str) -> dict[str, tuple[list[list[int]], list[str]]]:
    mc = level.get("multiclass")
    if task == "multiclass" and mc and len(mc["classes"]) > 2:
        return {"arg-max class": (mc["confusion_matrix"], list(mc["classes"]))}
    out = {}
    for name, c in level["classes"].items():
        op = c["operating_point"]
        if op.get("threshold") is not None:
            out[f"{name} (threshold {op['threshold']:.3g})"] = (op["confusion_matrix"], [f"not {name}", name])
    return out


def evaluation_figures(
    metrics: Mapping[str, Any], training_rows: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, tuple[bytes, str]]:
    """PNG figures keyed ``<kind>_<level>`` (and ``training_curves``), each with its caption."""
    out: dict[str, tuple[bytes, str]] = {}
    task = str(metrics.get("task", ""))
    for name, level in metrics.get("levels", {}).items():
        label = f"{name} level"
        classes = level["classes"]
        out[f"roc_{name}"] = (
            to_png(roc_figure(classes, f"ROC, test split ({label})")),
            f"ROC curve on the test split ({label}) with its 95% bootstrap band; the circle is the operating "
            "point chosen on validation.",
        )
        out[f"pr_{name}"] = (
            to_png(pr_figure(classes, f"Precision-recall ({label})")),
            f"Precision-recall curve ({label}).",
        )
        matrices = _confusions(level, task)
        if matrices:
            out[f"confusion_{name}"] = (
                to_png(confusion_figure(matrices, f"Confusion matrix, test split ({label})")),
                f"Confusion matrix on the test split ({label}) at the validation threshold (rows: truth).",
            )
        cals = {c: b["calibration"] for c, b in classes.items() if b.get("calibration")}
        cals |= {f"{c} (before scaling)": b["calibration_before_scaling"] for c, b in classes.items()
                 if b.get("calibration_before_scaling")}  # fmt: skip
        if cals:
            out[f"reliability_{name}"] = (
                to_png(reliability_figure(cals, f"Reliability ({label})")),
                f"Reliability diagram ({label}): observed fraction positive per bin of predicted probability.",
            )
    if training_rows:
        out["training_curves"] = (
            to_png(training_figure(training_rows)),
            "Loss and validation AUC per training epoch.",
        )
    return out


def write_evaluation(
    metrics: Mapping[str, Any] | Any,
    out_dir: str | os.PathLike[str],
    *,
    facts: Mapping[str, Any] | None = None,
    training_rows: Sequence[Mapping[str, Any]] | None = None,
    title: str = "medclass evaluation report",
) -> dict[str, Path]:
    """Write ``metrics.json``, one PNG per figure and ``report.html`` into ``out_dir`` (atomically).

    ``metrics`` is the ``metrics.json`` dict (:func:`medclass.evaluate.to_dict`) or the
    :class:`~medclass.evaluate.EvaluationResult` itself. Returns ``{"metrics": path, "report": path,
    "<figure key>": path, ...}``. Raises ValueError if a dict holds NaN/inf (``to_dict`` writes null).
    """
    if not isinstance(metrics, Mapping):
        from medclass.evaluate import to_dict

        metrics = to_dict(metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"metrics": out / "metrics.json"}
    atomic_write_text(paths["metrics"], json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    figures = evaluation_figures(metrics, training_rows)
    for key, (png, _) in figures.items():
        paths[key] = out / f"{key}.png"
        atomic_write_bytes(paths[key], png)
    paths["report"] = out / "report.html"
    atomic_write_text(paths["report"], render_html(metrics, figures, facts, title=title))
    log.info("wrote %s (%d figures)", paths["report"], len(figures))
    return paths
