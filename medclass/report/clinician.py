"""The clinician's saliency report: one self-contained HTML page (and a PDF) per study.

Takes plain data only (:class:`ClinicianReport`: PNG bytes, probabilities, strings) — never a model. Every
string that may come from a file header is HTML-escaped; images are embedded as base64 so the file opens
anywhere without network access. What identifies the patient is decided by the caller through
:mod:`medclass.phi` (a pseudonym by default); this module prints exactly the ``patient`` fields it is given.
The PDF is composed by :mod:`medclass.report.clinician_pdf`.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medclass.preprocess.spec import input_spec
from medclass.report.html import CSS

log = logging.getLogger(__name__)

NOT_FOR_DIAGNOSIS = (
    "NOT FOR DIAGNOSTIC USE. Research software: these maps show which image regions changed the model's "
    "output, not where disease is. Do not base clinical decisions on this report."
)


@dataclass(frozen=True)
class OperatingPoint:
    """The decision threshold for one class and, when evaluated, what it achieved."""

    class_name: str
    threshold: float
    sensitivity: float | None = None
    specificity: float | None = None
    source: str = ""  # e.g. "test split, 624 images"


@dataclass(frozen=True)
class ImageSection:
    """One explained image: its pictures, scores and the faithfulness of its map."""

    image_id: str
    description: str  # e.g. "CR, PA chest" (no identifiers)
    original_png: bytes
    overlay_png: bytes
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]
    explained_class: str
    faithfulness: float | None = None
    faithfulness_metric: str = ""
    faithfulness_meaning: str = ""
    regions_png: bytes = b""  # the image with the map's regions drawn (empty: regions not asked for)
    regions: tuple[Mapping[str, Any], ...] = ()  # rank, box (x0, y0, x1, y1), area_px, peak, mean
    gate_reason: str = ""  # the input gate put the image out of scope, and why ('' = in scope or not gated)


def out_of_scope_text(reason: str) -> str:
    """The banner of an image the input gate put out of scope (HTML and PDF say the same)."""
    return (
        f"OUT OF SCOPE: this image is unlike the images the model was trained on ({reason}). Its "
        "probabilities and saliency map are not meaningful; do not read them."
    )


@dataclass(frozen=True)
class ModelCard:
    """Facts about the model shown in every report."""

    model_sha256: str = ""
    training_data: str = ""  # manifest name and sha256
    intended_use: str = (
        "Research and teaching: shows what an Inception V3 classifier trained on the data above responds "
        "to. Not a medical device; not validated for clinical decisions."
    )
    task: str = "multiclass"
    input_size: int = field(default_factory=lambda: input_spec().size)  # the model's own
    software: str = ""
    randomisation_check: float | None = None  # mean Spearman ρ trained vs randomised top layers
    positive_class: str = ""  # two-class models: the class the model calls positive


@dataclass(frozen=True)
class ClinicianReport:
    """Everything one study's report shows. ``patient``: label → value, already de-identified (or not)."""

    report_id: str
    patient: Mapping[str, str]
    images: Sequence[ImageSection]
    method: str
    layer: str
    grid: tuple[int, int]
    operating_points: Sequence[OperatingPoint] = ()
    model: ModelCard = field(default_factory=ModelCard)
    generated: str = ""
    top_percent: float | None = 10.0
    colormap: str = "jet"
    region_threshold: float | None = None  # regions were found at this fraction of each map's peak


def region_lines(sec: ImageSection, threshold: float | None) -> list[str]:
    """What the regions of one image are, in words, for the HTML and the PDF (empty when none asked)."""
    if threshold is None:
        return []
    head = (f"Regions: connected areas where the map is at least {threshold:g} × its peak, ranked by peak; "
            "outline solid, box dashed, in original pixels. They show where the map is high, not where "
            "disease is: a region is not a lesion and not a segmentation.")  # fmt: skip
    rows = [f"{r['rank']}: box x {r['box'][0]:.0f}–{r['box'][2]:.0f}, y {r['box'][1]:.0f}–{r['box'][3]:.0f} "
            f"({r['area_px']} px), peak {r['peak']:.2f}, mean {r['mean']:.2f}" for r in sec.regions]  # fmt: skip
    return [head, *(rows or ["no region: the map is empty"])]


