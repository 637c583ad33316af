"""What ``medclass explain`` writes once every image is explained: one clinician report per study (HTML,
and PDF unless ``--no-pdf``) and the run's tables (``explanations.json``, ``explanations.csv``,
``index.html``). Plain data in, files out; the per-image outputs (overlays, DICOM) are written by
:mod:`medclass.explain.runner` as each image is explained.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medclass.fileio import atomic_write_text, write_csv


def write_reports(
    reports: Sequence[Any], out: Path, *, pdf: bool, private: bool
) -> Iterator[tuple[str, BaseException]]:
    """Write ``<report_id>_report.html`` (and ``.pdf``) of each :class:`~medclass.report.clinician.ClinicianReport`;
    ``private`` (reports with names and IDs) keeps them owner-only (0600). Yields ``(report_id, exception)``
    for each report that could not be written, and goes on with the next."""
    from medclass.report.clinician import render_html
    from medclass.report.clinician_pdf import write_pdf

    for report in reports:
        try:
            atomic_write_text(out / f"{report.report_id}_report.html", render_html(report), private=private)
            if pdf:
                write_pdf(report, out / f"{report.report_id}_report.pdf", private=private)
        except Exception as exc:  # one study's report: the caller records it and goes on
            yield report.report_id, exc


def write_tables(out: Path, doc: dict[str, Any], *, private: bool) -> None:
    """``explanations.json`` (``doc``), ``explanations.csv`` (one row per image of ``doc["images"]``, the
    nested ``regions`` list left to the JSON) and ``index.html`` (images, refused images and errors)."""
    from medclass.report.clinician import render_index

    rows = doc["images"]
    atomic_write_text(
        out / "explanations.json",
        json.dumps(doc, indent=2, allow_nan=False, default=lambda _: None) + "\n",
        private=private,
    )
    fields = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "regions"] or ["image_id"]
    write_csv(out / "explanations.csv", rows, fields, private=private)
    atomic_write_text(
        out / "index.html",
        render_index(rows, doc["errors"], doc["method"], doc["layer"], refused=doc["refused"]),
    )
