"""``medclass score`` under torchrun with 2 ranks (gloo on CPU): every input scored exactly once overall,
parts merged by rank 0 in input order, and a resume under torchrun skips everything already done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_score import kermany_jpegs, make_checkpoint

from medclass.cli import ExitCode, main
from medclass.score import item_key, read_scores, summary_path

pytestmark = pytest.mark.slow


def _torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "medclass", "score", *args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_ranks_score_every_input_exactly_once(tmp_path: Path, kermany: Path, dicom_samples: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ck")
    folder = tmp_path / "in"
    folder.mkdir()
    for i, f in enumerate(kermany_jpegs(kermany, 4)):
        shutil.copy(f, folder / f"x{i}.jpeg")
    shutil.copy(dicom_samples / "pydicom-data" / "emri_small.dcm", folder / "mr.dcm")  # 10 frames
    (folder / "empty.png").write_bytes(b"")
    n_inputs = 4 + 10 + 1
    out = tmp_path / "scores.csv"
    common = ["--checkpoint", str(ckpt), str(folder), "--out", str(out), "--workers", "0",
              "--batch-size", "2", "--no-progress"]  # fmt: skip

    run = _torchrun(*common)
    assert run.returncode != 0  # the empty file failed on one rank: PARTIAL (3) there
    assert "scored 14, skipped 0 (already done), failed 1" in run.stdout, run.stderr[-2000:]
    assert not list(tmp_path.glob("scores.csv.rank*"))  # parts merged and removed
    rows = read_scores(out)
    keys = [item_key(r["path"], r["frame"]) for r in rows]
    assert len(keys) == len(set(keys)) == n_inputs

    # the same rows, in the same order, as one process
    single = tmp_path / "single.csv"
    assert main(["score", *common[:3], "--out", str(single), *common[5:]]) == ExitCode.PARTIAL
    ref = read_scores(single)
    assert keys == [item_key(r["path"], r["frame"]) for r in ref]
    for a, b in zip(rows, ref, strict=True):
        assert a["error"] == b["error"]
        if not a["error"]:
            assert float(a["prob:PNEUMONIA"]) == pytest.approx(float(b["prob:PNEUMONIA"]), abs=1e-5)
    assert summary_path(out).is_file()

    # resume: a rank's part with a torn line, as if killed; everything else done
    (tmp_path / "scores.csv.rank1").write_text(out.read_text().splitlines(keepends=True)[0] + "/torn,")
    again = _torchrun(*common, "--resume")
    assert "scored 0, skipped 15 (already done)" in again.stdout, again.stderr[-2000:]
    assert read_scores(out) == rows
    assert not list(tmp_path.glob("scores.csv.rank*"))