# --- texts shared by the HTML and the PDF ---------------------------------------------------------
def threshold_text(op: OperatingPoint | None, class_name: str) -> str:
    """What the operating threshold of ``class_name`` means, or that the model was not evaluated."""
    if op is None:
        return (
            f"{class_name}: no operating threshold — not evaluated. This checkpoint carries no evaluation "
            "results, so the probabilities below have no validated cut-off and may be miscalibrated."
        )
    text = f"{op.class_name}: called positive when its probability is ≥ {op.threshold:.3f}."
    if op.sensitivity is not None and op.specificity is not None:
        where = f" on {op.source}" if op.source else " in evaluation"
        text += (
            f" At this threshold the model found {op.sensitivity:.1%} of positive cases (sensitivity) and "
            f"correctly cleared {op.specificity:.1%} of negative cases (specificity){where}."
        )
    else:
        text += " Sensitivity and specificity at this threshold: not evaluated."
    return text


def method_limits(method: str, layer: str, grid: tuple[int, int], input_size: int) -> str:
    """An honest paragraph on what the saliency method can and cannot show."""
    rows, cols = grid
    cell = input_size / max(rows, cols)
    return (
        f"Method: {method} on layer {layer} of Inception V3, computed with the pytorch-grad-cam package. "
        f"The map says which regions most increased the model's score for the explained class; it is not a "
        f"segmentation and not a localisation of disease (saliency ≠ localisation). The layer's output is a "
        f"{rows}×{cols} grid at {input_size}×{input_size} input, so each map cell covers about "
        f"{cell:.0f}×{cell:.0f} input pixels: the smooth colours are interpolation, fine detail is not "
        "resolved, and small findings may be highlighted at a neighbouring cell. Each map is scaled to its "
        "own maximum, so colours cannot be compared between images. A model can rely on shortcuts "
        "(markers, text, positioning, image borders) and the map will faithfully show them; a confident "
        "map does not make a prediction correct."
    )


