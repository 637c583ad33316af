"""Hardening: files others open. CSV cells are formula-safe; HTML escapes every string from a file or manifest.

Planted: DICOM header values (BodyPartExamined ``<script>``, SeriesDescription / StudyDescription
``=cmd|' /C calc'!A0``), label names and an extra manifest column (``=HYPERLINK(...)``, ``@SUM``, ``+``,
``-``, tab, CR, ``<script>``), image file names starting with ``=`` / ``@``. Then every command that
writes a CSV or HTML runs on them: ``manifest build``, ``evaluate`` (checkpoint + manifest),
``score``, ``explain`` (with ``--dicom`` and ``--include-phi``), ``inspect --errors-csv``; every CSV cell
(header included) and every HTML file under the outputs is checked.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclass.cli import main
from medclass.fileio import safe_cell, write_csv

pytestmark = pytest.mark.slow

SCRIPT = "<script>alert(1)</script>"
FORMULA = "=cmd|' /C calc'!A0"
HYPER = '=HYPERLINK("http://x","y")'
SITES = ["@SUM(1+1)", "+cmd", "-2+3", "\tTAB", SCRIPT, HYPER]
# labels: one formula, one script (both end up as class names, column names, figure captions...)
LABEL_A, LABEL_B = HYPER, SCRIPT
_DANGER = ("=", "+", "-", "@", "\t", "\r")


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def unsafe_cells(path: Path) -> list[tuple[int, str]]:
    """Cells of a CSV (header included) that a spreadsheet would run as a formula."""
    bad = []
    with open(path, encoding="utf-8", newline="") as fh:
        for i, row in enumerate(csv.reader(fh)):
            for cell in row:
                if cell.startswith(_DANGER) and not _is_number(cell):
                    bad.append((i, cell))
    return bad


def unescaped_html(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [m.group(0) for m in re.finditer(r"<script[^>]*>alert", text, re.I)]


# --- fileio unit checks --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value,expected",
    [
        ("=1+1", "'=1+1"),
        ("+cmd", "'+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("-0.5", "-0.5"),
        ("+3", "+3"),
        ("1e-3", "1e-3"),
        ("plain", "plain"),
        (0.25, 0.25),
        (-1, -1),
        (None, None),
    ],
)
def test_safe_cell(value, expected):
    assert safe_cell(value) == expected


def test_restore_cell_undoes_safe_cell():
    from medclass.fileio import restore_cell

    for v in ["=1+1", "+ve", "-ve", "@x", "\tx", "plain", "'quoted", "-0.5", "'", ""]:
        assert restore_cell(str(safe_cell(v))) == v


def test_write_csv_neutralises_header_and_cells(tmp_path):
    out = tmp_path / "x.csv"
    write_csv(out, [{"=evil": HYPER, "ok": "-1+2", "n": -3.5}], ["=evil", "ok", "n"])
    assert unsafe_cells(out) == []
    rows = list(csv.reader(out.open()))
    assert rows[1] == ["'" + HYPER, "'-1+2", "-3.5"]


# --- the world: planted values in DICOM headers, labels, a manifest column, file names ---------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    from medclass import checkpoint
    from medclass.model import create_model
    from medclass.preprocess import input_spec
    from medclass.synth import generate_cxr_dataset

    base = tmp_path_factory.mktemp("outputs")
    data = base / "data"
    ds = generate_cxr_dataset(
        data / "dcm",
        n_patients=8,
        images_per_patient=(1, 2),
        sizes=((96, 96),),
        transfer_syntaxes=("explicit",),
        seed=3,
        phi_markers={"BodyPartExamined": SCRIPT, "SeriesDescription": FORMULA, "StudyDescription": FORMULA},
    )
    # labels.csv keyed by patient, with planted labels and a planted extra column
    patients = ds.patients
    labels = base / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "label", "site"])
        for i, p in enumerate(patients):
            w.writerow([p, LABEL_A if i % 2 else LABEL_B, SITES[i % len(SITES)]])
    manifest = base / "manifest.csv"
    code = main(["manifest", "build", "--dicom-tree", str(data / "dcm"), "--labels-csv", str(labels),
                 "--keep-columns", "site", "--data-root", str(data), "--out", str(manifest),
                 "--val", "0.3", "--test", "0.3", "--seed", "1"])  # fmt: skip
    assert code == 0
    # PNG files whose names are formulas (score/inspect put file names in cells)
    pngs = data / "png"
    pngs.mkdir()
    for i, name in enumerate(["=1+1.png", "@SUM(A1).png", "+x.png", "-y.png"]):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64), dtype=np.uint8)).save(pngs / name)
    (pngs / "=cmd.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)  # an error row

    from medclass.manifest import load_manifest

    classes = load_manifest(manifest, data).classes
    torch.manual_seed(0)
    model = create_model(len(classes), image_size=75).eval()
    meta = {"classes": classes, "task": "multiclass", "positive_class": classes[1],  # planted names tell nothing
            "input": dataclasses.asdict(input_spec("inception_v3", image_size=75)),
            "window": "auto", "fit": "letterbox", "seed": 0, "manifest_sha256": "0" * 64,
            "intended_use": SCRIPT}  # fmt: skip
    checkpoint.save(base / "ck", model, meta)
    return {"base": base, "data": data, "manifest": manifest, "ckpt": base / "ck", "classes": classes,
            "dicoms": sorted((data / "dcm").rglob("i*")), "pngs": pngs}  # fmt: skip


def _check_tree(folder: Path) -> tuple[int, int]:
    n_csv = n_html = 0
    for f in sorted(folder.rglob("*")):
        if f.suffix == ".csv":
            n_csv += 1
            assert unsafe_cells(f) == [], f
        if f.suffix in (".html", ".htm"):
            n_html += 1
            assert unescaped_html(f) == [], f
    return n_csv, n_html


def test_manifest_build_neutralises_cells(world):
    m = world["manifest"]
    assert unsafe_cells(m) == []
    text = m.read_text()
    assert "'" + HYPER.replace('"', '""') in text or "'" + HYPER in text
    assert "'@SUM(1+1)" in text


def test_manifest_round_trip_keeps_planted_values(world):
    """A neutralised cell reads back as the value the user wrote (no stray apostrophe in class names)."""
    from medclass.manifest import load_manifest

    m = load_manifest(world["manifest"], world["data"])
    assert not any(c.startswith("'") for c in m.classes), m.classes
    assert set(m.classes) == {LABEL_A, LABEL_B}
    sites = {r.extra.get("site") for r in m.rows}
    # manifest build strips the labels CSV's cells ("\tTAB" → "TAB"); everything else comes back as planted
    assert sites <= {v.strip() for v in SITES} and "'" not in "".join(v[:1] for v in sites), sites
    assert len(sites) == len(SITES), sites


def test_evaluate_outputs(world, capsys):
    out = world["base"] / "ev"
    code = main(["evaluate", "--checkpoint", str(world["ckpt"]), "--manifest", str(world["manifest"]),
                 "--data-root", str(world["data"]), "--out", str(out), "--bootstrap", "20", "--by", "site",
                 "--level", "image"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    n_csv, n_html = _check_tree(out)
    assert (out / "predictions.csv").is_file() and (out / "report.html").is_file()
    assert n_csv >= 1 and n_html >= 1
    html_text = (out / "report.html").read_text()
    assert "&lt;script&gt;" in html_text  # the planted label/site is shown, escaped


def test_score_outputs(world, capsys):
    out = world["base"] / "scores.csv"
    code = main(["score", "--checkpoint", str(world["ckpt"]), str(world["data"] / "dcm"), str(world["pngs"]),
                 "--out", str(out), "--workers", "0", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code in (0, 3), err
    for f in out.parent.glob("scores*.csv"):
        assert unsafe_cells(f) == [], f
    text = out.read_text()
    assert "=1+1.png" in text  # the file is there, as a neutralised cell (path is absolute here)


def test_score_relative_paths_from_cwd(world, capsys, monkeypatch):
    """Paths given relative to the cwd: the cell itself starts with '=' unless neutralised."""
    monkeypatch.chdir(world["pngs"])
    out = world["base"] / "scores_rel.csv"
    code = main(["score", "--checkpoint", str(world["ckpt"]), "=1+1.png", "@SUM(A1).png", "+x.png",
                 "--out", str(out), "--workers", "0", "--no-progress"])  # fmt: skip
    assert code in (0, 3), capsys.readouterr().err
    assert unsafe_cells(out) == []


def test_inspect_errors_csv(world, capsys, monkeypatch):
    monkeypatch.chdir(world["pngs"])
    out = world["base"] / "inspect_errors.csv"
    main(["inspect", "=cmd.dcm", "=1+1.png", "--errors-csv", str(out)])
    capsys.readouterr()
    assert out.is_file()
    assert unsafe_cells(out) == []


@pytest.mark.parametrize("include_phi", [False, True])
def test_explain_outputs(world, capsys, include_phi):
    out = world["base"] / f"explain{int(include_phi)}"
    args = ["explain", "--checkpoint", str(world["ckpt"]), *map(str, world["dicoms"][:2]),
            str(world["pngs"] / "=1+1.png"), "--out", str(out), "--dicom", "--faithfulness", "none"]  # fmt: skip
    if include_phi:
        args.append("--include-phi")
    code = main(args)
    err = capsys.readouterr().err
    assert code in (0, 3), err
    n_csv, n_html = _check_tree(out)
    assert n_csv >= 1 and n_html >= 2, sorted(p.name for p in out.iterdir())
    reports = [p for p in out.glob("*_report.html")]
    assert reports
    joined = "".join(p.read_text() for p in reports)
    assert "&lt;script&gt;" in joined  # BodyPartExamined is shown, escaped
    for j in out.glob("*.json"):
        json.loads(j.read_text())


def test_demo_index_escapes(tmp_path):
    """The demo's index page escapes every string of its ``demo.json`` (rendered from plain data)."""
    index = pytest.importorskip("medclass.demo.index")
    render = getattr(index, "render_index", None)
    if render is None:
        pytest.skip("medclass.demo.index has no render_index(doc)")
    x = SCRIPT
    doc = {
        "profile": {"name": x, "description": x, "image_size": x, "epochs": x, "batch_size": x, "lr": x,
                    "mode": x, "backbone_lr_scale": x},
        "seed": x, "warnings": [x], "device": x, "malloc": x,
        "hardware": {"cpu": x, "cores": x, "logical_cpus": x, "memory": x, "gpu": x, "os": x, "python": x,
                     "torch": x, "torch_threads": x, "timm": x},
        "dataset": {"images": x, "patients": x, "positives": x, "photometric": x, "bits": x, "syntaxes": x,
                    "sizes": x, "lesion_radius": x},
        "localisation": {"method": x, "layer": x, "grid": [x, x], "tolerance_rule": x, "n": x},
        "auc": {x: {"n_test": x}},
        "splits": {x: {"patients": x, "images": x, "opacity": x, "normal": x}},
        "clinician_reports": [x + ".html", 'a" onmouseover="alert(1)'],
        "dicom_outputs": [x],
        "explain_index": x,
        "seconds": {x: 1.0},
    }  # fmt: skip
    page = render(doc)
    assert not re.search(r"<script[^>]*>alert", page, re.I)
    assert 'onmouseover="alert' not in page
    assert "&lt;script&gt;" in page


