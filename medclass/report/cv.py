"""Cross-validation results as files: per-fold and summary CSVs, a markdown table, a figure, JSON.

Plain data in (one row per fold and reported class, and each fold's ROC points), files out; no model.
The spread is the sample standard deviation over the folds that finished (``ddof=1``; n/a with one).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medclass.fileio import atomic_write_bytes, atomic_write_text, write_csv
from medclass.report.figures import COLORS, _figure, to_png
from medclass.report.markdown import md_num, md_table

# What is summarised over folds, in table order (column of the per-fold rows → label).
CV_METRICS: dict[str, str] = {
    "auc": "AUC",
    "ece": "ECE",
    "ece_raw": "ECE raw",
    "brier": "Brier",
    "threshold": "threshold",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}
FOLD_COLUMNS = (
    "fold", "class", "status", "n_train", "n_val", "n_test", "n_test_pos", "n_test_neg", "best_epoch",
    "auc", "ece", "ece_raw", "brier", "brier_raw", "threshold", "sensitivity", "specificity", "val_sensitivity", "val_specificity",
    "threshold_ci_low", "threshold_ci_high", "probabilities", "seconds", "error",
)  # fmt: skip
SUMMARY_COLUMNS = ("class", "metric", "mean", "sd", "min", "max", "n_folds")


def _finite(values: Sequence[Any]) -> np.ndarray:
    v = np.array([math.nan if x is None else float(x) for x in values], dtype=float)
    return v[np.isfinite(v)]


def summarize_folds(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean, SD (ddof 1), min and max of each :data:`CV_METRICS` column per class over the ``ok`` rows."""
    out = []
    classes = list(dict.fromkeys(str(r["class"]) for r in rows if r.get("status") == "ok"))
    for name in classes:
        mine = [r for r in rows if r.get("status") == "ok" and str(r["class"]) == name]
        for key in CV_METRICS:
            v = _finite([r.get(key) for r in mine])
            out.append({
                "class": name,
                "metric": key,
                "mean": float(v.mean()) if v.size else None,
                "sd": float(v.std(ddof=1)) if v.size > 1 else None,
                "min": float(v.min()) if v.size else None,
                "max": float(v.max()) if v.size else None,
                "n_folds": int(v.size),
            })  # fmt: skip
    return out


def _fmt(key: str, value: Any) -> str:
    """Thresholds with 4 significant digits (0.9998, 5e-13), the rates with 3 decimals."""
    return md_num(value, 4, "g") if key == "threshold" else md_num(value)


def _mean_sd(summary: Sequence[Mapping[str, Any]], name: str, key: str) -> str:
    s = next((x for x in summary if x["class"] == name and x["metric"] == key), None)
    if s is None or s["mean"] is None:
        return "n/a"
    return f"{_fmt(key, s['mean'])} ± {_fmt(key, s['sd'])}"


def cv_markdown(
    rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], intro: str = ""
) -> str:
    """Per-fold rows, then ``mean ± SD`` per class; failed folds show their error."""
    header = ["fold", "class", "n train / val / held-out", *CV_METRICS.values(), "status"]
    body = []
    for r in rows:
        counts = f"{r.get('n_train', '')} / {r.get('n_val', '')} / {r.get('n_test', '')}"
        values = [_fmt(k, r.get(k)) for k in CV_METRICS]
        status = r.get("status", "") if r.get("status") == "ok" else f"failed: {r.get('error', '')}"
        body.append([r.get("fold", ""), r.get("class", ""), counts, *values, status])
    for name in dict.fromkeys(str(s["class"]) for s in summary):
        n = max((s["n_folds"] for s in summary if s["class"] == name), default=0)
        values = [_mean_sd(summary, name, k) for k in CV_METRICS]
        body.append([f"**mean ± SD** ({n} folds)", name, "", *values, ""])
    return (intro + "\n\n" if intro else "") + md_table(header, body)


def cv_figure(
    rows: Sequence[Mapping[str, Any]],
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    summary: Sequence[Mapping[str, Any]],
) -> Figure:
    """Left: each fold's held-out ROC curve (``curves[class]`` = [{fold, fpr, tpr}]); right: every metric
    per fold (dots) with its mean ± SD (bar and whisker), per class."""
    fig = _figure(11.5, 4.8)
    roc_ax, bar_ax = fig.subplots(1, 2, width_ratios=[1, 1.35])
    roc_ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls=":")
    for c, (name, per_fold) in enumerate(curves.items()):
        for j, curve in enumerate(per_fold):
            auc = next(
                (r.get("auc") for r in rows if r.get("fold") == curve["fold"] and r["class"] == name), None
            )
            label = f"{name}, fold {curve['fold']}: AUC {md_num(auc)}"
            roc_ax.plot(
                curve["fpr"], curve["tpr"], lw=1.5, color=COLORS[(c * 4 + j) % len(COLORS)], label=label
            )
    roc_ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02), aspect="equal",
               title="held-out ROC per fold")  # fmt: skip
    if curves:
        roc_ax.legend(fontsize=7, loc="lower right")
    keys = list(CV_METRICS)
    names = list(dict.fromkeys(str(s["class"]) for s in summary))
    width = 0.8 / max(1, len(names))
    for c, name in enumerate(names):
        color = COLORS[c % len(COLORS)]
        for m, key in enumerate(keys):
            x = m + (c - (len(names) - 1) / 2) * width
            s = next(s for s in summary if s["class"] == name and s["metric"] == key)
            if s["mean"] is not None:
                bar_ax.bar(x, s["mean"], width * 0.9, color=color, alpha=0.35,
                           yerr=s["sd"] or 0.0, capsize=4, label=name if m == 0 else None)  # fmt: skip
            v = _finite([r.get(key) for r in rows if r.get("status") == "ok" and r["class"] == name])
            bar_ax.plot(np.full(v.size, x), v, "o", ms=4, color=color)
    bar_ax.set_xticks(range(len(keys)), [CV_METRICS[k] for k in keys])
    bar_ax.set(ylim=(0, 1.05), title="per fold (dots), mean ± SD (bars)")
    if len(names) > 1:
        bar_ax.legend(fontsize=8)
    return fig


def write_cv(
    out_dir: str | os.PathLike[str],
    doc: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    intro: str = "",
) -> dict[str, Path]:
    """Write ``cv_folds.csv``, ``cv_summary.csv``, ``cv.md``, ``cv.png`` and ``cv.json`` (``doc`` plus
    ``folds`` and ``summary``) into ``out_dir`` atomically; returns their paths by short name."""
    out = Path(out_dir)
    summary = summarize_folds(rows)
    paths = {
        "folds": out / "cv_folds.csv",
        "summary": out / "cv_summary.csv",
        "markdown": out / "cv.md",
        "figure": out / "cv.png",
        "json": out / "cv.json",
    }
    write_csv(paths["folds"], [{k: r.get(k, "") for k in FOLD_COLUMNS} for r in rows], list(FOLD_COLUMNS))
    write_csv(paths["summary"], summary, list(SUMMARY_COLUMNS))
    atomic_write_text(paths["markdown"], cv_markdown(rows, summary, intro))
    atomic_write_bytes(paths["figure"], to_png(cv_figure(rows, curves, summary)))
    full = dict(doc) | {"folds": list(rows), "summary": summary}
    atomic_write_text(paths["json"], json.dumps(_json_safe(full), indent=2, allow_nan=False) + "\n")
    return paths


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x
