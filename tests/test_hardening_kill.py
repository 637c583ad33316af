"""Hardening: SIGKILL real medclass processes at random (seeded) moments; no file is ever torn.

Targets (each overwrites a good earlier output):
- ``python -m medclass manifest build`` over an existing manifest: afterwards the manifest is the old
  bytes or a complete new manifest (``load_manifest`` reads every row);
- a checkpoint-save loop (``medclass.checkpoint.save`` of two alternating models to one stem): the
  ``.safetensors`` is always one of the two complete weight files and the ``.json`` always a complete
  sidecar; whether the *pair* matches is counted separately (see ``test_checkpoint_pair_...``);
- ``python -m medclass evaluate --predictions ...`` over an earlier report folder: every JSON parses,
  every HTML is complete, every PNG verifies, every CSV parses;
- ``python -m medclass score`` (append log): after a kill, ``--resume`` ends with every input exactly once.

Delays are drawn around each command's measured run time so that kills land during the writes too.
Run with ``-s`` to see the kill counts.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RNG = random.Random(20261125)
KILLS = {"survived": 0, "completed-before-kill": 0, "pair-mismatch": 0}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def _run_and_kill(argv: list[str], delay: float, cwd: Path) -> bool:
    """Start ``argv``, SIGKILL it after ``delay`` s. Returns True if it had already finished."""
    proc = subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return True
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return False


def _timed(argv: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return time.perf_counter() - t0


def _tally(finished: bool) -> None:
    KILLS["completed-before-kill" if finished else "survived"] += 1


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\n[hardening-kill] {KILLS}")


def _pngs(folder: Path, n: int) -> None:
    for i in range(n):
        d = folder / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8)).save(
            d / f"p{i}.png"
        )


# --- manifest build -------------------------------------------------------------------------------------
def test_kill_manifest_build(tmp_path):
    from medclass.manifest import load_manifest

    data = tmp_path / "data"
    _pngs(data, 80)
    out = tmp_path / "m.csv"
    base = [
        sys.executable,
        "-m",
        "medclass",
        "manifest",
        "build",
        "--from-folders",
        str(data),
        "--out",
        str(out),
    ]
    t = _timed([*base, "--seed", "0"], tmp_path)
    versions = {out.read_bytes()}
    for i in range(5):
        before = out.read_bytes()
        finished = _run_and_kill([*base, "--seed", str(i + 1)], RNG.uniform(0.4 * t, 1.2 * t), tmp_path)
        _tally(finished)
        now = out.read_bytes()
        m = load_manifest(out, data)  # complete and valid, whichever version
        assert len(m.rows) == 80
        assert now == before or now not in versions or finished
        versions.add(now)
    # temporaries of killed writers are removed by the next write of the same file
    _timed([*base, "--seed", "99"], tmp_path)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- checkpoint save loop -------------------------------------------------------------------------------
SAVE_LOOP = r"""
import sys, torch
from torch import nn
from medclass import checkpoint

class Net(nn.Module):  # what save() needs (an fc layer), with 24 MB of weights so writes take a while
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(2048, 2)
        self.big = nn.Parameter(torch.randn(6_000_000))

stem = sys.argv[1]
models = [Net(0), Net(1)]
print("ready", flush=True)
i = 0
while True:
    checkpoint.save(stem, models[i % 2], {"classes": ["a", "b"], "task": "multiclass", "seed": i % 2,
                                          "input": {"size": 75}})
    i += 1
