"""What ``medclass explain`` writes: reports that render (Chromium, pdftoppm), DICOM that validates
(dciodvfy, dcmdump), and no patient identifiers anywhere unless --include-phi."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from medclass import checkpoint
from medclass.cli import ExitCode, main
from medclass.model import MainLogits, create_model
from medclass.phi import pseudonym
from medclass.preprocess import input_spec
from medclass.report.clinician import (
    ClinicianReport,
    ImageSection,
    ModelCard,
    OperatingPoint,
    merge_evaluation,
    operating_points_from_meta,
    render_html,
    threshold_text,
)
from medclass.synth import generate_cxr_dataset

SIZE = 128
MARKERS = {
    "PatientName": "Zqxname^Markerjv",
    "PatientID": "ZQXIDMARK",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "ZQXACC",
}
# what must never leave (PatientID/AccessionNumber get a per-patient suffix from synth: prefixes suffice)
NEEDLES = ["Zqxname", "Markerjv", "ZQXIDMARK", "19010203", "ZQXACC"]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    msg = f"{tool} not installed (scripts/system-deps.sh installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {msg}", pytrace=False)
    pytest.skip(msg)


def _checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    model = create_model(2, image_size=SIZE)
    for bn in model.modules():  # BatchNorm statistics from random inputs: O(1) activations
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None
    model.train()
    with torch.no_grad():
        MainLogits(model)(torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
    model.eval()
    meta = {
        "classes": ["normal", "opacity"],
        "task": "multiclass",
        "input": dataclasses.asdict(input_spec(image_size=SIZE)),
        "window": "auto",
        "fit": "letterbox",
        "manifest": "synth_cxr.csv",
        "manifest_sha256": "0" * 64,
        "operating_point": {"opacity": {"threshold": 0.42, "sensitivity": 0.91, "specificity": 0.83}},
    }
    stem = folder / "ckpt" / "model"
    checkpoint.save(stem, model, meta)
    return stem


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("explain")
    data = generate_cxr_dataset(
        root / "data",
        n_patients=2,
        images_per_patient=(1, 2),
        sizes=((200, 176), (160, 208)),
        phi_markers=MARKERS,
        seed=3,
    )
    broken = root / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    stem = _checkpoint(root)
    base = ["-vv", "explain", "--checkpoint", str(stem), "--dicom"]
    deid = root / "deid"
    rc, logs = _run(
        [
            *base,
            str(root / "data"),
            str(broken),
            "--out",
            str(deid),
            "--sr",
            "--sanity-check",
            "--batch-size",
            "2",
        ]
    )
    phi = root / "phi"
    rc_phi, logs_phi = _run(
        [*base, str(root / "data"), "--out", str(phi), "--include-phi", "--faithfulness", "cam-mult"]
    )
    return dict(data=data, deid=deid, rc=rc, logs=logs, phi=phi, rc_phi=rc_phi, logs_phi=logs_phi)


def _texts(folder: Path, logs: str) -> dict[str, bytes]:
    """Everything a reader of ``folder`` could see: file names, raw bytes, PDF text, logs."""
    texts: dict[str, bytes] = {"<logs>": logs.encode(), "<names>": "\n".join(os.listdir(folder)).encode()}
    for path in folder.iterdir():
        texts[path.name] = path.read_bytes()
        if path.suffix == ".pdf" and shutil.which("pdftotext"):
            texts[path.name + ".txt"] = subprocess.run(
                ["pdftotext", str(path), "-"], capture_output=True, check=True
            ).stdout
    return texts


def _found(texts: dict[str, bytes]) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for name, blob in texts.items():
        for needle in NEEDLES:
            if needle.encode() in blob:
                hits.setdefault(needle, []).append(name)
    return hits


# --- the run ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_outputs_per_image_and_study(runs):
    out = runs["deid"]
    assert runs["rc"] == ExitCode.PARTIAL  # the broken file failed, the rest went through
    n = len(runs["data"].records)
    n_studies = len({r.study_uid for r in runs["data"].records})
    assert f"explained {n} image(s) in {n_studies} report(s), 1 failed" in runs["logs"]
    doc = json.loads((out / "explanations.json").read_text())
    assert (
        doc["method"] == "gradcam" and doc["layer"] == "Mixed_5d" and doc["grid"] == [13, 13]
    )  # fits 128 px
    assert doc["deidentified"] is True
    assert isinstance(doc["randomisation_check_spearman"], float)
    assert len(doc["images"]) == n and len(doc["errors"]) == 1
    assert doc["errors"][0]["kind"] and "where" not in doc["errors"][0]  # no paths when de-identified
    for row in doc["images"]:
        assert (out / row["overlay_png"]).is_file() and (out / row["report_html"]).is_file()
        assert (
            (out / row["report_pdf"]).is_file()
            and (out / row["dicom"]).is_file()
            and (out / row["sr"]).is_file()
        )
        assert row["prob:normal"] + row["prob:opacity"] == pytest.approx(1.0, abs=1e-5)
        assert row["faithfulness_metric"] == "road-morf" and np.isfinite(row["faithfulness"])
        assert row["image_id"].startswith("I-") and row["patient"].startswith("P-")
    assert len({r["study_id"] for r in doc["images"]}) == n_studies
    csv_text = (out / "explanations.csv").read_text()
    assert csv_text.splitlines()[0].startswith("image_id,source,frame,study_id,patient,explained_class")
    assert len(csv_text.splitlines()) == n + 1
    html = (out / doc["images"][0]["report_html"]).read_text()
    assert "NOT FOR DIAGNOSTIC USE" in html and "≥ 0.420" in html and "91.0%" in html and "83.0%" in html
    assert "8×8" not in html and "13×13 grid" in html  # the limits paragraph states this run's resolution
    assert html.count("data:image/png;base64,") == 2 * sum(
        r["report_html"] == doc["images"][0]["report_html"] for r in doc["images"]
    )


@pytest.mark.slow
def test_no_phi_anywhere_when_deidentified(runs):
    hits = _found(_texts(runs["deid"], runs["logs"]))
    assert hits == {}, f"identifiers leaked: {hits}"
    for dcm in runs["deid"].glob("*.dcm"):
        ds = pydicom.dcmread(dcm)
        assert str(ds.PatientName) in ("ANONYMIZED^", "ANONYMIZED") and ds.PatientID.startswith("P-")
        assert not ds.get("PatientBirthDate") and not ds.get("AccessionNumber")
        assert ds.PatientIdentityRemoved == "YES"
    ids = {pseudonym(r.patient_id) for r in runs["data"].records}
    assert {pydicom.dcmread(p).PatientID for p in runs["deid"].glob("*.dcm")} <= ids


@pytest.mark.slow
def test_include_phi_puts_identifiers_in(runs):
    assert runs["rc_phi"] == ExitCode.OK
    hits = _found(_texts(runs["phi"], runs["logs_phi"]))
    html_hits = {n for names in hits.values() for n in names if n.endswith(".html")}
    assert {"Zqxname", "ZQXIDMARK", "19010203", "ZQXACC"} <= set(hits), hits
    assert html_hits
    assert not any(n == "<names>" for names in hits.values() for n in names)  # never in file names
    if shutil.which("pdftotext"):
        assert any(n.endswith(".pdf.txt") for n in hits["ZQXIDMARK"])
    ds = pydicom.dcmread(next(runs["phi"].glob("*.dcm")))
    assert "Zqxname" in str(ds.PatientName) and ds.PatientID.startswith("ZQXIDMARK")


# --- the DICOM outputs as others read them ----------------------------------------------------------
@pytest.mark.slow
def test_dicom_outputs_validate_and_reference_the_source(runs):
    dciodvfy, dcmdump = need("dciodvfy"), need("dcmdump")
    sources = {r.sop_uid: r for r in runs["data"].records}
    for folder in (runs["deid"], runs["phi"]):
        files = sorted(folder.glob("*_saliency.dcm"))
        assert len(files) == len(sources)
        for path in files:
            res = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
            errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
            assert errors == [], f"{path.name}: {errors}"
            dump = subprocess.run([dcmdump, str(path)], capture_output=True, text=True)
            assert dump.returncode == 0 and "SecondaryCaptureImageStorage" in dump.stdout
            ds = pydicom.dcmread(path)
            ref = ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID
            assert ref in sources and ds.SourceImageSequence[0].ReferencedSOPInstanceUID == ref
            src = sources[ref]
            assert ds.StudyInstanceUID == src.study_uid  # kept: filed beside the original
            assert ds.SeriesInstanceUID != src.series_uid and ds.SOPInstanceUID != src.sop_uid
            assert ds.SeriesDescription == "medclass saliency (gradcam) — not for diagnostic use"
            assert ds.PhotometricInterpretation == "RGB" and ds.BitsAllocated == 8 and ds.SamplesPerPixel == 3
            assert (ds.Rows, ds.Columns) == (src.rows, src.cols)  # on the source's pixel grid
            assert ds.pixel_array.shape == (src.rows, src.cols, 3)
    srs = sorted(runs["deid"].glob("*_scores_sr.dcm"))
    assert len(srs) == len(sources) and not list(runs["phi"].glob("*_scores_sr.dcm"))
    for path in srs:
        res = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
        assert [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")] == []
        ds = pydicom.dcmread(path)
        assert ds.Modality == "SR" and ds.StudyInstanceUID in {r.study_uid for r in sources.values()}
        values = [
            float(i.MeasuredValueSequence[0].NumericValue) for i in ds.ContentSequence if i.ValueType == "NUM"
        ]
        assert len(values) == 2 and sum(values) == pytest.approx(1.0, abs=1e-3)


# --- the reports as others open them ---------------------------------------------------------------
def _chromium(html: Path, tmp: Path) -> tuple[Path, str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or need("chromium")
    shot = tmp / (html.stem + ".png")
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
        "--window-size=1200,1600", f"--screenshot={shot}", html.resolve().as_uri(),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return shot, res.stdout + res.stderr


def _console_errors(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "CONSOLE" in ln or "Uncaught" in ln or "Failed to load" in ln]


@pytest.mark.slow
def test_html_report_renders_in_chromium_without_console_errors(runs, tmp_path):
    from PIL import Image as PILImage

    report = next(runs["deid"].glob("*_report.html"))
    shot, log = _chromium(report, tmp_path)
    assert shot.is_file(), log[-2000:]
    pixels = np.asarray(PILImage.open(shot).convert("RGB"))
    assert pixels.std() > 10  # something was drawn
    assert ((pixels[..., 0] > 150) & (pixels[..., 1] < 40)).mean() > 0.005  # the red notice is visible
    assert _console_errors(log) == []
    # the check can fail: a page with a broken script and a missing image is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><img src='missing.png'><script>nosuchfunction()</script></body></html>")
    _, bad_log = _chromium(bad, tmp_path)
    assert _console_errors(bad_log), bad_log[-2000:]


@pytest.mark.slow
def test_pdf_report_converts_to_png_pages(runs, tmp_path):
    pdftoppm = need("pdftoppm")
    from PIL import Image as PILImage

    doc = json.loads((runs["deid"] / "explanations.json").read_text())
    for pdf_name in {r["report_pdf"] for r in doc["images"]}:
        n_images = sum(r["report_pdf"] == pdf_name for r in doc["images"])
        prefix = tmp_path / Path(pdf_name).stem
        subprocess.run([pdftoppm, "-r", "40", "-png", str(runs["deid"] / pdf_name), str(prefix)], check=True)
        pages = sorted(tmp_path.glob(prefix.name + "*.png"))
        assert len(pages) == 1 + n_images  # summary + one page per image
        for page in pages:
            assert np.asarray(PILImage.open(page).convert("L")).std() > 5
    if shutil.which("pdftotext"):
        text = subprocess.run(
            ["pdftotext", str(runs["deid"] / pdf_name), "-"], capture_output=True, text=True
        ).stdout
        assert "NOT FOR DIAGNOSTIC USE" in text and "saliency ≠ localisation" in text


# --- the report module on its own ------------------------------------------------------------------
def _section(description: str) -> ImageSection:
    png = b"\x89PNG\r\n\x1a\n"
    return ImageSection("I-1", description, png, png, ("normal", "opacity"), (0.3, 0.7), "opacity")


def test_report_escapes_header_strings_and_states_thresholds():
    evil = "<script>alert('x')</script>&"
    report = ClinicianReport(
        report_id="S-1",
        patient={"Patient name": evil},
        images=[_section(evil)],
        method="gradcam",
        layer="Mixed_7c",
        grid=(8, 8),
        operating_points=[OperatingPoint("opacity", 0.5, 0.9, 0.8, "test split")],
        model=ModelCard(model_sha256="ab" * 32),
    )
    html = render_html(report)
    assert "<script>" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in html
    assert "normal: no operating threshold — not evaluated" in html
    assert "found 90.0% of positive cases (sensitivity)" in html and "above threshold" in html
    assert "8×8 grid at 299×299" in html and "ab" * 32 in html
    assert "not evaluated" in threshold_text(None, "opacity")


def test_operating_points_from_meta_formats():
    assert operating_points_from_meta({}) == []
    one = operating_points_from_meta(
        {"operating_point": {"class": "p", "threshold": 0.3, "sensitivity": 0.8}}
    )
    assert one == [OperatingPoint("p", 0.3, 0.8, None, "")]
    per_class = operating_points_from_meta(
        {"operating_point": {"a": 0.2, "b": 0.7}, "metrics": {"b": {"sensitivity": 0.5, "specificity": 0.6}}}
    )
    assert per_class == [OperatingPoint("a", 0.2), OperatingPoint("b", 0.7, 0.5, 0.6)]


def test_operating_points_from_an_evaluate_metrics_file():
    doc = {
        "levels": {
            "image": {
                "n_test": 624,
                "classes": {
                    "pneumonia": {
                        "operating_point": {"threshold": 0.61, "sensitivity": 0.93, "specificity": 0.8}
                    }
                },
            }
        }
    }
    ops = operating_points_from_meta(merge_evaluation({"classes": ["normal", "pneumonia"]}, doc))
    assert ops == [OperatingPoint("pneumonia", 0.61, 0.93, 0.8, "the evaluation test split (624 images)")]
    assert merge_evaluation({"a": 1}, None) == {"a": 1}


# --- issue 20: traceable outputs, a layer that fits the input, small things ---------------------------------
@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict:
    """Three radiographs in three folders sharing one SOPInstanceUID (copies of an anonymised export),
    with different pixels; the checkpoint records a positive class."""
    root = tmp_path_factory.mktemp("twins")
    data = generate_cxr_dataset(
        root / "data", n_patients=1, images_per_patient=(1, 1), sizes=((160, 144),), seed=5
    )
    src = pydicom.dcmread(data.root / data.records[0].path)
    inputs = root / "inputs"
    for k, case in enumerate(("a", "b", "c")):
        ds = src.copy()
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        arr = ds.pixel_array.astype(np.int32)
        ds.PixelData = np.clip(np.roll(arr, 20 * k, axis=1), 0, None).astype(arr.dtype).tobytes()
        (inputs / case).mkdir(parents=True)
        ds.save_as(inputs / case / "img.dcm")
    stem = _checkpoint(root)
    checkpoint.update_meta(stem, {"positive_class": "opacity"})
    return {"root": root, "inputs": inputs, "stem": stem, "sop": str(src.SOPInstanceUID)}


@pytest.mark.slow
def test_duplicate_sop_uids_get_unique_outputs_that_name_their_source(twins):
    out = twins["root"] / "out"
    rc, logs = _run(["explain", "--checkpoint", str(twins["stem"]), str(twins["inputs"]), "--out", str(out),
                     "--faithfulness", "none", "--no-pdf"])  # fmt: skip
    assert rc == ExitCode.OK, logs
    assert {pydicom.dcmread(p).SOPInstanceUID for p in twins["inputs"].rglob("*.dcm")} == {twins["sop"]}
    doc = json.loads((out / "explanations.json").read_text())
    rows = doc["images"]
    assert sorted(r["source"] for r in rows) == ["a/img.dcm", "b/img.dcm", "c/img.dcm"]
    assert {r["frame"] for r in rows} == {0}
    assert len({r["image_id"] for r in rows}) == 3 and len({r["overlay_png"] for r in rows}) == 3
    overlays = {(out / r["overlay_png"]).read_bytes() for r in rows}
    assert len(overlays) == 3  # three different images, not one overlay written thrice
    header = (out / "explanations.csv").read_text().splitlines()[0]
    assert header.startswith("image_id,source,frame,study_id,patient")
    # the positive class is in the table's document and in the report's model card
    assert doc["positive_class"] == "opacity"
    html = (out / rows[0]["report_html"]).read_text()
    assert "Positive class" in html and "opacity" in html
    # the default layer fits the 128 px input: at least 7×7, not Mixed_7c's 2×2
    assert doc["layer"] == "Mixed_5d" and min(doc["grid"]) >= 7
    assert "saliency layer Mixed_5d: a 13×13 map at 128 px input" in logs


@pytest.mark.slow
def test_a_coarse_layer_by_hand_is_warned_about(twins):
    rc, logs = _run(["explain", "--checkpoint", str(twins["stem"]), str(twins["inputs"] / "a"), "--out",
                     str(twins["root"] / "out7c"), "--layer", "Mixed_7c", "--faithfulness", "none", "--no-pdf"])  # fmt: skip
    assert rc == ExitCode.OK, logs
    assert (
        "--layer Mixed_7c gives only a 2×2 saliency map at 128 px input; --layer Mixed_5d gives 13×13" in logs
    )


def test_explain_on_an_empty_folder_exits_1(tmp_path):
    (tmp_path / "empty").mkdir()
    rc, logs = _run(["explain", "--checkpoint", str(tmp_path / "none"), str(tmp_path / "empty"), "--out",
                     str(tmp_path / "o")])  # fmt: skip
    assert rc == ExitCode.ERROR and "no images found in" in logs


def test_explain_help_shows_percent_signs_once(capsys):
    assert main(["explain", "--help"]) == 0
    text = capsys.readouterr().out
    assert "top-k% region" in text and "top N% of the map" in text and "%%" not in text