def test_no_output_path_from_header_values(world):
    """Output file names never carry header/label strings (no '<', '=', '|' from planted values)."""
    for f in world["base"].rglob("*"):
        rel = f.relative_to(world["base"]).as_posix()
        if rel.startswith(("data/", "labels.csv")):
            continue
        assert "<script" not in f.name and "calc" not in f.name and "HYPERLINK" not in f.name, rel


def test_env_no_leftover_tmp_files(world):
    """No '.tmp' files from atomic writes are left behind in the outputs."""
    left = [p for p in world["base"].rglob("*.tmp")]
    assert left == [], left
    assert os.path.isdir(world["base"])


@pytest.mark.parametrize("label", ["+ve", "-ve", "=x", "@y"])
def test_manifest_formula_like_labels_round_trip(tmp_path, label):
    """write_manifest neutralises ``+ve``; load_manifest reads back ``+ve`` (not ``'+ve``)."""
    from medclass.manifest import load_manifest, write_manifest

    recs = [
        {"path": "a.png", "patient_id": "p1", "split": "train", "label": label, "site": "-ward"},
        {"path": "b.png", "patient_id": "p2", "split": "test", "label": "neg", "site": "'quoted"},
    ]
    f = tmp_path / "m.csv"
    write_manifest(f, recs)
    assert f"'{label}" in f.read_text()  # neutralised on disk
    m = load_manifest(f, tmp_path)
    assert sorted(m.classes) == sorted([label, "neg"])
    assert [r.label for r in m.rows] == [label, "neg"]
    assert [r.extra["site"] for r in m.rows] == ["-ward", "'quoted"]  # a real apostrophe stays


def test_synth_regeneration_drops_the_old_completion_marker(tmp_path, monkeypatch):
    """Regenerating into a folder that holds a finished set: a run that dies midway leaves no labels.csv."""
    from pathlib import Path

    from medclass.synth import generate_png_dataset

    out = tmp_path / "synth"
    generate_png_dataset(out, n_patients=2, images_per_patient=(1, 1), sizes=((64, 64),))
    assert (out / "labels.csv").is_file() and (out / "lesions.json").is_file()
    real_write = Path.write_bytes
    calls = []

    def dying_write(self, data):
        calls.append(self)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", dying_write)
    with pytest.raises(OSError):
        generate_png_dataset(out, n_patients=2, images_per_patient=(1, 1), sizes=((64, 64),), seed=1)
    assert not (out / "labels.csv").exists() and not (out / "lesions.json").exists()
