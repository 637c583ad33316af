"""One bad image never stops a run: per-image containment in score, explain, inspect and preview, a
series with one corrupt slice, and the mixed-folder acceptance case (CT slice, MR multi-frame,
radiograph, corrupt file)."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pydicom
import pytest
from test_score import make_checkpoint, read_scores

from medclass.cli import ExitCode, main


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", size=75)


@pytest.fixture
def ct_with_corrupt_slice(tmp_path, dicom_samples) -> tuple[Path, Path]:
    folder = tmp_path / "ct"
    folder.mkdir()
    for f in sorted((dicom_samples / "dcmqi_ct-3slice").glob("0*.dcm")):
        shutil.copy(f, folder / f.name)
    bad = folder / "02.dcm"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # header intact (grouped into the series), pixel data cut
    return folder, bad


def _score(ckpt: Path, paths: list[Path], out: Path, *extra: str) -> tuple[int, str]:
    args = ["score", "--checkpoint", str(ckpt), *map(str, paths), "--out", str(out), "--workers", "0"]
    return _run([*args, "--batch-size", "4", "--no-progress", *extra])


def test_score_series_with_corrupt_slice_scores_every_readable_slice(ckpt, ct_with_corrupt_slice, tmp_path):
    folder, bad = ct_with_corrupt_slice
    rc, _ = _score(ckpt, [folder], tmp_path / "s.csv")
    assert rc == ExitCode.PARTIAL
    rows = {Path(r["path"]).name: r for r in read_scores(tmp_path / "s.csv")}
    assert set(rows) == {"01.dcm", "02.dcm", "03.dcm"}
    assert not rows["01.dcm"]["error"] and not rows["03.dcm"]["error"] and rows["01.dcm"]["prob:NORMAL"]
    assert rows["02.dcm"]["error"].startswith("corrupt: ") and str(bad) in rows["02.dcm"]["error"]
    # the whole-volume slice policy keeps failing the series, naming the bad file
    rc, _ = _score(ckpt, [folder], tmp_path / "mf.csv", "--slice-policy", "max-foreground")
    assert rc == ExitCode.ERROR or rc == ExitCode.PARTIAL
    [row] = read_scores(tmp_path / "mf.csv")
    assert "max-foreground needs every slice" in row["error"] and str(bad) in row["error"]


# --- explain: the acceptance case and each stage failing for one image ------------------------------
@pytest.fixture
def mixed(tmp_path, dicom_samples) -> Path:
    """A CT slice, an MR multi-frame (enhanced MR, 10 frames), a radiograph (DX), a PNG and a corrupt file."""
    from pydicom.data import get_testdata_file

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(dicom_samples / "pydicom-data" / "emri_small.dcm", folder / "mr_multiframe.dcm")
    shutil.copy(dicom_samples / "highdicom" / "dx_image.dcm", folder / "radiograph.dcm")
    data = (folder / "ct.dcm").read_bytes()
    (folder / "corrupt.dcm").write_bytes(data[: len(data) - 4000])  # pixel data cut short
    from PIL import Image as PILImage

    PILImage.new("L", (64, 48), 90).save(folder / "photo.png")
    return folder


def _explain(ckpt: Path, inputs: Path, out: Path, *extra: str) -> tuple[int, str, dict]:
    rc, log = _run(["explain", "--checkpoint", str(ckpt), str(inputs), "--out", str(out), "--dicom", "--sr",
                    "--faithfulness", "none", "--slice-policy", "all", "--batch-size", "4", *extra])  # fmt: skip
    import json

    return rc, log, json.loads((out / "explanations.json").read_text())


@pytest.mark.slow
def test_mixed_folder_with_corrupt_file_exits_3_and_explains_every_other_image(ckpt, mixed, tmp_path):
    from test_explain_dicom import _dciodvfy_errors

    rc, log, doc = _explain(ckpt, mixed, tmp_path / "out")
    assert rc == ExitCode.PARTIAL, log
    assert "internal error" not in log
    [err] = doc["errors"]
    assert err["kind"] == "corrupt" and err["stage"] == "decode"
    assert "corrupt.dcm" in log  # the log/terminal line names the file
    rows = doc["images"]
    assert len(rows) == 1 + 10 + 1 + 1  # CT slice, every MR frame, the radiograph, the PNG
    dicom_rows = [r for r in rows if r["dicom"]]
    assert len(dicom_rows) == 12 and all(r["sr"] for r in dicom_rows)
    [png] = [r for r in rows if not r["dicom"]]
    assert "not DICOM" in png["dicom_note"] and not png["sr"]  # said per image, not an error
    out = tmp_path / "out"
    for r in dicom_rows:
        for name in (r["dicom"], r["sr"]):
            assert _dciodvfy_errors(out / name) == [], name
    frames = sorted(
        int(pydicom.dcmread(out / r["dicom"]).ReferencedImageSequence[0].ReferencedFrameNumber)
        for r in dicom_rows
        if "ReferencedFrameNumber" in pydicom.dcmread(out / r["dicom"]).ReferencedImageSequence[0]
    )
    assert frames == list(range(1, 11))  # each MR frame's SC references its own source frame


@pytest.mark.slow
def test_each_explain_stage_failing_for_one_image_fails_only_that_image(ckpt, mixed, tmp_path, monkeypatch):
    import medclass.explain.dicom_out as dicom_out
    import medclass.report.clinician_pdf as clinician_pdf
    from medclass.explain import Explainer

    (mixed / "mr_multiframe.dcm").unlink()  # keep it short: CT, DX, PNG (+ the corrupt file)
    real_sc, real_explain, real_pdf = dicom_out.secondary_capture, Explainer.explain, clinician_pdf.write_pdf

    def sc_fails_for_the_radiograph(rgb, meta, **kw):
        if meta.source.endswith("radiograph.dcm"):
            raise RuntimeError("simulated DICOM writer bug")
        return real_sc(rgb, meta, **kw)

    calls = {"batches": 0, "singles": 0}

    def cam_fails_for_batches_and_one_image(self, x, targets=None):
        if len(x) > 1:
            calls["batches"] += 1
            raise RuntimeError("simulated saliency failure of a batch")
        calls["singles"] += 1
        if calls["singles"] == 2:  # name order: ct.dcm, photo.png, radiograph.dcm: the PNG fails
            raise RuntimeError("simulated saliency failure")
        return real_explain(self, x, targets)

    monkeypatch.setattr(dicom_out, "secondary_capture", sc_fails_for_the_radiograph)
    monkeypatch.setattr(Explainer, "explain", cam_fails_for_batches_and_one_image)
    rc, log, doc = _explain(ckpt, mixed, tmp_path / "out", "--no-pdf", "--include-phi")
    assert rc == ExitCode.PARTIAL and "internal error" not in log
    by_stage = {e["stage"]: e for e in doc["errors"]}
    assert set(by_stage) == {"decode", "saliency", "outputs"}
    assert (
        by_stage["outputs"]["kind"] == "internal"
        and "simulated DICOM writer bug" in by_stage["outputs"]["message"]
    )
    assert by_stage["saliency"]["kind"] == "internal"
    [row] = doc["images"]  # the CT slice: explained with all its outputs
    assert row["dicom"] and row["sr"]
    out = tmp_path / "out"
    assert len(list(out.glob("*_overlay.png"))) == 1  # the radiograph's overlay was removed with its failure
    assert calls == {"batches": 1, "singles": 3}
    assert "photo.png" in by_stage["saliency"]["where"] and "radiograph" in by_stage["outputs"]["where"]

    # the report stage: a PDF that cannot be written fails that study's report, not the images
    monkeypatch.undo()

    def pdf_fails(report, path, **kw):
        raise OSError("simulated disk problem")

    monkeypatch.setattr(clinician_pdf, "write_pdf", pdf_fails)
    rc, log, doc = _explain(ckpt, mixed, tmp_path / "out2")
    assert rc == ExitCode.PARTIAL and "internal error" not in log
    reports = [e for e in doc["errors"] if e.get("stage") == "report"]
    assert reports and all("simulated disk problem" in e["message"] for e in reports)
    assert len(doc["images"]) == 3 and all(r["report_pdf"] == "" for r in doc["images"])
    assert real_pdf is not None


def test_traceback_flag_lets_an_unexpected_exception_through(ckpt, mixed, tmp_path, monkeypatch):
    import medclass.explain.dicom_out as dicom_out

    def boom(*a, **kw):
        raise RuntimeError("bug")

    monkeypatch.setattr(dicom_out, "secondary_capture", boom)
    with pytest.raises(RuntimeError, match="bug"):
        main(["--traceback", "explain", "--checkpoint", str(ckpt), str(mixed / "ct.dcm"), "--out",
              str(tmp_path / "o"), "--dicom", "--no-pdf", "--faithfulness", "none"])  # fmt: skip


def test_preview_contains_a_render_failure(mixed, tmp_path, monkeypatch):
    import medclass.cli.preview as preview

    real = preview.render

    def render_fails_for_ct(image, preprocessor, path, name):
        if image.meta.source.endswith("ct.dcm"):
            raise ValueError("simulated matplotlib failure")
        return real(image, preprocessor, path, name)

    monkeypatch.setattr(preview, "render", render_fails_for_ct)
    (mixed / "mr_multiframe.dcm").unlink()
    rc, log = _run(
        ["preview", str(mixed), "--out", str(tmp_path / "p"), "--size", "75", "--slice-policy", "all"]
    )
    assert rc == ExitCode.PARTIAL
    assert "internal: ValueError: simulated matplotlib failure" in log and "ct.dcm" in log
    assert "corrupt: " in log and "corrupt.dcm" in log
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == ["photo_f000.png", "radiograph_f000.png"]


def test_inspect_series_with_corrupt_slice(ct_with_corrupt_slice, capsys):
    folder, bad = ct_with_corrupt_slice
    rc = main(["inspect", str(folder)])
    out, err = capsys.readouterr()
    assert rc == ExitCode.PARTIAL
    assert "(3 files)" in out and "frames=2" in out  # the series, with its readable slices
    assert f"{bad}\tFAILED corrupt: " in err and "1 ok, 1 failed" in out
