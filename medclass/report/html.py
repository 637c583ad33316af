"""A self-contained HTML report: no scripts, no external URLs, figures embedded as base64 PNG.

Every string that comes from data (class names, facts, subgroup values, warnings, captions) goes
through :func:`html.escape`; numbers are formatted here. Undefined values (``None``/NaN) show as "n/a".
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;
max-width:1100px;padding:1.5em;color:#1b1b1b;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin:.4em 0 .2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}h3{margin-top:1.3em}code{background:#f4f4f4;padding:0 .2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .55em;text-align:left;vertical-align:top}th{background:#f3f4f6}
table.num td,table.num th{text-align:right}table.num td.l,table.num th.l{text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#555;font-size:.9em}.big{font-size:1.3em;font-weight:600}.pos{font-weight:700;color:#b00020}
.warn{background:#fff7e0;border-left:4px solid #e0a800;padding:.5em 1em}
.note{background:#eef5ff;border-left:4px solid #4a7fd6;padding:.5em 1em}
.alert{background:#b00020;color:#fff;font-weight:700;padding:12px 16px;border-radius:6px;font-size:1.05em}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:520px;width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555;max-width:520px}
.imgs{display:flex;flex-wrap:wrap;gap:12px}.imgs figure{display:block;margin:0;flex:1 1 320px}
.imgs img{max-width:none;height:auto;border:1px solid #ccc}.imgs figcaption{max-width:none}
"""  # the one stylesheet of medclass's HTML pages: evaluate's report, explain's reports and index, the demo


def esc(value: Any) -> str:
    """Escaped text of any value (quotes included)."""
    return html.escape(str(value), quote=True)


