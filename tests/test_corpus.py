"""Every real DICOM file we have through ``explain --dicom --sr`` and ``score`` (slow; runs in CI).

Inputs: every file under ``../shared/data/dicom_samples`` (non-DICOM notes and tables there are skipped by
the folder walk) and every file of pydicom's own test data (``pydicom.data.get_testdata_files``), named one
by one so that its non-DICOM files (text, JSON, ICC profiles) are reported too. Model: a random-init 2-class
Inception V3 at 75 px. What must hold:

- no "internal" error anywhere, in either command; every failure is a specific input kind;
- explain: every image that decodes gets a Secondary Capture and an SR, and neither has a dciodvfy error
  that its source does not already have; nothing fails after decoding (no error of another stage);
- score: every image file gets rows, and an image explain decoded is scored without error.

The counts (files, images, SC written, clean, errors by kind) are printed (``pytest -s``).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from test_score import make_checkpoint, read_scores

from medclass.cli import ExitCode, main

#: what an input may fail with (an "internal" or "dicom-output" kind is a bug here)
INPUT_KINDS = {"unreadable", "unsupported-format", "corrupt", "no-image", "missing-decoder", "too-large",
               "invalid-pixels", "input"}  # fmt: skip


def _dciodvfy() -> str:
    exe = shutil.which("dciodvfy")
    if exe:
        return exe
    msg = "dciodvfy not installed (scripts/system-deps.sh installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {msg}", pytrace=False)
    pytest.skip(msg)


def _errors(exe: str, path: str | Path, cache: dict[str, set[str]]) -> set[str]:
    key = str(path)
    if key not in cache:
        res = subprocess.run([exe, key], capture_output=True, text=True, timeout=120)
        cache[key] = {ln.strip() for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")}
    return cache[key]


def _source_path(source: str, folder: Path) -> str:
    """An explain row's ``source`` as a file path: rows name files found under a folder argument relative
    to it (the only folder given here is ``folder``), files given one by one as given."""
    return source if os.path.isabs(source) else str(folder / source)


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue() + err.getvalue()


@pytest.mark.slow
def test_every_real_dicom_file_through_explain_and_score(tmp_path, dicom_samples):
    exe = _dciodvfy()
    pydicom_files = sorted(f for f in get_testdata_files() if os.path.isfile(f))
    sample_files = sorted(str(p) for p in dicom_samples.rglob("*") if p.is_file())
    inputs = [str(dicom_samples), *pydicom_files]
    ckpt = make_checkpoint(tmp_path / "ckpt" / "tiny", size=75)

    out = tmp_path / "explain"
    rc, log = _run(["-q", "explain", "--checkpoint", str(ckpt), *inputs, "--out", str(out), "--dicom", "--sr",
                    "--include-phi", "--no-pdf", "--faithfulness", "none", "--batch-size", "16"])  # fmt: skip
    assert "internal error" not in log
    assert rc == ExitCode.PARTIAL, log[-2000:]
    doc = json.loads((out / "explanations.json").read_text())
    rows, errors = doc["images"], doc["errors"]
    kinds = collections.Counter(e["kind"] for e in errors)
    assert set(kinds) <= INPUT_KINDS, [e for e in errors if e["kind"] not in INPUT_KINDS]
    assert {e.get("stage") for e in errors} == {"decode"}, [e for e in errors if e.get("stage") != "decode"]

    cache: dict[str, set[str]] = {}
    clean, new_errors = 0, []
    for row in rows:  # every decoded image: an SC and an SR without errors of their own
        assert row["dicom"] and row["sr"], row
        source = _source_path(row["source"], dicom_samples)
        assert os.path.isfile(source), row["source"]
        source_errors = _errors(exe, source, cache)
        sc = pydicom.dcmread(out / row["dicom"])
        assert sc.StudyInstanceUID and sc.Rows > 0
        for name in (row["dicom"], row["sr"]):
            extra = _errors(exe, out / name, cache) - source_errors
            if extra:
                new_errors.append((row["source"], name, sorted(extra)[:3]))
        clean += not any(src == row["source"] for src, *_ in new_errors)
    assert new_errors == []

    score_out = tmp_path / "scores.csv"
    rc, log = _run(["-q", "score", "--checkpoint", str(ckpt), *inputs, "--out", str(score_out), "--workers", "0",
                    "--batch-size", "32", "--no-progress"])  # fmt: skip
    assert "internal error" not in log and rc == ExitCode.PARTIAL
    scores = read_scores(score_out)
    score_kinds = collections.Counter(r["error"].split(":", 1)[0] for r in scores if r["error"])
    assert set(score_kinds) <= INPUT_KINDS, [r["error"] for r in scores if r["error"].startswith("internal")]
    scored = {(r["path"], r["frame"]) for r in scores if not r["error"]}
    for row in rows:  # what explain decoded, score decodes too
        source = os.path.abspath(_source_path(row["source"], dicom_samples))
        assert any(path == source for path, _ in scored), row["source"]

    files = len(sample_files) + len(pydicom_files)
    print(
        f"\ncorpus: {files} files ({len(sample_files)} in dicom_samples, {len(pydicom_files)} pydicom test files); "
        f"explain: {len(rows)} images explained, {len(rows)} SC + {len(rows)} SR written, {clean} clean "
        f"under dciodvfy, {len(errors)} failed by kind {dict(sorted(kinds.items()))}; "
        f"score: {len(scores)} rows, {len(scored)} scored, errors by kind {dict(sorted(score_kinds.items()))}"
    )