def fmt(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted, or "not evaluated" for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not evaluated"
    return format(value, spec)


def operating_points_from_meta(meta: Mapping[str, Any], *, scale: str | None = None) -> list[OperatingPoint]:
    """Operating points from a checkpoint's ``meta`` (``operating_point`` and ``metrics``); with ``scale``
    (``calibrated``/``raw``), only those chosen on probabilities of that scale (recorded as ``scale``;
    none recorded: ``raw``), the others are left out with a warning.

    Accepts ``operating_point`` as ``{"class", "threshold", "sensitivity", "specificity"}``, a list of
    those, ``{class: threshold}`` or ``{class: {threshold, sensitivity, specificity}}``; sensitivity and
    specificity missing there are looked up in ``metrics`` (``metrics[class]`` or ``metrics``). Returns []
    when the checkpoint was not evaluated.
    """
    op = meta.get("operating_point")
    metrics = meta.get("metrics") or {}
    if not op:
        return []
    items: list[tuple[str, Any]] = []
    if isinstance(op, list):
        items = [(str(o.get("class", o.get("class_name", ""))), o) for o in op if isinstance(o, Mapping)]
    elif isinstance(op, Mapping) and "threshold" in op:
        items = [(str(op.get("class", op.get("class_name", ""))), op)]
    elif isinstance(op, Mapping):
        items = list(op.items())
    out = []
    for name, value in items:
        d = dict(value) if isinstance(value, Mapping) else {"threshold": value}
        if not isinstance(d.get("threshold"), int | float):
            continue
        if scale is not None and d.get("scale", "raw") != scale:
            log.warning(
                "operating point of %s is on %s probabilities, not %s: left out",
                name,
                d.get("scale", "raw"),
                scale,
            )
            continue
        m = metrics.get(name) if isinstance(metrics.get(name), Mapping) else metrics
        sens = d.get("sensitivity", m.get("sensitivity") if isinstance(m, Mapping) else None)
        spec = d.get("specificity", m.get("specificity") if isinstance(m, Mapping) else None)
        out.append(
            OperatingPoint(
                class_name=name,
                threshold=float(d["threshold"]),
                sensitivity=float(sens) if isinstance(sens, int | float) else None,
                specificity=float(spec) if isinstance(spec, int | float) else None,
                source=str(d.get("source", d.get("split", ""))),
            )
        )
    return out


def operating_point_for(report: ClinicianReport, class_name: str) -> OperatingPoint | None:
    for op in report.operating_points:
        if op.class_name == class_name or (not op.class_name and len(report.operating_points) == 1):
            return op
    return None


# --- HTML -----------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _image_section(report: ClinicianReport, index: int, sec: ImageSection) -> str:
    rows = []
    for name, p in zip(sec.classes, sec.probabilities, strict=True):
        op = operating_point_for(report, name)
        call = "—" if op is None else ("above threshold" if p >= op.threshold else "below threshold")
        cls = ' class="pos"' if op is not None and p >= op.threshold else ""
        thr = "not evaluated" if op is None else f"{op.threshold:.3f}"
        rows.append(f"<tr><td>{_e(name)}</td><td{cls}>{p:.3f}</td><td>{_e(thr)}</td><td>{_e(call)}</td></tr>")
    faith = ""
    if sec.faithfulness_metric:
        faith = (
            f"<p><b>Faithfulness ({_e(sec.faithfulness_metric)}):</b> {_e(fmt(sec.faithfulness))} — "
            f"<span class='muted'>{_e(sec.faithfulness_meaning)}</span></p>"
        )
    outline = "" if report.top_percent is None else f"; white outline: top {report.top_percent:g}% of the map"
    lines = region_lines(sec, report.region_threshold)
    regions = ""
    if lines:
        figure = (
            f"<figure>{_img(sec.regions_png, 'saliency regions')}<figcaption>Regions</figcaption></figure>"
        )
        regions = (f"<div class='imgs'>{figure if sec.regions_png else ''}</div><p class='muted'>{_e(lines[0])}</p>"
                   f"<ol class='muted'>{''.join(f'<li>{_e(t)}</li>' for t in lines[1:])}</ol>")  # fmt: skip
    scope = (
        f"<div class='alert' role='alert'>{_e(out_of_scope_text(sec.gate_reason))}</div>"
        if sec.gate_reason
        else ""
    )
    return (
        f"<section><h2>Image {index}: {_e(sec.description)} <span class='muted'>({_e(sec.image_id)})</span></h2>"
        f"{scope}<div class='imgs'><figure>{_img(sec.original_png, 'original image')}"
        "<figcaption>Original (windowed as for display)</figcaption></figure>"
        f"<figure>{_img(sec.overlay_png, 'saliency overlay')}<figcaption>Saliency for "
        f"<b>{_e(sec.explained_class)}</b> ({_e(report.method)}, {_e(report.colormap)} colours{_e(outline)})"
        "</figcaption></figure></div>"
        "<table><tr><th>Class</th><th>Probability</th><th>Threshold</th><th>Call</th></tr>"
        f"{''.join(rows)}</table>{faith}{regions}</section>"
    )


def render_html(report: ClinicianReport) -> str:
    """The report as one self-contained HTML document (no scripts, no external resources)."""
    classes = report.images[0].classes if report.images else ()
    thresholds = "".join(f"<li>{_e(threshold_text(operating_point_for(report, c), c))}</li>" for c in classes)
    card = report.model
    card_rows = [
        ("Architecture", f"Inception V3 (timm), {card.input_size}×{card.input_size} input, {card.task}"),
        *([("Positive class", card.positive_class)] if card.positive_class else []),
        ("Training data", card.training_data or "not recorded"),
        ("Model weights sha256", card.model_sha256 or "not recorded"),
        ("Intended use", card.intended_use),
        ("Software", card.software or "medclass"),
    ]
    if card.randomisation_check is not None:
        card_rows.append(
            (
                "Sanity check (Adebayo et al. 2018)",
                f"Spearman ρ between maps of this model and of a copy with re-initialised top layers: "
                f"{fmt(card.randomisation_check)} (low = the maps depend on what the model learned)",
            )
        )
    sections = "".join(_image_section(report, i + 1, s) for i, s in enumerate(report.images))
    n_out = sum(1 for s in report.images if s.gate_reason)
    scope = (
        f"<div class='alert' role='alert'>{n_out} of {len(report.images)} image(s) in this report are out of "
        "scope for this model (see the banner on each); their results are not meaningful.</div>"
        if n_out
        else ""
    )
    limits = method_limits(report.method, report.layer, report.grid, report.model.input_size)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>Saliency report {_e(report.report_id)} — not for diagnostic use</title>"
        f"<style>{CSS}</style></head><body><main>"
        f"<div class='alert' role='alert'>{_e(NOT_FOR_DIAGNOSIS)}</div>{scope}"
        f"<h1>Saliency report — {_e(report.report_id)}</h1>"
        f"<p class='muted'>Generated {_e(report.generated)} by {_e(card.software or 'medclass')}</p>"
        f"{_kv_table(list(report.patient.items()))}"
        f"<h2>Operating threshold</h2><ul>{thresholds}</ul>"
        f"{sections}"
        f"<h2>About the method and its limits</h2><p>{_e(limits)}</p>"
        f"<h2>Model card</h2>{_kv_table(card_rows)}"
        f"<div class='alert'>{_e(NOT_FOR_DIAGNOSIS)}</div>"
        "</main></body></html>\n"
    )


