"""The PACS round trip against a real Orthanc: pull → score → SR pushed into the source study (STOW-RS and
C-STORE), idempotent re-runs, and an Orthanc stopped mid-run then restarted (``--resume``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from orthanc_server import PASSWORD, USER, Orthanc
from test_score import make_checkpoint

from medclass.cli import ExitCode, main
from medclass.pacs import Connection, PacsClient, output_series_uid, output_uid
from medclass.score import expand_inputs, read_scores

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

CT = ("01.dcm", "02.dcm", "03.dcm")


def _sources(dicom_samples: Path) -> list[Path]:
    return [
        dicom_samples / "highdicom" / "dx_image.dcm",
        *(dicom_samples / "dcmqi_ct-3slice" / n for n in CT),
        next((dicom_samples / "torchxrayvision").glob("*.dcm")),
    ]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, dicom_samples: Path):
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    for f in _sources(dicom_samples):
        server.upload(f)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _credentials(monkeypatch) -> None:
    monkeypatch.setenv("MEDCLASS_PACS_USER", USER)
    monkeypatch.setenv("MEDCLASS_PACS_PASSWORD", PASSWORD)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


def _client(server: Orthanc) -> PacsClient:
    return PacsClient(Connection(server.dicomweb))


def _score(ckpt: Path, server: Orthanc, out: Path, *extra: str) -> int:
    return main(["score", "--checkpoint", str(ckpt), "--dicomweb", server.dicomweb, "--out", str(out),
                 "--workers", "0", "--batch-size", "2", "--no-progress", *extra])  # fmt: skip


def _dciodvfy_errors(path: Path) -> list[str]:
    if not shutil.which("dciodvfy"):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI=true but dciodvfy is not installed")
        return []
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


def _srs(client: PacsClient, study_uid: str) -> list[str]:
    return [
        r.sop_uid for r in client.instances(study_uid) if r.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.33"
    ]


def test_pull_score_push_sr_into_the_source_study(
    orthanc: Orthanc, ckpt: Path, tmp_path: Path, dicom_samples, capsys
):
    client = _client(orthanc)
    n_before = orthanc.n_instances()
    out = tmp_path / "scores.csv"
    assert _score(ckpt, orthanc, out, "--push") == ExitCode.OK
    err = capsys.readouterr().err
    assert err.count("\nstudy ") + err.startswith("study ") == 3  # one progress line per study
    rows = read_scores(out)
    assert len(rows) == 5 and all(not r["error"] for r in rows)
    assert all(r["path"].startswith(orthanc.dicomweb + "/studies/") for r in rows)
    assert orthanc.n_instances() == n_before + 3  # one SR per study
    sources = {pydicom.dcmread(f).StudyInstanceUID: pydicom.dcmread(f) for f in _sources(dicom_samples)}
    sha = rows[0]["model_sha256"]
    for study_uid, src in sources.items():
        srs = _srs(client, study_uid)  # found by QIDO in the source study
        assert srs == [output_uid(study_uid, None, sha, "score-sr")]
        ref = next(r for r in client.instances(study_uid) if r.sop_uid == srs[0])
        sr = client.retrieve(ref)  # WADO-RS
        path = tmp_path / f"{study_uid[-8:]}.dcm"
        sr.save_as(path, enforce_file_format=True)
        assert sr.PatientID == src.PatientID and sr.PatientName == src.PatientName
        assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.get("AccessionNumber") == src.get(
            "AccessionNumber"
        )
        text = " ".join(str(i.get("TextValue", "")) for i in sr.ContentSequence)
        assert "Not for diagnostic use" in text and sha in text
        n_images = sum(1 for r in rows if r["study_uid"] == study_uid)
        assert sum(1 for i in sr.ContentSequence if i.ValueType == "CONTAINER") == n_images
        assert _dciodvfy_errors(path) == []
    assert not any(p.name.startswith(".scores.csv.pull") for p in tmp_path.iterdir())  # pulled files removed

    # re-runs store nothing twice: --resume (nothing to do) and --overwrite (all scored and pushed again)
    assert _score(ckpt, orthanc, out, "--push", "--resume") == ExitCode.OK
    assert len(read_scores(out)) == 5 and orthanc.n_instances() == n_before + 3
    assert _score(ckpt, orthanc, out, "--push", "--overwrite") == ExitCode.OK
    assert len(read_scores(out)) == 5 and orthanc.n_instances() == n_before + 3
    # what medclass pushed (the SR) is not taken for an image to score
    assert _score(ckpt, orthanc, tmp_path / "again.csv", "--query", "ModalitiesInStudy=CT") == ExitCode.OK
    assert len(read_scores(tmp_path / "again.csv")) == 3


def test_cstore_push_into_the_same_orthanc(orthanc: Orthanc, tmp_path: Path) -> None:
    other = make_checkpoint(tmp_path / "other", seed=1)  # other weights: another SR UID
    client = _client(orthanc)
    study = client.study_uids({"ModalitiesInStudy": "DX"})[0]
    n_before = orthanc.n_instances()
    out = tmp_path / "dimse.csv"
    assert _score(other, orthanc, out, "--study", study, "--push-dimse", orthanc.node) == ExitCode.OK
    sha = read_scores(out)[0]["model_sha256"]
    assert orthanc.n_instances() == n_before + 1
    assert output_uid(study, None, sha, "score-sr") in _srs(client, study)


def test_explain_pushes_overlays_sr_and_pdf_into_the_source_study(
    orthanc: Orthanc, ckpt: Path, tmp_path: Path, dicom_samples: Path
) -> None:
    client = _client(orthanc)
    study = client.study_uids({"ModalitiesInStudy": "DX"})[0]
    src = pydicom.dcmread(dicom_samples / "highdicom" / "dx_image.dcm", stop_before_pixels=True)
    assert src.StudyInstanceUID == study
    n_before = orthanc.n_instances()
    out = tmp_path / "sal"
    cmd = ["explain", "--checkpoint", str(ckpt), "--dicomweb", orthanc.dicomweb, "--study", study, "--out", str(out),
           "--push", "--sr", "--pdf", "--faithfulness", "none", "--batch-size", "2"]  # fmt: skip
    assert main(cmd) == ExitCode.OK
    assert orthanc.n_instances() == n_before + 3  # SC + SR + Encapsulated PDF
    assert not (out / ".pull").exists()
    sha = pydicom.dcmread(next(out.glob("*_saliency.dcm")))  # on disk: de-identified
    assert sha.PatientID != src.PatientID and sha.PatientIdentityRemoved == "YES"
    weights = json.loads((out / "explanations.json").read_text())["model_sha256"]
    by_class = {}
    for ref in client.instances(study):
        by_class.setdefault(ref.sop_class_uid, []).append(ref)
    sc = by_class["1.2.840.10008.5.1.4.1.1.7"]
    assert [r.series_uid for r in sc] == [output_series_uid(study, weights, "saliency-sc")]
    pushed = client.retrieve(sc[0])
    assert pushed.PatientID == src.PatientID and pushed.PatientName == src.PatientName
    assert "PatientIdentityRemoved" not in pushed and pushed.StudyInstanceUID == study
    assert pushed.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert len(by_class["1.2.840.10008.5.1.4.1.1.104.1"]) == 1
    pdf = client.retrieve(by_class["1.2.840.10008.5.1.4.1.1.104.1"][0])
    assert bytes(pdf.EncapsulatedDocument).startswith(b"%PDF")
    for name, ds in (("sc", pushed), ("pdf", pdf)):
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
        assert _dciodvfy_errors(tmp_path / f"{name}.dcm") == [], name
    assert main(cmd) == ExitCode.OK  # again: the same UIDs, nothing stored twice
    assert orthanc.n_instances() == n_before + 3


def test_orthanc_stopped_mid_run_then_resume_scores_every_instance_once(
    tmp_path: Path, dicom_samples: Path, ckpt: Path
) -> None:
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        extra = [dicom_samples / "pydicom-data" / "emri_small.dcm"]  # 10 frames
        files = [*_sources(dicom_samples), *extra]
        for f in files:
            server.upload(f)
        frames = sum(len(expand_inputs([f])) for f in files)  # the 2D images, as for files
        studies = {pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files}
        out = tmp_path / "scores.csv"
        cmd = [sys.executable, "-m", "medclass", "score", "--checkpoint", str(ckpt), "--dicomweb", server.dicomweb,
               "--out", str(out), "--push", "--workers", "0", "--batch-size", "2", "--no-progress",
               "--retries", "2", "--timeout", "5"]  # fmt: skip
        env = {**os.environ, "MEDCLASS_PACS_USER": USER, "MEDCLASS_PACS_PASSWORD": PASSWORD}
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("study "):
                server.stop()  # the PACS goes away after the first study
                break
        rest = proc.communicate(timeout=300)[1]
        assert proc.returncode == ExitCode.PARTIAL, "".join(lines) + (rest or "")
        assert "run again with --resume" in (rest or "")
        first = read_scores(out)
        assert 0 < len(first) < frames
        server.start()
        t0 = time.monotonic()
        res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == ExitCode.OK, res.stderr[-2000:]
        rows = read_scores(out)
        keys = [(r["path"], r["frame"]) for r in rows]
        assert len(keys) == len(set(keys)) == frames and not any(r["error"] for r in rows)
        client = _client(server)
        for study in studies:
            assert len(_srs(client, study)) == 1
        assert server.n_instances() == len(files) + len(studies)
        print(
            f"resume after restart: {len(studies)} studies, {frames} frames in {time.monotonic() - t0:.1f} s"
        )
    finally:
        server.stop()
