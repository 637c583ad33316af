"""Figures of an evaluation, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display).

Every function takes plain data (blocks of ``metrics.json``, lists of numbers) and returns a
:class:`matplotlib.figure.Figure`; :func:`to_png` renders one to PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _figure(width: float = 5.6, height: float = 5.0, **kwargs: Any) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _nums(values: Sequence[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def roc_figure(classes: Mapping[str, Mapping[str, Any]], title: str = "ROC curve") -> Figure:
    """ROC curve of each class (``metrics.json`` class blocks) with its bootstrap band and operating point."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls=":", label="chance")
    for i, (name, block) in enumerate(classes.items()):
        color = COLORS[i % len(COLORS)]
        curves = block.get("curves", {})
        band = curves.get("roc_band")
        if band:
            ax.fill_between(band["fpr"], _nums(band["tpr_low"]), _nums(band["tpr_high"]), step="post",
                            color=color, alpha=0.18, lw=0, label=f"{name}: 95% bootstrap band")  # fmt: skip
        roc = curves.get("roc")
        if roc:
            label = f"{name}: AUC {_fmt(block.get('auc'))} [{_fmt(block.get('auc_ci_low'))}, {_fmt(block.get('auc_ci_high'))}]"
            ax.plot(roc["fpr"], roc["tpr"], color=color, lw=2, label=label)
        op = block.get("operating_point") or {}
        if op.get("sensitivity") is not None and op.get("specificity") is not None:
            ax.plot([1 - op["specificity"]], [op["sensitivity"]], marker="o", ms=9, mfc="white", mec=color, mew=2.5,
                    ls="none", label=f"{name}: operating point ({op.get('rule', '')}, from validation)")  # fmt: skip
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", title=title, aspect="equal")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return fig


def pr_figure(classes: Mapping[str, Mapping[str, Any]], title: str = "Precision-recall curve") -> Figure:
    """Precision-recall curve of each class with its average precision and prevalence line."""
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, block) in enumerate(classes.items()):
        color = COLORS[i % len(COLORS)]
        pr = block.get("curves", {}).get("pr")
        if pr:
            ax.step(pr["recall"], pr["precision"], where="post", color=color, lw=2,
                    label=f"{name}: AP {_fmt(block.get('average_precision'))}")  # fmt: skip
        if block.get("prevalence") is not None:
            ax.axhline(
                block["prevalence"],
                color=color,
                ls=":",
                lw=1,
                label=f"{name}: prevalence {_fmt(block['prevalence'])}",
            )
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="recall (sensitivity)",
        ylabel="precision (PPV)",
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    return fig


def confusion_figure(
    matrices: Mapping[str, tuple[Sequence[Sequence[int]], Sequence[str]]], title: str = ""
) -> Figure:
    """One heat map per entry ``name -> (matrix, labels)`` (rows: truth, columns: prediction)."""
    n = max(1, len(matrices))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    big = max((len(labels) for _, labels in matrices.values()), default=2)
    side = max(3.6, 0.55 * big + 2.0)
    fig = _figure(max(5.0, side * cols), side * rows)
    if title:
        fig.suptitle(title, fontsize=11)
    for i, (name, (matrix, labels)) in enumerate(matrices.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        data = [[int(v) for v in r] for r in matrix]
        top = max((max(r) for r in data if r), default=1) or 1
        ax.imshow(data, cmap="Blues", vmin=0, vmax=top)
        for r, row in enumerate(data):
            for c, v in enumerate(row):
                ax.text(
                    c,
                    r,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=10,
                    color="white" if v > top / 2 else "black",
                )
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true")
        ax.set_title(name, fontsize=9)
    return fig


def reliability_figure(
    calibrations: Mapping[str, Mapping[str, Any]], title: str = "Reliability diagram"
) -> Figure:
    """Observed frequency against mean predicted probability per bin, with ECE in the legend.

    ``calibrations`` maps a label to a ``metrics.json`` calibration block (``bins``, ``ece``, ``brier``).
    """
    fig = _figure(5.6, 6.2)
    ax = fig.add_subplot(4, 1, (1, 3))
    hist = fig.add_subplot(4, 1, 4, sharex=ax)
    ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1, label="perfect calibration")
    for i, (name, cal) in enumerate(calibrations.items()):
        color = COLORS[i % len(COLORS)]
        bins = [b for b in cal["bins"] if b["count"]]
        xs = [b["mean_predicted"] for b in bins]
        ys = [b["observed"] for b in bins]
        ax.plot(xs, ys, marker="o", color=color, lw=1.5,
                label=f"{name}: ECE {_fmt(cal.get('ece'))}, Brier {_fmt(cal.get('brier'))}")  # fmt: skip
        width = 1.0 / max(1, len(cal["bins"]))
        hist.bar([b["lower"] + width * (0.15 + 0.7 * i / max(1, len(calibrations))) for b in cal["bins"]],
                 [b["count"] for b in cal["bins"]], width=width * 0.7 / max(1, len(calibrations)), align="edge",
                 color=color, alpha=0.7)  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed fraction positive", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    hist.set(xlabel="predicted probability", ylabel="cases")
    return fig


def training_figure(rows: Sequence[Mapping[str, Any]], title: str = "Training curves") -> Figure:
    """Loss (train/val) and validation AUC per epoch from a training run's ``metrics.csv`` rows."""
    fig = _figure(8.0, 3.6)
    loss, auc = fig.subplots(1, 2)

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(float(r["epoch"]), _num(r.get(key))) for r in rows if r.get("epoch") not in (None, "")]
        pts = [(e, v) for e, v in pts if not math.isnan(v)]
        return [e for e, _ in pts], [v for _, v in pts]

    for key, color in (("train_loss", COLORS[0]), ("val_loss", COLORS[1])):
        xs, ys = series(key)
        if xs:
            loss.plot(xs, ys, marker="o", ms=3, color=color, label=key.replace("_", " "))
    xs, ys = series("val_auc")
    if xs:
        auc.plot(xs, ys, marker="o", ms=3, color=COLORS[2], label="val AUC")
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    auc.set(xlabel="epoch", ylabel="AUC", title="validation AUC")
    for ax in (loss, auc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
