"""The clinician's saliency report as a PDF, composed with matplotlib (no network, no new dependency).

Page 1: the not-for-diagnostic-use notice, patient/study fields as given, the operating thresholds, the
method's limits and the model card. Then one page per image: original, overlay, probabilities and
faithfulness. Text is placed with ``parse_math=False`` so header-derived strings are printed literally.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np

from medclass.fileio import atomic_write_bytes
from medclass.report.clinician import (
    NOT_FOR_DIAGNOSIS,
    ClinicianReport,
    ImageSection,
    fmt,
    method_limits,
    operating_point_for,
    out_of_scope_text,
    region_lines,
    threshold_text,
)

A4 = (8.27, 11.69)
_LEFT = 0.07
_WRAP = 100


class _Writer:
    """Places wrapped lines of text top-down on a figure."""

    def __init__(self, fig, top: float = 0.95) -> None:
        self.fig = fig
        self.y = top

    def line(
        self,
        text: str,
        *,
        size: float = 9.5,
        weight: str = "normal",
        color: str = "black",
        wrap: int = _WRAP,
        gap: float = 0.004,
    ) -> None:
        for chunk in textwrap.wrap(text, wrap) or [""]:
            self.fig.text(
                _LEFT, self.y, chunk, fontsize=size, weight=weight, color=color, va="top", parse_math=False
            )
            self.y -= size / 72 / A4[1] * 1.35
        self.y -= gap


def _banner(fig) -> None:
    from matplotlib.patches import Rectangle

    fig.patches.append(
        Rectangle((0.04, 0.925), 0.92, 0.06, transform=fig.transFigure, color="#b00020", zorder=0)
    )
    for i, chunk in enumerate(textwrap.wrap(NOT_FOR_DIAGNOSIS, 95)):
        fig.text(
            0.06,
            0.975 - i * 0.016,
            chunk,
            fontsize=9,
            weight="bold",
            color="white",
            va="top",
            parse_math=False,
        )


def _decode(png: bytes) -> np.ndarray:
    from PIL import Image as PILImage

    return np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB"))


def _summary_page(report: ClinicianReport):
    from matplotlib.figure import Figure

    fig = Figure(figsize=A4)
    _banner(fig)
    w = _Writer(fig, top=0.90)
    w.line(f"Saliency report — {report.report_id}", size=15, weight="bold", gap=0.01)
    w.line(f"Generated {report.generated} by {report.model.software or 'medclass'}", size=8.5, color="#555")
    for key, value in report.patient.items():
        w.line(f"{key}: {value}")
    w.y -= 0.01
    w.line("Operating threshold", size=12, weight="bold")
    classes = report.images[0].classes if report.images else ()
    for c in classes:
        w.line("• " + threshold_text(operating_point_for(report, c), c))
    w.y -= 0.01
    w.line("About the method and its limits", size=12, weight="bold")
    w.line(method_limits(report.method, report.layer, report.grid, report.model.input_size))
    w.y -= 0.01
    card = report.model
    w.line("Model card", size=12, weight="bold")
    w.line(f"Architecture: Inception V3 (timm), {card.input_size}×{card.input_size} input, {card.task}")
    if card.positive_class:
        w.line(f"Positive class: {card.positive_class}")
    w.line(f"Training data: {card.training_data or 'not recorded'}")
    w.line(f"Model weights sha256: {card.model_sha256 or 'not recorded'}")
    w.line(f"Intended use: {card.intended_use}")
    if card.randomisation_check is not None:
        w.line(
            "Sanity check (Adebayo et al. 2018): Spearman ρ between maps of this model and of a copy with "
            f"re-initialised top layers: {fmt(card.randomisation_check)} (low = maps depend on training)"
        )
    w.line(f"Images in this report: {len(report.images)}")
    return fig


def _image_page(report: ClinicianReport, index: int, sec: ImageSection):
    from matplotlib.figure import Figure

    fig = Figure(figsize=A4)
    _banner(fig)
    w = _Writer(fig, top=0.90)
    w.line(f"Image {index}: {sec.description} ({sec.image_id})", size=12, weight="bold")
    if sec.gate_reason:
        w.line(out_of_scope_text(sec.gate_reason), size=11, weight="bold", color="#b00020")
    pictures = [
        (sec.original_png, "Original (windowed)"),
        (sec.overlay_png, f"Saliency: {sec.explained_class}"),
    ]
    if sec.regions_png:
        pictures.append((sec.regions_png, "Regions"))
    width = 0.9 / len(pictures)
    for k, (png, title) in enumerate(pictures):
        ax = fig.add_axes((0.05 + k * width, 0.45, width - 0.02, 0.40))
        ax.imshow(_decode(png), interpolation="antialiased")
        ax.set_title(title, fontsize=9, parse_math=False)
        ax.set_axis_off()
    w.y = 0.42
    w.line(
        f"Method {report.method}, layer {report.layer}"
        + ("" if report.top_percent is None else f"; white outline: top {report.top_percent:g}% of the map"),
        size=9,
    )
    w.line("Class probabilities", size=11, weight="bold")
    for name, p in zip(sec.classes, sec.probabilities, strict=True):
        op = operating_point_for(report, name)
        call = "" if op is None else (" — above threshold" if p >= op.threshold else " — below threshold")
        thr = "threshold not evaluated" if op is None else f"threshold {op.threshold:.3f}"
        w.line(
            f"{name}: {p:.3f} ({thr}){call}", weight="bold" if call.endswith("above threshold") else "normal"
        )
    if sec.faithfulness_metric:
        w.line(f"Faithfulness ({sec.faithfulness_metric}): {fmt(sec.faithfulness)}", weight="bold")
        w.line(sec.faithfulness_meaning, size=8.5, color="#333")
    for text in region_lines(sec, report.region_threshold):
        w.line(text, size=8.5)
    return fig


def render_pdf(report: ClinicianReport) -> bytes:
    """The report as PDF bytes (A4, one summary page, then one page per image)."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    buf = io.BytesIO()
    with (
        matplotlib.rc_context({"pdf.fonttype": 42}),
        PdfPages(
            buf,
            metadata={
                "Title": f"Saliency report {report.report_id} - not for diagnostic use",
                "Creator": "medclass",
            },
        ) as pdf,
    ):
        pdf.savefig(_summary_page(report))
        for i, sec in enumerate(report.images):
            pdf.savefig(_image_page(report, i + 1, sec))
    return buf.getvalue()


def write_pdf(report: ClinicianReport, path: str | Path, *, private: bool = False) -> Path:
    """Write :func:`render_pdf` atomically to ``path`` (owner-only when ``private``); returns the path."""
    atomic_write_bytes(path, render_pdf(report), private=private)
    return Path(path)
