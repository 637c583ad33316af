"""One bad image never stops a run: per-image containment in score, explain, inspect and preview, a
series with one corrupt slice, and the mixed-folder acceptance case (CT slice, MR multi-frame,
radiograph, corrupt file)."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

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