def merge_evaluation(meta: Mapping[str, Any], doc: Any) -> Mapping[str, Any]:
    """The checkpoint's meta, with operating points from an evaluate ``metrics.json`` when given."""
    if not isinstance(doc, dict):
        return meta
    levels = doc.get("levels") or {}
    block = levels.get("image") or next(iter(levels.values()), None) if isinstance(levels, dict) else None
    if not isinstance(block, dict):
        return meta
    ops = {}
    for name, c in (block.get("classes") or {}).items():
        op = c.get("operating_point") if isinstance(c, dict) else None
        if isinstance(op, dict) and isinstance(op.get("threshold"), int | float):
            n = block.get("n_test")
            ops[name] = {
                **op,
                "scale": doc.get("probability_scale", "raw"),
                "source": f"the evaluation test split ({n} images)" if n else "the evaluation test split",
            }
    return {**meta, "operating_point": ops} if ops else meta


def render_index(
    rows: Sequence[Mapping[str, Any]],
    errors: Sequence[Mapping[str, str]],
    method: str,
    layer: str,
    refused: Sequence[Mapping[str, Any]] = (),
) -> str:
    """OUT/index.html of ``medclass explain``: one row per explained image (out-of-scope ones marked), the
    images the input gate refused, then the failures."""
    e = _e

    def scope(r: Mapping[str, Any]) -> str:
        return f" <b>(out of scope: {e(r['gate_reason'])})</b>" if r.get("in_scope") is False else ""

    body = "".join(
        f"<tr><td>{e(r['study_id'])}</td><td>{e(r['image_id'])}{scope(r)}</td><td>{e(r['explained_class'])}</td>"
        f"<td><a href='{e(r['overlay_png'])}'>overlay</a></td><td><a href='{e(r['report_html'])}'>HTML</a>"
        + (f" · <a href='{e(r['report_pdf'])}'>PDF</a>" if r["report_pdf"] else "")
        + "</td></tr>"
        for r in rows
    )
    errs = "".join(f"<li>{e(x.get('source_id', ''))}: {e(x['kind'])}: {e(x['message'])}</li>" for x in errors)
    refs = "".join(f"<li>{e(r['image_id'])}: {e(r.get('gate_reason', ''))}</li>" for r in refused)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>medclass saliency index</title>"
        f"<style>{CSS}</style></head><body><p class='alert'>Not for diagnostic use.</p>"
        f"<h1>Saliency maps ({e(method)} at {e(layer)})</h1><table><tr><th>Study</th>"
        f"<th>Image</th><th>Explained class</th><th>Overlay</th><th>Report</th></tr>{body}</table>"
        + (f"<h2>Refused by the input gate (out of scope; not explained)</h2><ul>{refs}</ul>" if refs else "")
        + (f"<h2>Failed</h2><ul>{errs}</ul>" if errs else "")
        + "</body></html>\n"
    )
