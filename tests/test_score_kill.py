"""Exactly once under SIGKILL: a real ``medclass score`` process is killed at several moments, resumed,
and the output must hold every input exactly once, no torn row, every row parseable, the same scores as
an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_score import kermany_jpegs, make_checkpoint

from medclass.cli import ExitCode, main
from medclass.score import item_key, read_scores

pytestmark = pytest.mark.slow

N_INPUTS = 30
BATCH = 2


def _rows_committed(out: Path) -> int:
    """Complete data lines in the CSV now (a torn last line is not counted)."""
    try:
        data = out.read_bytes()
    except FileNotFoundError:
        return -1
    return max(0, data.count(b"\n") - 1)


def _start(ckpt: Path, folder: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "medclass", "score", "--checkpoint", str(ckpt), str(folder), "--out", str(out),
           "--batch-size", str(BATCH), "--workers", "1", "--no-progress", *extra]  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _kill_when(proc: subprocess.Popen, out: Path, at_least: int, timeout: float = 300) -> int:
    """SIGKILL the main process once ``at_least`` rows are committed; returns the rows seen then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = _rows_committed(out)
        if seen >= at_least:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return seen
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {at_least} rows were committed: {proc.stderr.read()[-500:]}")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {at_least} rows after {timeout} s")


def _worker_gone(pgid: int, timeout: float = 15) -> bool:
    """True once no process of the killed run's session is left (the decode worker exits by itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)  # clean up what this test started
    return False


def test_sigkill_then_resume_gives_every_input_exactly_once(tmp_path: Path, kermany: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ck")
    folder = tmp_path / "in"
    folder.mkdir()
    for i, f in enumerate(kermany_jpegs(kermany, N_INPUTS)):
        shutil.copy(f, folder / f"img{i:02d}{f.suffix}")
    out = tmp_path / "scores.csv"

    kills = []
    for k, target in enumerate((0, 2, 11, 20)):  # header only; after the 1st batch; mid-run; late
        proc = _start(ckpt, folder, out, *(["--resume"] if k else []))
        kills.append(_kill_when(proc, out, target))
        assert _worker_gone(proc.pid), "the decode worker outlived the killed main process"
    assert kills == sorted(kills) and kills[-1] < N_INPUTS  # each kill left work to do
    print(f"killed with {kills} rows committed")

    proc = _start(ckpt, folder, out, "--resume")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == ExitCode.OK, stderr[-1000:]
    said = re.search(r"scored (\d+), skipped (\d+) \(already done\), failed 0", stdout)
    assert said, stdout
    scored, skipped = int(said[1]), int(said[2])
    assert scored + skipped == N_INPUTS and skipped >= kills[-1] and scored > 0

    data = out.read_bytes()
    assert data.endswith(b"\n")
    rows = read_scores(out)
    keys = [item_key(r["path"], r["frame"]) for r in rows]
    assert len(keys) == len(set(keys)) == N_INPUTS  # every input exactly once
    assert sorted(keys) == sorted(item_key(str(p), 0) for p in folder.iterdir())
    for r in rows:  # no torn or mangled row
        assert not r["error"]
        p = float(r["prob:NORMAL"]) + float(r["prob:PNEUMONIA"])
        assert abs(p - 1) < 1e-5 and r["predicted"] in ("NORMAL", "PNEUMONIA")

    # the same scores as an uninterrupted run
    ref = tmp_path / "ref.csv"
    assert main(["score", "--checkpoint", str(ckpt), str(folder), "--out", str(ref), "--workers", "0",
                 "--batch-size", str(BATCH), "--no-progress"]) == ExitCode.OK  # fmt: skip
    expected = {item_key(r["path"], r["frame"]): float(r["prob:PNEUMONIA"]) for r in read_scores(ref)}
    for r in rows:
        assert float(r["prob:PNEUMONIA"]) == pytest.approx(
            expected[item_key(r["path"], r["frame"])], abs=1e-5
        )
