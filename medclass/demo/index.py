"""The demo's ``index.html``: one self-contained page from plain data (the ``demo.json`` dict).

Every string is HTML-escaped; every link is relative to the page's folder and percent-encoded, so the folder
can be moved or zipped. No scripts, no external resources.
"""

from __future__ import annotations

import html
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from medclass.fileio import atomic_write_text
from medclass.report.html import CSS


def hardware() -> dict[str, Any]:
    """CPU model, cores usable by this process, memory, accelerator and library versions (no host name)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except (OSError, ValueError, IndexError):
        pass
    out: dict[str, Any] = {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": usable,
        "logical_cpus": os.cpu_count(),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    try:
        import timm
        import torch

        out["torch"] = torch.__version__
        out["timm"] = timm.__version__
        out["torch_threads"] = torch.get_num_threads()
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return out


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(rel: str) -> str:
    """A relative link, percent-encoded (never absolute, never a scheme)."""
    rel = rel.replace(os.sep, "/").lstrip("/")
    return html.escape(quote(rel, safe="/._-~"), quote=True)


def _num(x: Any, fmt: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, fmt)


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def _table(
    rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None, numeric: Sequence[int] = ()
) -> str:
    parts = ["<table>"]
    if header:
        parts.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = "".join(
            f"<td class=n>{_e(c)}</td>" if i in numeric else f"<td>{_e(c)}</td>" for i, c in enumerate(row)
        )
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def _links(items: Iterable[tuple[str, str]]) -> str:
    lis = [f'<li><a href="{_href(rel)}">{_e(label)}</a></li>' for label, rel in items]
    return "<ul>" + "\n".join(lis) + "</ul>" if lis else "<p>none</p>"


_STAGE_NAMES = {
    "data": "generate DICOM data",
    "manifest": "manifest build",
    "train": "train",
    "evaluate": "evaluate",
    "explain": "explain (clinician reports, DICOM)",
    "localisation": "Grad-CAM hit rate and regions (test + held-out)",
    "index": "index page",
}


def _regions_table(reg: Mapping[str, Any]) -> str:
    """Pointing game and box IoU of the saliency regions on test and held-out lesions, beside chance."""
    if not reg:
        return ""
    rows = []
    for name, key in (("test split", "test"), ("held-out set (another seed)", "heldout")):
        s = reg.get(key)
        if s:
            hit, ch = s["iou_hit_rate"], s["iou_hit_rate_chance"]
            rows.append((name, s["n"], f"{_pct(s['pointing'])} ({_pct(s['pointing_chance'])})",
                         f"{_num(s['mean_iou'])} ({_num(s['mean_iou_chance'])})",
                         *(f"{_pct(hit[k])} ({_pct(ch[k])})" for k in ("0.1", "0.3", "0.5"))))  # fmt: skip
    head = (f"<p><b>Saliency regions</b> (connected areas of the map ≥ {_e(reg.get('threshold'))} × its peak; "
            f"threshold chosen on {_e(reg.get('threshold_source', ''))}): pointing game (map maximum inside the "
            "lesion disc) and IoU of the top region's box with the lesion's box, the CheXlocalize way; chance "
            "in brackets (a uniformly random point; the same box at a uniformly random place). A region is "
            "where the map is high, not a segmentation of the lesion.</p>")  # fmt: skip
    return head + _table(rows, ["images", "n", "pointing game", "mean IoU", "IoU ≥ 0.1", "IoU ≥ 0.3", "IoU ≥ 0.5"],
                         numeric=(1,))  # fmt: skip


def render_index(doc: Mapping[str, Any]) -> str:
    """The page's HTML for a ``demo.json`` dict (see :func:`medclass.cli.demo`)."""
    p = doc.get("profile", {})
    hw = doc.get("hardware", {})
    ds = doc.get("dataset", {})
    loc = doc.get("localisation", {})
    auc = doc.get("auc", {})
    seconds: Mapping[str, float] = doc.get("seconds", {})
    body: list[str] = []
    body.append("<h1>medclass demo</h1>")
    body.append(
        f"<p>Profile <b>{_e(p.get('name', ''))}</b> ({_e(p.get('description', ''))}), seed {_e(doc.get('seed', ''))}."
        " Everything below ran offline on generated data.</p>"
    )
    body.append(
        '<p class="warn"><b>Synthetic data, random-init model, not for diagnosis.</b> The chest radiographs are '
        "phantoms with a drawn focal opacity; no pretrained weights were available offline, so Inception V3 "
        "(with its auxiliary head) was trained from random initialisation. The numbers show that the pipeline "
        "works end to end, not how a model would do on patients.</p>"
    )
    for w in doc.get("warnings", []):
        body.append(f'<p class="warn">{_e(w)}</p>')

    # results
    body.append("<h2>Results</h2>")
    rows = []
    for level, a in auc.items():
        rows.append((f"{level} level", a.get("n_test", ""), _num(a.get("auc")),
                     f"{_num(a.get('ci_low'))}–{_num(a.get('ci_high'))}",
                     f"{_num(a.get('delong_low'))}–{_num(a.get('delong_high'))}",
                     _num(a.get("threshold")), _num(a.get("sensitivity")), _num(a.get("specificity"))))  # fmt: skip
    main: Mapping[str, Any] = auc.get("image") or next(iter(auc.values()), {})
    if main:
        body.append(
            f'<p class="big">Test AUC {_num(main.get("auc"))} (95% CI {_num(main.get("ci_low"))}–'
            f"{_num(main.get('ci_high'))}); Grad-CAM hit rate {_pct(loc.get('hit_rate'))} "
            f"({_e(loc.get('n', 0))} test positives)</p>"
        )
    body.append(_table(rows, ["level", "test n", "AUC (opacity)", "95% CI (bootstrap)", "95% CI (DeLong)",
                              "threshold (from val)", "sensitivity", "specificity"], numeric=(1, 2, 5, 6, 7)))  # fmt: skip
    body.append(
        "<p>The decision threshold was chosen on the validation split (Youden) and applied unchanged to the "
        "test split. Patients never straddle splits.</p>"
    )
    grid = loc.get("grid") or ["?", "?"]
    tol = loc.get("tolerance_px") or [None, None]
    body.append(
        f"<p><b>Grad-CAM hit rate</b>: fraction of test-split images with an opacity whose Grad-CAM maximum "
        f"(method {_e(loc.get('method', ''))}, layer {_e(loc.get('layer', ''))}, a {_e(grid[0])}×{_e(grid[1])} "
        f"grid at the input), mapped back to the original pixels, lies {_e(loc.get('tolerance_rule', ''))}: "
        f"<b>{_pct(loc.get('hit_rate'))}</b>. One cell is {_num(tol[0], '.0f')}–{_num(tol[1], '.0f')} original "
        f"pixels here. Stricter: within half a cell {_pct(loc.get('half_cell_rate'))}, inside the lesion disc "
        f"itself {_pct(loc.get('strict_rate'))}. Chance (a peak drawn uniformly over the image, same rule): "
        f"{_pct(loc.get('chance_rate'))}. A model trained from scratch for a few minutes localises coarsely; "
        f'per image: <a href="localisation.json">localisation.json</a>.</p>'
    )
    body.append(_regions_table(loc.get("regions") or {}))

    # outputs
    body.append("<h2>Outputs</h2>")
    body.append(_links([("Evaluation report (ROC, PR, calibration, confusion, subgroups)", "evaluation/report.html"),
                        ("metrics.json", "evaluation/metrics.json"),
                        ("predictions.csv (val and test)", "evaluation/predictions.csv")]))  # fmt: skip
    reports = list(doc.get("clinician_reports", []))
    body.append("<h3>Clinician reports (Grad-CAM)</h3>")
    if doc.get("explain_index"):
        body.append(
            f'<p><a href="{_href(doc["explain_index"])}">all explained cases (explain/index.html)</a></p>'
        )
    body.append(_links((r, r) for r in reports))
    dicoms = list(doc.get("dicom_outputs", []))
    body.append("<h3>DICOM outputs (Secondary Capture overlays)</h3>")
    body.append(_links((r, r) for r in dicoms))
    body.append("<h3>Training and data</h3>")
    body.append(_links([("training metrics per epoch (metrics.csv)", "run/metrics.csv"),
                        ("resolved training settings (config.yaml)", "run/config.yaml"),
                        ("manifest (patient split)", "manifest.csv"),
                        ("generated labels (labels.csv)", "data/labels.csv"),
                        ("lesion positions (lesions.json)", "data/lesions.json"),
                        ("everything on this page as JSON (demo.json)", "demo.json")]))  # fmt: skip

    # what ran
    body.append("<h2>What ran</h2>")
    splits = doc.get("splits", {})
    body.append(_table(
        [(s, v.get("patients", ""), v.get("images", ""), v.get("opacity", 0), v.get("normal", 0))
         for s, v in sorted(splits.items(), key=lambda kv: ("train", "val", "test").index(kv[0])
                            if kv[0] in ("train", "val", "test") else 9)],
        ["split", "patients", "images", "opacity", "normal"], numeric=(1, 2, 3, 4)))  # fmt: skip
    body.append(_table([
        ("images", f"{ds.get('images', '')} DICOM files of {ds.get('patients', '')} patients "
                   f"({ds.get('positives', '')} with an opacity)"),
        ("photometric", ds.get("photometric", "")),
        ("bits stored", ds.get("bits", "")),
        ("transfer syntaxes", ds.get("syntaxes", "")),
        ("sizes (cols×rows)", ds.get("sizes", "")),
        ("lesion radius", ds.get("lesion_radius", "")),
        ("model", "timm inception_v3 with auxiliary head, random init (no weights offline)"),
        ("input size", f"{p.get('image_size', '')} px"),
        ("epochs / batch / lr", f"{p.get('epochs', '')} / {p.get('batch_size', '')} / {p.get('lr', '')}"),
        ("transfer mode", f"{p.get('mode', '')} (backbone lr × {p.get('backbone_lr_scale', '')})"),
        ("training device", doc.get("device", "")),
        ("malloc", doc.get("malloc", "")),
    ], ["", ""]))  # fmt: skip
    total = sum(seconds.values())
    body.append("<h3>Time per stage</h3>")
    body.append(_table([(_STAGE_NAMES.get(k, k), f"{s:.1f}") for k, s in seconds.items()]
                       + [("total (before this page)", f"{total:.1f}")], ["stage", "seconds"], numeric=(1,)))  # fmt: skip
    body.append("<h3>Hardware</h3>")
    cores = f"{hw.get('cores', '')} usable of {hw.get('logical_cpus', '')} logical CPUs"
    body.append(_table([
        ("CPU", hw.get("cpu", "")), ("cores", cores), ("memory", hw.get("memory", "")),
        ("GPU", hw.get("gpu") or "none used"), ("OS", hw.get("os", "")),
        ("software", f"Python {hw.get('python', '')}, torch {hw.get('torch', '')} "
                     f"({hw.get('torch_threads', '')} threads), timm {hw.get('timm', '')}"),
    ], ["", ""]))  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>medclass demo</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_index(path: str | os.PathLike[str], doc: Mapping[str, Any]) -> Path:
    """Write :func:`render_index` of ``doc`` to ``path`` atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, render_index(doc))
    return path
