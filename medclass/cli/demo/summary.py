"""What ``medclass demo`` reports: data-set facts, the Grad-CAM localisation stage, ``demo.json`` +
``index.html``, and the closing summary on the terminal."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def dataset_facts(ds: Any) -> dict[str, Any]:
    from collections import Counter

    recs = ds.records
    photometric = Counter(r.photometric for r in recs)
    bits = Counter(r.bits_stored for r in recs)
    syntaxes = Counter(r.transfer_syntax for r in recs)
    sizes = Counter(f"{r.cols}×{r.rows}" for r in recs)
    return {
        "images": len(recs),
        "patients": len(ds.patients),
        "positives": sum(r.label == "opacity" for r in recs),
        "photometric": ", ".join(f"{k} {v}" for k, v in sorted(photometric.items())),
        "bits": ", ".join(f"{k}-bit {v}" for k, v in sorted(bits.items())),
        "syntaxes": ", ".join(f"{k} {v}" for k, v in sorted(syntaxes.items())),
        "sizes": ", ".join(f"{k} {v}" for k, v in sorted(sizes.items())),
        "lesion_radius": _range(r.lesion.r for r in recs if r.lesion is not None),
        "seconds": ds.seconds,
    }


def _range(values: Any) -> str:
    v = list(values)
    return f"{min(v):.0f}–{max(v):.0f} px" if v else "n/a"


def localise(console: Any, checkpoint: Path, manifest: Path, data: Path, lesions: Path, profile: Any,
              positive: str, out: Path, progress: bool, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from medclass.demo.localisation import grad_cam_hits
    from medclass.fileio import atomic_write_text

    with Progress(TextColumn("  Grad-CAM"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not progress) as bar:  # fmt: skip
        task = bar.add_task("cam", total=None)

        def on_image(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        loc = grad_cam_hits(checkpoint, manifest, lesions, data_root=data, positive_class=positive,
                            layer=profile.cam_layer, method=profile.cam_method, on_image=on_image)  # fmt: skip
    result = loc.to_dict() | {"regions": _regions(console, checkpoint, manifest, data, lesions, profile, positive,
                                                  out, seed)}  # fmt: skip
    atomic_write_text(out / "localisation.json", json.dumps(result, indent=1) + "\n")
    console.print(
        f"  Grad-CAM peak within the lesion + 1 cell on {sum(h.hit for h in loc.hits)}/{loc.n} test positives "
        f"({_pct(loc.hit_rate)}; chance {_pct(loc.chance_rate)}); within + ½ cell {_pct(loc.half_cell_rate)}; "
        f"strictly inside the disc {_pct(loc.strict_rate)}; {loc.method} at {loc.layer} "
        f"({loc.grid[0]}×{loc.grid[1]} grid, cell {loc.tolerance_px[0]:.0f}–{loc.tolerance_px[1]:.0f} px)"
    )
    return result


def _regions(console: Any, checkpoint: Path, manifest: Path, data: Path, lesions: Path, profile: Any,
             positive: str, out: Path, seed: int) -> dict[str, Any]:  # fmt: skip
    """Regions measured on the test split and on a held-out set generated here (another seed)."""
    from medclass.demo.regions import measure_regions
    from medclass.synth import generate_cxr_dataset

    heldout = generate_cxr_dataset(out / "heldout", n_patients=max(20, profile.n_patients // 6),
                                   images_per_patient=(1, 1), positive_fraction=1.0, seed=seed + 1000,
                                   sizes=profile.sizes, lesion_contrast=profile.lesion_contrast)  # fmt: skip
    reg = measure_regions(checkpoint, manifest, lesions, data_root=data, heldout_lesions_json=heldout.lesions_json,
                          positive_class=positive, layer=profile.cam_layer, method=profile.cam_method)  # fmt: skip
    console.print(f"  regions at {reg.threshold:g} × peak (chosen on {reg.threshold_source}):")
    for name, sc in (("test", reg.test), ("held-out", reg.heldout)):
        if sc is not None:
            console.print("    " + region_line(name, sc.to_dict()))
    return reg.to_dict()


def region_line(name: str, s: dict[str, Any]) -> str:
    """One line of region scores beside chance (``LocalisationScores.to_dict()``)."""
    hit, ch = s["iou_hit_rate"], s["iou_hit_rate_chance"]
    return (f"{name} (n={s['n']}): pointing game {_pct(s['pointing'])} (chance {_pct(s['pointing_chance'])}); "
            f"box IoU mean {s['mean_iou']:.2f} (chance {s['mean_iou_chance']:.2f}); IoU ≥ 0.1/0.3/0.5 "
            f"{'/'.join(_pct(hit[k]) for k in ('0.1', '0.3', '0.5'))} "
            f"(chance {'/'.join(_pct(ch[k]) for k in ('0.1', '0.3', '0.5'))})")  # fmt: skip


def _pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.0f}%"


def write_demo_index(out: Path, profile: Any, args: argparse.Namespace, state: dict[str, Any],
                 seconds: dict[str, float]) -> None:  # fmt: skip
    from medclass.demo.index import hardware, write_index
    from medclass.fileio import atomic_write_text

    explain_dir = out / "explain"
    reports = [p for p in _files(explain_dir, (".html", ".pdf")) if p.name != "index.html"]
    dicoms = [p for p in _files(explain_dir, (".dcm",)) if _is_dicom(p)]
    dicoms += [p for p in _files(explain_dir, ("",)) if _is_dicom(p)]
    doc = {
        "profile": profile.as_dict(),
        "seed": args.seed,
        "device": args.device,
        "hardware": hardware(),
        "malloc": state.get("malloc", ""),
        "dataset": state.get("dataset", {}),
        "splits": state.get("splits", {}),
        "seconds": seconds,
        "auc": state.get("auc", {}),
        "localisation": {k: v for k, v in state.get("localisation", {}).items() if k != "images"},
        "explained": state.get("explained", []),
        "clinician_reports": [p.relative_to(out).as_posix() for p in reports],
        "explain_index": "explain/index.html" if (explain_dir / "index.html").is_file() else "",
        "dicom_outputs": [p.relative_to(out).as_posix() for p in dicoms],
        "warnings": state.get("warnings", []),
    }
    atomic_write_text(out / "demo.json", json.dumps(doc, indent=1, default=str) + "\n")
    write_index(out / "index.html", doc)


def print_summary(
    console: Any, out: Path, state: dict[str, Any], seconds: dict[str, float], total: float
) -> None:
    from rich.table import Table

    table = Table(title="medclass demo", show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for key, s in seconds.items():
        table.add_row(key, f"{s:.1f}")
    table.add_row("total", f"{total:.1f}", style="bold")
    console.print(table)
    for level, a in state.get("auc", {}).items():
        if a.get("auc") is not None:
            console.print(
                f"test AUC ({level} level, n={a['n_test']}): {a['auc']:.3f} "
                f"[95% CI {_f(a['ci_low'])}–{_f(a['ci_high'])}]"
            )
    loc = state.get("localisation", {})
    console.print(
        f"Grad-CAM hit rate: {_pct(loc.get('hit_rate'))} of {loc.get('n', 0)} test positives "
        f"(peak within the lesion + 1 CAM cell; chance {_pct(loc.get('chance_rate'))})"
    )
    regions = loc.get("regions") or {}
    for name, key in (("test", "test"), ("held-out", "heldout")):
        if regions.get(key):
            console.print(
                f"Grad-CAM regions at {regions['threshold']:g} × peak, " + region_line(name, regions[key])
            )
    for w in state.get("warnings", []):
        console.print(f"[yellow]warning: {w}[/yellow]")
    console.print(f"[bold]open {out / 'index.html'}[/bold]")


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False