def num(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, integers as they are, ``n/a`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def ci(block: Mapping[str, Any], key: str, low: str | None = None, high: str | None = None) -> str:
    """``value [low, high]`` from a block's ``key``, ``key_ci_low``/``key_ci_high`` (or the given keys)."""
    lo = block.get(low or f"{key}_ci_low")
    hi = block.get(high or f"{key}_ci_high")
    text = num(block.get(key))
    if lo is None and hi is None:
        return text
    return f"{text} <span class='muted'>[{num(lo)}, {num(hi)}]</span>"


def interval(block: Mapping[str, Any], low: str, high: str) -> str:
    """``[low, high]`` from two keys of a block (``n/a`` when missing)."""
    if block.get(low) is None and block.get(high) is None:
        return "n/a"
    return f"[{num(block.get(low))}, {num(block.get(high))}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, first_left: bool = True) -> str:
    """An HTML table; ``header`` is escaped here, ``rows`` cells must already be HTML (escaped)."""
    head = "".join(f"<th class='l'>{esc(h)}</th>" if i == 0 and first_left else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(header))  # fmt: skip
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='l'>{c}</td>" if i == 0 and first_left else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table class='num'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(png: bytes, caption: str, alt: str) -> str:
    """An embedded PNG figure with an escaped caption and alt text."""
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{esc(alt)}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")  # fmt: skip


def _facts(facts: Mapping[str, Any]) -> str:
    if not facts:
        return ""
    rows = [[esc(k), esc(v)] for k, v in facts.items()]
    return "<h2>Data and model</h2>" + table(["fact", "value"], rows).replace("<td>", "<td class='l'>")


def _auc_rows(level: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, c in level["classes"].items():
        rows.append([esc(name), num(c.get("n")), num(c.get("n_pos")), num(c.get("prevalence")), ci(c, "auc"),
                     interval(c, "auc_delong_ci_low", "auc_delong_ci_high"), num(c.get("average_precision"))])  # fmt: skip
    for key in ("macro", "micro"):
        if key not in level:
            continue
        m = level[key]
        dl = interval(m, "auc_delong_ci_low", "auc_delong_ci_high") if "auc_delong_ci_low" in m else ""
        rows.append([f"<b>{key} average</b>", "", "", "", ci(m, "auc"), dl, ""])
    return rows


def _operating_rows(level: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, c in level["classes"].items():
        op = c["operating_point"]
        rows.append([esc(name), num(op.get("threshold"), 4), ci(op, "sensitivity"), ci(op, "specificity"),
                     ci(op, "ppv"), ci(op, "npv"), num(op.get("f1")), num(op.get("accuracy")),
                     f"{num(op.get('tp'))} / {num(op.get('fp'))} / {num(op.get('tn'))} / {num(op.get('fn'))}"])  # fmt: skip
    return rows


def _transfer_rows(level: Mapping[str, Any]) -> list[list[str]]:
    """Per class: validation counts, the threshold and the test rates at it, each with its bootstrap CI."""
    rows = []
    for name, c in level["classes"].items():
        b = c["operating_point"].get("threshold_bootstrap")
        if not b:
            continue
        counts = f"{num(b.get('validation_n_pos'))} / {num(b.get('validation_n_neg'))}"
        if b.get("small_validation"):
            counts += f" <b>(fewer than {num(b.get('min_validation_cases'))})</b>"
        thr = f"{num(b.get('threshold'), 4)} <span class='muted'>{interval(b, 'threshold_ci_low', 'threshold_ci_high')}</span>"
        rows.append([esc(name), counts, thr, ci(b, "sensitivity"), ci(b, "specificity")])
    return rows


def _fixed_rows(level: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, c in level["classes"].items():
        for target, v in c.get("sensitivity_at_specificity", {}).items():
            rows.append(
                [
                    esc(name),
                    f"sensitivity at specificity &ge; {esc(target)}",
                    ci(v, "value", "ci_low", "ci_high"),
                    num(v.get("threshold"), 4),
                ]
            )
        for target, v in c.get("specificity_at_sensitivity", {}).items():
            rows.append(
                [
                    esc(name),
                    f"specificity at sensitivity &ge; {esc(target)}",
                    num(v.get("value")),
                    num(v.get("threshold"), 4),
                ]
            )
    return rows


def _calibration_rows(level: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, c in level["classes"].items():
        for label, key in (
            ("", "calibration"),
            (" (before temperature scaling)", "calibration_before_scaling"),
        ):
            cal = c.get(key)
            if cal:
                rows.append(
                    [
                        esc(name) + label,
                        num(cal.get("brier")),
                        num(cal.get("ece")),
                        num(cal.get("mce")),
                        num(cal.get("n_bins")),
                    ]
                )
    top = level.get("top_label_calibration")
    if top:
        rows.append(
            [
                "top label (arg-max class)",
                num(top.get("brier")),
                num(top.get("ece")),
                num(top.get("mce")),
                num(top.get("n_bins")),
            ]
        )
    return rows


def _checkpoint_calibration(block: Mapping[str, Any] | None) -> str:
    """Raw versus calibrated probabilities per split (metrics.json's ``checkpoint_calibration``)."""
    if not block or not block.get("splits"):
        return ""
    rows = [
        [esc(split), esc(kind), num(s[kind].get("nll")), num(s[kind].get("ece")), num(s[kind].get("brier"))]
        for split, s in block["splits"].items()
        for kind in ("raw", "calibrated")
    ]
    sel = block.get("selection") or {}
    how = (f"<p class='muted'>Calibration <code>{esc(block.get('method', ''))}</code> fitted on the "
           f"{esc(block.get('split', ''))} split (n = {num(block.get('n'))}; {esc(sel.get('criterion', ''))}). "
           "Thresholds and the tables below use the calibrated probabilities; AUC is the same for both. "
           "The validation numbers after calibration are in-sample.</p>")  # fmt: skip
    return (
        "<h2>Calibrated probabilities</h2>"
        + how
        + table(["split", "probabilities", "NLL", "ECE", "Brier"], rows)
    )


def _level_section(
    name: str, level: Mapping[str, Any], figures: Mapping[str, tuple[bytes, str]], agg: str
) -> str:
    def figs(*kinds: str) -> str:
        found = [figures[f"{k}_{name}"] for k in kinds if f"{k}_{name}" in figures]
        return "<div>" + "".join(figure(png, cap, cap) for png, cap in found) + "</div>" if found else ""

    title = "Image level" if name == "image" else "Patient level"
    parts = [f"<h2>{esc(title)}</h2>"]
    note = f"validation n = {num(level.get('n_val'))}, test n = {num(level.get('n_test'))}"
    if name == "patient":
        note += (
            f"; one score per patient: the {esc(agg)} of its images' probabilities; a patient counts as a true "
            "positive case when any of its images is labelled positive"
        )
    parts.append(f"<p class='muted'>{note}</p>")
    parts.append("<h3>Discrimination (test split)</h3>")
    parts.append(table(["class", "n", "positives", "prevalence", "AUC [95% bootstrap CI]", "DeLong 95% CI",
                        "average precision"], _auc_rows(level)))  # fmt: skip
    parts.append(figs("roc", "pr"))
    parts.append("<h3>Operating point (threshold chosen on validation, applied unchanged to test)</h3>")
    parts.append(table(["class", "threshold", "sensitivity [95% CI]", "specificity [95% CI]", "PPV [95% CI]",
                        "NPV [95% CI]", "F1", "accuracy", "TP / FP / TN / FN"], _operating_rows(level)))  # fmt: skip
    parts.append("<p class='muted'>Rate CIs are Wilson score intervals. A case is called positive when its "
                 "probability is &ge; the threshold.</p>")  # fmt: skip
    transfer = _transfer_rows(level)
    if transfer:
        parts.append("<h3>Does the threshold transfer? (bootstrap)</h3>")
        parts.append(table(["class", "validation positives / negatives", "threshold [95% CI]",
                            "test sensitivity [95% CI]", "test specificity [95% CI]"], transfer))  # fmt: skip
        parts.append("<p class='muted'>Each bootstrap replicate resamples the validation cases and chooses the "
                     "threshold again with the same rule, then measures the test rates at that threshold on a "
                     "resample of the test cases: the intervals include the instability of the choice itself. "
                     "A validation set with few cases of a class (marked in bold) rarely gives a threshold that "
                     "transfers.</p>")  # fmt: skip
    fixed = _fixed_rows(level)
    if fixed:
        parts.append("<h3>Fixed operating points on the test ROC curve (achievable thresholds only)</h3>")
        parts.append(table(["class", "point", "value [95% bootstrap CI]", "threshold"], fixed))
    mc = level.get("multiclass")
    if mc and len(mc.get("classes", [])) > 2:
        parts.append(f"<p>Arg-max accuracy (single label): <b>{num(mc.get('accuracy'))}</b></p>")
    parts.append(figs("confusion"))
    parts.append("<h3>Calibration (test split)</h3>")
    parts.append(table(["class", "Brier score", "ECE", "MCE", "bins"], _calibration_rows(level)))
    parts.append(figs("reliability"))
    return "".join(parts)


def _subgroups(subgroups: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    if not subgroups:
        return ""
    parts = ["<h2>Subgroups (test split, image level)</h2>",
             "<p class='muted'>Sensitivity and specificity at the validation threshold. A subgroup with one "
             "class only has no AUC (n/a).</p>"]  # fmt: skip
    for column, entries in subgroups.items():
        rows = []
        for e in entries:
            for name, c in e["classes"].items():
                rows.append([esc(e["value"]), esc(name), num(e.get("n")), num(c.get("n_pos")), num(c.get("prevalence")),
                             ci(c, "auc"), num(c.get("sensitivity")), num(c.get("specificity"))])  # fmt: skip
        parts.append(f"<h3>by {esc(column)}</h3>")
        parts.append(table([column, "class", "n", "positives", "prevalence", "AUC [95% bootstrap CI]",
                            "sensitivity", "specificity"], rows))  # fmt: skip
    return "".join(parts)


def render_html(
    metrics: Mapping[str, Any],
    figures: Mapping[str, tuple[bytes, str]] | None = None,
    facts: Mapping[str, Any] | None = None,
    *,
    title: str = "medclass evaluation report",
) -> str:
    """The report page for a ``metrics.json`` dict.

    ``figures`` maps a key ending in ``_image``/``_patient`` (placed in that level's section) or any other
    key (placed under "Training") to ``(png_bytes, caption)``; ``facts`` are shown as a table.
    """
    figures = figures or {}
    rule = metrics.get("threshold_rule", {})
    cfg = metrics.get("config", {})
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p class='muted'>medclass {esc(metrics.get('medclass_version', ''))} &middot; task: "
             f"{esc(metrics.get('task', ''))} &middot; classes: {esc(', '.join(metrics.get('classes', [])))}"
             + (f" &middot; <b>positive class: {esc(metrics['positive_class'])}</b>" if metrics.get("positive_class") else "")
             + "</p>"]  # fmt: skip
    parts.append(
        "<div class='note'><b>How the threshold was chosen:</b> "
        f"{esc(rule.get('description', ''))} (rule <code>{esc(rule.get('rule', ''))}</code>), on the "
        f"<b>validation</b> split only, then applied unchanged to the test split. AUC confidence intervals: "
        f"stratified bootstrap ({num(cfg.get('n_bootstrap'))} resamples, seed {num(cfg.get('seed'))}) and DeLong."
        + (f" Probabilities were temperature-scaled with T = {num(metrics.get('temperature'))} fitted on validation."
           if metrics.get("temperature") is not None else "")
        + "</div>"
    )  # fmt: skip
    parts.append(_facts(facts or {}))
    parts.append(_checkpoint_calibration(metrics.get("checkpoint_calibration")))
    overlap = metrics.get("patients_in_val_and_test") or 0
    notes = list(metrics.get("warnings", []))
    if overlap:
        notes.insert(0, f"{overlap} patients appear in both the validation and the test split")
    if notes:
        parts.append(
            "<div class='warn'><b>Warnings</b><ul>"
            + "".join(f"<li>{esc(w)}</li>" for w in notes)
            + "</ul></div>"
        )
    for name, level in metrics.get("levels", {}).items():
        parts.append(_level_section(name, level, figures, str(cfg.get("aggregate", ""))))
    parts.append(_subgroups(metrics.get("subgroups", {})))
    other = [
        figure(png, cap, cap)
        for key, (png, cap) in figures.items()
        if not key.endswith(("_image", "_patient"))
    ]
    if other:
        parts.append("<h2>Training</h2><div>" + "".join(other) + "</div>")
    parts.append("<p class='muted'>All numbers come from metrics.json in the same folder.</p></body></html>")
    return "\n".join(p for p in parts if p)
