"""Markdown tables from plain data, for pasting into notes, issues and RESULTS.md."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any


def md_num(value: Any, digits: int = 3, kind: str = "f") -> str:
    """A number with ``digits`` decimals (``kind`` "g": significant digits, for thresholds such as 0.9998
    or 5e-13), integers as they are, ``n/a`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}{kind}}"
    return str(value)


def md_cell(value: Any) -> str:
    """Text safe inside a table cell: HTML escaped (markdown renders entities), pipes escaped, one line."""
    return html.escape(str(value), quote=False).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (cells already formatted; escaped here)."""
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _ci(block: Mapping[str, Any], key: str, digits: int = 3, kind: str = "f") -> str:
    lo, hi = block.get(f"{key}_ci_low"), block.get(f"{key}_ci_high")
    return f"{md_num(block.get(key), digits, kind)} [{md_num(lo, digits, kind)}, {md_num(hi, digits, kind)}]"


def threshold_markdown(metrics: Mapping[str, Any]) -> str:
    """The operating point chosen on validation and how well it transfers, one row per level and class.

    ``metrics`` is the ``metrics.json`` dict; classes without ``threshold_bootstrap`` are left out.
    """
    rule = metrics.get("threshold_rule", {}).get("rule", "")
    splits = metrics.get("splits", {})
    val, test = splits.get("validation", "validation"), splits.get("test", "test")
    rows = []
    small = 0
    for level, block in metrics.get("levels", {}).items():
        for name, c in block.get("classes", {}).items():
            b = c.get("operating_point", {}).get("threshold_bootstrap")
            if not b:
                continue
            counts = f"{b.get('validation_n_pos')} / {b.get('validation_n_neg')}"
            if b.get("small_validation"):
                counts += " **(few)**"
                small = int(b.get("min_validation_cases") or 0)
            rows.append(
                [
                    level,
                    name,
                    counts,
                    _ci(b, "threshold", 4, "g"),
                    _ci(b, "sensitivity"),
                    _ci(b, "specificity"),
                ]
            )
    if not rows:
        return ""
    cfg = metrics.get("config", {})
    text = (
        f"Threshold rule `{rule}` chosen on `{val}`; sensitivity and specificity measured on `{test}`. "
        f"95% percentile bootstrap CIs ({cfg.get('n_bootstrap')} resamples, seed {cfg.get('seed')}): each "
        "replicate resamples validation and chooses the threshold again, then measures the rates on a "
        f"resample of `{test}`.\n\n"
    )
    table = md_table(
        [
            "level",
            "class",
            f"{val} positives / negatives",
            "threshold [95% CI]",
            "sensitivity [95% CI]",
            "specificity [95% CI]",
        ],
        rows,
    )
    note = ""
    if small:
        note = (
            f"\n**(few)**: fewer than {small} validation cases of a class; a threshold chosen on so few "
            "cases rarely transfers.\n"
        )
    return text + table + note


def calibration_markdown(metrics: Mapping[str, Any]) -> str:
    """Raw versus calibrated NLL, ECE and Brier per split (``metrics["checkpoint_calibration"]``), or ""
    when the probabilities were not calibrated."""
    block = metrics.get("checkpoint_calibration") or {}
    if not block.get("splits"):
        return ""
    rows = [
        [
            split,
            kind,
            md_num(s[kind].get("nll"), 4),
            md_num(s[kind].get("ece"), 4),
            md_num(s[kind].get("brier"), 4),
        ]
        for split, s in block["splits"].items()
        for kind in ("raw", "calibrated")
    ]
    sel = block.get("selection") or {}
    text = (
        f"Calibration `{block.get('method')}` fitted on `{block.get('split')}` (n = {block.get('n')}; "
        f"{sel.get('criterion', '')}). The validation numbers after calibration are in-sample.\n\n"
    )
    return text + md_table(["split", "probabilities", "NLL", "ECE", "Brier"], rows)