"""


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_kill_checkpoint_save_loop(tmp_path):
    """Each file is always complete; a pair whose sidecar describes other weights is counted."""
    from safetensors.torch import load as st_load

    from medclass import checkpoint
    from medclass.errors import CheckpointError

    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP)
    stem = tmp_path / "best"
    w, j = Path(str(stem) + ".safetensors"), Path(str(stem) + ".json")
    # let it save both models a few times to learn the two valid weight digests and the save time
    proc = subprocess.Popen([sys.executable, str(script), str(stem)], env=_env(), stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    t0 = time.perf_counter()
    deadline = time.time() + 120
    digests: set[str] = set()
    while len(digests) < 2 and time.time() < deadline:
        time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            digests.add(json.loads(j.read_text())["sha256"])
    save_time = max(0.05, (time.perf_counter() - t0) / 2)
    proc.kill()
    proc.wait()
    assert len(digests) == 2
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(stem)], env=_env(), stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(RNG.uniform(0.0, 4 * save_time))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        KILLS["survived"] += 1
        assert _digest(w) in digests, "weights file torn"
        st_load(w.read_bytes())
        meta = json.loads(j.read_text())  # a complete JSON document
        assert meta["sha256"] in digests
        try:
            checkpoint.read_state_dict(stem)  # sha256 of the pair
        except CheckpointError as exc:
            assert "sha256" in str(exc) or "size" in str(exc)
            KILLS["pair-mismatch"] += 1


def test_checkpoint_pair_survives_crash_between_the_two_renames(tmp_path, monkeypatch):
    """A crash after the new .safetensors replaced the old one but before the new .json is written.

    Each file is atomic, but the pair is not: the old sidecar then describes the new weights. ``save``
    keeps the previous verified pair as ``<stem>.prev.*`` until the new pair is complete, and ``load``
    falls back to it, so the run's 'best' stays loadable: the previous checkpoint, bit for bit.
    """
    import torch

    from medclass import checkpoint
    from medclass.errors import CheckpointError
    from medclass.model import create_model
    from medclass.weights import pair as pair_mod  # where the pair is committed

    torch.manual_seed(0)
    stem = tmp_path / "best"
    checkpoint.save(stem, create_model(2, image_size=75), {"classes": ["a", "b"], "task": "multiclass"})
    checkpoint.load(stem)

    class Killed(BaseException):
        pass

    def crash(*a, **k):
        raise Killed()

    monkeypatch.setattr(pair_mod, "atomic_write_text", crash)  # the sidecar write, after the weights
    torch.manual_seed(1)
    with pytest.raises(Killed):
        checkpoint.save(stem, create_model(2, image_size=75), {"classes": ["a", "b"], "task": "multiclass"})
    monkeypatch.undo()
    first = checkpoint.read_state_dict(stem.parent / "best.prev")[0]
    state, _ = checkpoint.read_state_dict(stem)  # falls back to the previous pair
    assert all(torch.equal(state[k], first[k]) for k in first)
    checkpoint.load(stem)
    # the next complete save replaces the pair and removes the backup
    checkpoint.save(stem, create_model(2, image_size=75), {"classes": ["a", "b"], "task": "multiclass"})
    assert not (tmp_path / "best.prev.json").exists() and not (tmp_path / "best.prev.safetensors").exists()
    with pytest.raises(CheckpointError):  # a tampered pair with no backup is still refused
        w = tmp_path / "best.safetensors"
        w.write_bytes(w.read_bytes()[:-10] + b"0123456789")
        checkpoint.load(stem)


# --- evaluate --predictions -----------------------------------------------------------------------------
def _predictions(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("val", 120), ("test", 160)):
        for i in range(n):
            y = int(rng.integers(0, 2))
            p = float(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.001, 0.999))
            rows.append({"image_id": f"{split}{i}", "patient_id": f"P{split}{i // 2}", "split": split,
                         "label": ["neg", "pos"][y], "prob:neg": 1 - p, "prob:pos": p})  # fmt: skip
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _check_report_folder(out: Path) -> None:
    for f in out.rglob("*"):
        if not f.is_file() or f.name.startswith("."):
            continue
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".html":
            assert f.read_text().rstrip().endswith("</html>"), f
        elif f.suffix == ".png":
            with Image.open(f) as im:
                im.verify()
        elif f.suffix == ".csv":
            list(csv.reader(f.open()))


def test_kill_evaluate_predictions(tmp_path):
    pred = tmp_path / "predictions.csv"
    _predictions(pred, 0)
    out = tmp_path / "ev"
    base = [sys.executable, "-m", "medclass", "evaluate", "--predictions", str(pred), "--out", str(out)]
    t = _timed([*base, "--bootstrap", "200", "--seed", "0"], tmp_path)
    _check_report_folder(out)
    for i in range(4):
        finished = _run_and_kill(
            [*base, "--bootstrap", "200", "--seed", str(i + 1)], RNG.uniform(0.5 * t, 1.1 * t), tmp_path
        )
        _tally(finished)
        _check_report_folder(out)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["levels"]


# --- score: append log + resume -------------------------------------------------------------------------
def test_kill_score_then_resume_exactly_once(tmp_path):
    import dataclasses

    import torch

    from medclass import checkpoint
    from medclass.model import create_model
    from medclass.preprocess import input_spec

    torch.manual_seed(0)
    meta = {"classes": ["a", "b"], "task": "multiclass",
            "input": dataclasses.asdict(input_spec("inception_v3", image_size=75)),
            "window": "auto", "fit": "letterbox", "seed": 0}  # fmt: skip
    checkpoint.save(tmp_path / "ck", create_model(2, image_size=75), meta)
    data = tmp_path / "imgs"
    _pngs(data, 24)
    out = tmp_path / "scores.csv"
    base = [sys.executable, "-m", "medclass", "score", "--checkpoint", str(tmp_path / "ck"), str(data),
            "--out", str(out), "--workers", "0", "--threads", "1", "--batch-size", "2", "--no-progress"]  # fmt: skip
    t = _timed([*base, "--overwrite"], tmp_path)
    full = list(csv.DictReader(out.open()))
    assert len(full) == 24
    for _ in range(2):
        out.unlink()
        finished = _run_and_kill(base, RNG.uniform(0.5 * t, 1.0 * t), tmp_path)
        _tally(finished)
        if out.exists():
            lines = out.read_bytes().split(b"\n")
            # complete rows, plus at most one torn last line (no trailing newline)
            assert all(line.count(b",") >= 2 for line in lines[:-1] if line)
        r = subprocess.run(
            [*base, "--resume"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr[-2000:]
        rows = list(csv.DictReader(out.open()))
        keys = [(r["path"], r.get("frame", "")) for r in rows]
        assert len(keys) == 24 and len(set(keys)) == 24, "a row is missing or scored twice"


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    from medclass.fileio import atomic_write_text

    target = tmp_path / "x.json"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".x.json.{dead_pid}.abcd.tmp"
    stale.write_text("{half")
    alive = tmp_path / f".x.json.{os.getppid()}.efgh.tmp"  # a live process's write in flight
    alive.write_text("{")
    other = tmp_path / f".y.json.{dead_pid}.abcd.tmp"  # another file's temporary
    other.write_text("{")
    atomic_write_text(target, "[]")  # first write: no scan (new files are written by the thousand in caches)
    assert stale.exists()
    atomic_write_text(target, "{}")  # an overwrite cleans up
    assert target.read_text() == "{}"
    assert not stale.exists() and alive.exists() and other.exists()
