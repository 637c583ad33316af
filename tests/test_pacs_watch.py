"""``medclass watch`` against a real Orthanc: picks up studies uploaded while it runs, rides out an outage
(one log line), survives kill -9, stops cleanly on SIGINT, and every instance is scored exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from orthanc_server import PASSWORD, USER, Orthanc
from test_score import make_checkpoint

from medclass.pacs import Connection, PacsClient
from medclass.pacs.watch import WatchState
from medclass.score import expand_inputs, read_scores

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


class Watch:
    """A ``medclass watch`` subprocess whose stderr lines are collected as they come."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in ln for ln in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"no line with {text!r}; stderr:\n{''.join(self.lines)[-3000:]}")


def test_watch_new_studies_outage_kill9_and_ctrl_c(tmp_path: Path, dicom_samples: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCLASS_PACS_USER", USER)
    monkeypatch.setenv("MEDCLASS_PACS_PASSWORD", PASSWORD)
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        ckpt = make_checkpoint(tmp_path / "ck")
        dx = dicom_samples / "highdicom" / "dx_image.dcm"
        ct = [dicom_samples / "dcmqi_ct-3slice" / n for n in ("01.dcm", "02.dcm", "03.dcm")]
        cr = next((dicom_samples / "torchxrayvision").glob("*.dcm"))
        mr = dicom_samples / "pydicom-data" / "emri_small.dcm"
        uid = {p: pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in [dx, *ct, cr, mr]}
        server.upload(dx)
        state = tmp_path / "state"
        cmd = [sys.executable, "-m", "medclass", "watch", "--dicomweb", server.dicomweb, "--checkpoint", str(ckpt),
               "--state", str(state), "--interval", "1", "--max-backoff", "2", "--push", "--retries", "1",
               "--timeout", "30", "--batch-size", "2"]  # fmt: skip  # a stopped server fails at once; 30 s so
        # that a slow answer on a loaded 2-core CI machine is not a second outage (seen once with 5 s)
        env = {**os.environ, "MEDCLASS_PACS_USER": USER, "MEDCLASS_PACS_PASSWORD": PASSWORD}
        w = Watch(cmd, env)
        w.wait_for(f"study {uid[dx]}:")
        for f in ct:  # uploaded while it runs
            server.upload(f)
        w.wait_for(f"study {uid[ct[0]]}:")
        server.stop()  # an outage
        w.wait_for("unavailable (")
        time.sleep(3)
        server.start()
        w.wait_for("answers again after")
        server.upload(cr)
        w.wait_for(f"study {uid[cr]}:")
        os.kill(w.proc.pid, signal.SIGKILL)  # a crash
        w.proc.wait()
        server.upload(mr)  # arrives while nobody watches
        w2 = Watch(cmd, env)
        w2.wait_for(f"study {uid[mr]}:")
        time.sleep(2.5)  # two more polls: nothing is taken twice
        w2.proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = w2.proc.communicate(timeout=120)
        assert w2.proc.returncode == 0 and "watch stopped" in out, out
        assert sum("unavailable (" in ln for ln in w.lines) == 1, "".join(w.lines)  # one line for the outage
        studies = [f"study {uid[p]}:" for p in (dx, ct[0], cr, mr)]
        assert all(sum(ln.startswith(s) for ln in w.lines + w2.lines) == 1 for s in studies), (
            w.lines + w2.lines
        )
        rows = read_scores(state / "scores.csv")
        keys = [(r["path"], r["frame"]) for r in rows]
        n_frames = sum(len(expand_inputs([p])) for p in [dx, *ct, cr, mr])
        assert len(keys) == len(set(keys)) == n_frames and not any(r["error"] for r in rows)
        client = PacsClient(Connection(server.dicomweb))
        for study in set(uid.values()):
            srs = [r for r in client.instances(study) if r.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.33"]
            assert len(srs) == 1, study
        assert server.n_instances() == 6 + 4
        st = WatchState(state, rows[0]["model_sha256"])
        assert st.count("done") == 4
        st.close()
    finally:
        server.stop()


def _stable(server: Orthanc, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        changes = server.get("/changes?since=0&limit=10000").json()["Changes"]
        if sum(c["ChangeType"] == "StableStudy" for c in changes) >= n:
            return
        time.sleep(0.3)
    pytest.fail(f"Orthanc reported fewer than {n} stable studies")


def test_watch_follows_orthanc_changes(tmp_path: Path, dicom_samples: Path, monkeypatch, capsys) -> None:
    from medclass.cli import ExitCode, main

    monkeypatch.setenv("MEDCLASS_PACS_USER", USER)
    monkeypatch.setenv("MEDCLASS_PACS_PASSWORD", PASSWORD)
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        ckpt = make_checkpoint(tmp_path / "ck")
        dx = dicom_samples / "highdicom" / "dx_image.dcm"
        ct = [dicom_samples / "dcmqi_ct-3slice" / n for n in ("01.dcm", "02.dcm", "03.dcm")]
        state = tmp_path / "state"
        cmd = ["watch", "--dicomweb", server.dicomweb, "--checkpoint", str(ckpt), "--state", str(state),
               "--changes", "--once", "--push", "--batch-size", "2"]  # fmt: skip
        server.upload(dx)
        _stable(server, 1)
        assert main(cmd) == ExitCode.OK
        assert main(cmd) == ExitCode.OK  # nothing new: the sequence number was kept
        for f in ct:
            server.upload(f)
        _stable(server, 3)  # the CT study, and the DX study again (our SR joined it)
        assert main(cmd) == ExitCode.OK
        err = capsys.readouterr().err
        uids = [pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in (dx, ct[0])]
        assert [sum(ln.startswith(f"study {u}:") for ln in err.splitlines()) for u in uids] == [1, 1], err
        rows = read_scores(state / "scores.csv")
        assert len(rows) == len({(r["path"], r["frame"]) for r in rows}) == 4
        assert server.n_instances() == 4 + 2  # one SR per study
    finally:
        server.stop()


def test_watch_explain_pushes_overlays_too(tmp_path: Path, dicom_samples: Path, monkeypatch) -> None:
    from medclass.cli import ExitCode, main
    from medclass.pacs import output_series_uid

    monkeypatch.setenv("MEDCLASS_PACS_USER", USER)
    monkeypatch.setenv("MEDCLASS_PACS_PASSWORD", PASSWORD)
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        ckpt = make_checkpoint(tmp_path / "ck")
        dx = dicom_samples / "highdicom" / "dx_image.dcm"
        server.upload(dx)
        state = tmp_path / "state"
        cmd = ["watch", "--dicomweb", server.dicomweb, "--checkpoint", str(ckpt), "--state", str(state),
               "--once", "--explain", "--push", "--batch-size", "2"]  # fmt: skip
        assert main(cmd) == ExitCode.OK  # --once: two polls, the study is stable at the second
        study = pydicom.dcmread(dx, stop_before_pixels=True).StudyInstanceUID
        sha = read_scores(state / "scores.csv")[0]["model_sha256"]
        refs = PacsClient(Connection(server.dicomweb)).instances(study)
        sc = [r for r in refs if r.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"]
        assert [r.series_uid for r in sc] == [output_series_uid(study, sha, "saliency-sc")]
        assert server.n_instances() == 1 + 2  # the SR of the scores and the overlay
        assert main(cmd) == ExitCode.OK and server.n_instances() == 3  # done: nothing again
        assert not list((state / "explain").rglob(".pull"))
    finally:
        server.stop()
