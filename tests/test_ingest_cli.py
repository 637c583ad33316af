"""``medclass inspect``: one row per file/series, errors collected, exit codes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_ingest import make_dicom

from medclass.cli import ExitCode, main


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "scans"
    (d / "sub").mkdir(parents=True)
    make_dicom(
        d / "sub" / "IM1",  # no extension
        np.array([[-2000, 0], [100, 1000]], np.int16),
        signed=True,
        PixelPaddingValue=-2000,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter="40",
        WindowWidth="400",
    )
    make_dicom(d / "b.dcm", np.array([[0, 4095]], np.uint16), bits_stored=12, modality="MR")
    (d / "broken.dcm").write_text("garbage")
    (d / "notes.md").write_text("not an image; skipped")
    return d


def test_inspect_partial_with_errors_csv(folder, tmp_path, capsys):
    errors = tmp_path / "errors.csv"
    code = main(["inspect", str(folder), str(tmp_path / "missing.png"), "--errors-csv", str(errors)])
    captured = capsys.readouterr()
    out, err = captured.out.splitlines(), captured.err.splitlines()
    assert code == ExitCode.PARTIAL
    assert out[-1] == "2 ok, 2 failed"
    assert len(err) == 2 and all("\tFAILED " in line for line in err)  # failures on stderr
    by_name = {line.split("\t")[0].rsplit("/", 1)[-1]: line for line in out[:-1] + err}
    assert set(by_name) == {"IM1", "b.dcm", "broken.dcm", "missing.png"}
    assert "range=[-1024, -24]" in by_name["IM1"] and "padded=1" in by_name["IM1"]
    assert "window=40/400 [header]" in by_name["IM1"]
    assert "[percentile (p0.5–p99.5)]" in by_name["b.dcm"] and " MR " in by_name["b.dcm"]
    assert "FAILED unsupported-format" in by_name["broken.dcm"]
    assert "FAILED unreadable: no such file" in by_name["missing.png"]
    rows = list(csv.DictReader(errors.read_text().splitlines()))
    assert [r["error_kind"] for r in rows] == ["unsupported-format", "unreadable"]


def test_inspect_json_all_ok(folder, capsys):
    (folder / "broken.dcm").unlink()
    code = main(["inspect", str(folder), "--json"])
    captured = capsys.readouterr()
    assert code == ExitCode.OK
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert captured.err.strip().endswith("2 ok, 0 failed")
    im1 = next(r for r in rows if r["path"].endswith("IM1"))
    assert im1["modality"] == "CT" and im1["photometric"] == "MONOCHROME2" and im1["shape"] == "2x2"
    assert im1["frames"] == 1 and im1["value_min"] == -1024.0 and im1["value_max"] == -24.0
    assert (im1["window_center"], im1["window_width"], im1["window_source"]) == (40.0, 400.0, "header")
    assert im1["error"] == ""
    b = next(r for r in rows if r["path"].endswith("b.dcm"))
    assert (b["value_min"], b["value_max"]) == (0.0, 4095.0)


def test_inspect_window_policies(folder, capsys):
    (folder / "broken.dcm").unlink()
    assert main(["inspect", str(folder / "b.dcm"), "--window", "lung"]) == ExitCode.OK
    assert "window=-600/1500 [preset:lung]" in capsys.readouterr().out
    assert main(["inspect", str(folder), "--window", "nonsense"]) == ExitCode.ERROR
    assert "unknown window 'nonsense'" in capsys.readouterr().err


def test_inspect_all_failed_and_nothing_found(tmp_path, capsys):
    (tmp_path / "x.dcm").write_bytes(b"")
    assert main(["inspect", str(tmp_path / "x.dcm")]) == ExitCode.ERROR
    captured = capsys.readouterr()
    assert "x.dcm\tFAILED unreadable: empty file" in captured.err and captured.out == "0 ok, 1 failed\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["inspect", str(empty)]) == ExitCode.ERROR
    assert "no images found" in capsys.readouterr().err


def test_inspect_groups_series(tmp_path, capsys):
    for k in range(3):
        make_dicom(
            tmp_path / f"s{k}",
            np.full((4, 4), k, np.uint16),
            ImagePositionPatient=[0, 0, -k],
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            InstanceNumber=k + 1,
        )
    assert main(["inspect", str(tmp_path)]) == ExitCode.OK
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "(3 files)" in out[0] and "frames=3" in out[0] and "range=[0, 2]" in out[0]
    assert main(["inspect", "--no-group", str(tmp_path)]) == ExitCode.OK
    assert capsys.readouterr().out.splitlines()[-1] == "3 ok, 0 failed"


@pytest.mark.realdata
def test_inspect_real_dicom_samples(dicom_samples, capsys):
    code = main(["inspect", str(dicom_samples)])
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert code == ExitCode.PARTIAL
    assert out[-1] == "17 ok, 1 failed"
    assert "liver.dcm\tFAILED no-image: no image (SOP class Segmentation Storage)" in captured.err
    series = [line for line in out if "(20 files)" in line]
    assert len(series) == 1 and "frames=20" in series[0] and "dicom-series CT" in series[0]
