"""``medclass score --engine ray`` on real Ray processes on loopback: the same rows as the local engine
(torch and ONNX backends), exactly once when a Ray worker or the driver is SIGKILLed, and a two-node
cluster (``ray start --head`` + ``ray start --address``, each with its own ``--num-cpus``) where both
nodes do work.

The cluster fixture starts every Ray process in process groups of its own and kills exactly those groups
when the module ends, pass or fail: every process of their sessions, by pid (never ``ray stop``, which
would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_score import _CrashOn, kermany_jpegs, make_checkpoint, make_inputs

from medclass.cli import ExitCode, main
from medclass.score import item_key, read_scores

ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'medclass[ray]'")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RAY = str(Path(sys.executable).with_name("ray"))
STORE = str(200 << 20)  # object store per node, bytes
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A Ray head and worker nodes on this machine, each ``ray start --block`` in a session of its own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, RAY_TMPDIR=str(tmp), **ENV)
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> None:
        log = open(self.tmp / f"node{len(self.procs)}.log", "w")  # noqa: SIM115 (closed with the process)
        cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--object-store-memory", STORE,
               "--disable-usage-stats", *args]  # fmt: skip
        self.procs.append(
            subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        code = (
            "import ray, time\n"
            f"ray.init(address={self.address!r}, log_to_driver=False)\n"
            f"t = time.time()\n"
            f"while len([x for x in ray.nodes() if x['Alive']]) < {n} and time.time() - t < {timeout}:\n"
            "    time.sleep(0.5)\n"
            "print(len([x for x in ray.nodes() if x['Alive']]))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                             timeout=timeout + 60)  # fmt: skip
        assert out.stdout.strip().endswith(str(n)), self.logs() + out.stderr[-2000:]

    def pids(self, title: str = "") -> list[int]:
        """Processes of this cluster whose title contains ``title``: those in the sessions of the ``ray
        start`` processes (Ray's workers get process groups of their own, but stay in the session)."""
        sessions = {p.pid for p in self.procs}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            sid = int(stat.rsplit(")", 1)[1].split()[3])
            if sid in sessions and title in cmd:
                found.append(int(entry.name))
        return found

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace")[-1500:] for p in sorted(self.tmp.glob("node*.log")))

    def stop(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two nodes on loopback, each with 2 CPUs (of the machine's 2 cores)."""
    tmp = Path(tempfile.mkdtemp(prefix="mcray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    c = Cluster(tmp)
    try:
        c.start("--head", "--port", str(c.port), "--num-cpus", "2", "--include-dashboard", "false")
        c.start("--address", c.address, "--num-cpus", "2")
        c.wait_nodes(2)
        yield c
    finally:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def driver(cluster: Cluster) -> Iterator[str]:
    """This process as a driver of the cluster for the in-process runs (one Ray job: its workers, torch
    imported once, serve every run); yields the address."""
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


def _keys(rows: list[dict]) -> list[str]:
    return [item_key(r["path"], r["frame"]) for r in rows]


def _cli(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medclass", "score", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _copies(kermany: Path, folder: Path, n: int) -> int:
    """``n`` Kermany radiographs copied under distinct names (enough blocks to kill something mid-run)."""
    folder.mkdir(parents=True)
    files = kermany_jpegs(kermany, 8)
    for i in range(n):
        shutil.copy(files[i % len(files)], folder / f"x{i:03d}.jpeg")
    return n


# --- the same rows as the local engine ---------------------------------------------------------------------
def test_ray_engine_writes_the_rows_of_the_local_engine(
    driver: str, ckpt: Path, kermany: Path, dicom_samples: Path, tmp_path: Path, capsys
) -> None:
    make_inputs(tmp_path / "in", kermany, dicom_samples)
    common = ["score", "--checkpoint", str(ckpt), str(tmp_path / "in"), "--batch-size", "2", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "local.csv"), "--workers", "0"]) == ExitCode.PARTIAL
    code = main([*common, "--out", str(tmp_path / "ray.csv"), "--engine", "ray", "--ray-address", driver])
    out = capsys.readouterr().out
    assert code == ExitCode.PARTIAL, out
    local, remote = read_scores(tmp_path / "local.csv"), read_scores(tmp_path / "ray.csv")
    assert len(local) == 9 and remote == local  # same rows, same order, error rows included
    assert not (tmp_path / "ray.csv.parts").exists()  # merged and removed
    assert (tmp_path / "ray.studies.csv").read_text() == (tmp_path / "local.studies.csv").read_text()
    assert "ray: " in out and "scored 7, skipped 0 (already done), failed 2" in out

    # the exported ONNX model in the actors, into parquet; decoding ran in other processes than the model
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(onnx)]) == 0
    from medclass.score import ScoreConfig, run_scoring

    report = run_scoring(
        ScoreConfig(
            [tmp_path / "in"],
            tmp_path / "onnx.parquet",
            backend="onnxruntime",
            onnx=onnx,
            checkpoint=ckpt,
            batch_size=3,
            engine="ray",
            ray_address=driver,
        )
    )
    rows = read_scores(tmp_path / "onnx.parquet")
    assert _keys(rows) == _keys(local)
    for a, b in zip(rows, local, strict=True):
        assert (a["error"] == "") == (b["error"] == "")
        if not a["error"]:
            assert float(a["prob:PNEUMONIA"]) == pytest.approx(float(b["prob:PNEUMONIA"]), abs=1e-4)
    s = report.settings
    assert s["engine"] == "ray" and report.counts.scored == 7 and report.counts.failed == 2
    assert not set(s["decode_pids"]) & set(s["model_pids"]), "decoding ran inside the model actor"


# --- exactly once when Ray retries -------------------------------------------------------------------------
def test_sigkill_of_ray_workers_mid_run_every_input_exactly_once(
    cluster: Cluster, ckpt: Path, kermany: Path, tmp_path: Path
) -> None:
    n = _copies(kermany, tmp_path / "in", 16)
    out = tmp_path / "scores.csv"
    env = dict(os.environ, **ENV)
    driver = _cli("--checkpoint", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--engine", "ray",
                  "--ray-address", cluster.address, "--batch-size", "2", "--no-progress", env=env)  # fmt: skip
    killed: set[str] = set()
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and len(killed) < 2:
            parts = list((tmp_path / "scores.csv.parts").glob("part-*.jsonl"))
            if parts:  # the actor has written blocks: kill it (Ray restarts it) and a running decode task
                for title in ("ScoreBlock", "decode_block"):
                    pids = cluster.pids(title) if title not in killed else []
                    if pids:
                        os.kill(pids[0], signal.SIGKILL)
                        killed.add(title)
            time.sleep(0.2)
        text, _ = driver.communicate(timeout=400)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    assert "ScoreBlock" in killed, f"no model actor was found to kill: {killed}\n{text[-3000:]}"
    assert driver.returncode == 0, text[-3000:]
    keys = _keys(read_scores(out))
    assert len(keys) == len(set(keys)) == n, "an input is missing or was scored twice"
    assert f"scored {n}, skipped 0" in text


def test_sigkill_of_the_driver_then_resume_exactly_once(
    cluster: Cluster, ckpt: Path, kermany: Path, tmp_path: Path
) -> None:
    n = _copies(kermany, tmp_path / "in", 16)
    out = tmp_path / "scores.jsonl"
    env = dict(os.environ, **ENV)
    args = ["--checkpoint", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--engine", "ray",
            "--ray-address", cluster.address, "--batch-size", "2", "--no-progress"]  # fmt: skip
    driver = _cli(*args, env=env)
    parts_dir = tmp_path / "scores.jsonl.parts"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and len(list(parts_dir.glob("*.jsonl"))) < 2:
            time.sleep(0.1)
        assert driver.poll() is None, "the run ended before it could be killed"
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    assert not out.exists()  # the merge never ran
    time.sleep(3)  # Ray notices the dead driver and stops its actors
    done = sum(len(p.read_text().splitlines()) for p in parts_dir.glob("part-*.jsonl"))
    assert 0 < done < n
    again = subprocess.run([sys.executable, "-m", "medclass", "score", *args, "--resume"], env=env,
                           capture_output=True, text=True, timeout=400)  # fmt: skip
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    keys = _keys(read_scores(out))
    assert len(keys) == len(set(keys)) == n, "an input is missing or was scored twice"
    skipped = int(again.stdout.split("skipped ")[1].split()[0])
    assert skipped >= done and f"scored {n - skipped}, skipped {skipped}" in again.stdout
    assert not parts_dir.exists()


def test_an_input_that_kills_its_decode_worker_is_a_failed_row_not_a_hang(
    driver: str, ckpt: Path, kermany: Path, tmp_path: Path
) -> None:
    """Ray retries a task whose worker died, forever by default: the retry decodes the block in a child
    process, where the input that kills it becomes a failed row (as in the local engine)."""
    import test_score
    from ray import cloudpickle

    from medclass.preprocess import Preprocessor
    from medclass.score import DecisionRule, ScoreConfig, ScoreJob, ScoreOutput, expand_inputs, score_columns
    from medclass.score.ray_engine import run_on_ray
    from medclass.weights import read_meta

    cloudpickle.register_pickle_by_value(test_score)  # the crashing preprocessor travels to the workers
    n = _copies(kermany, tmp_path / "in", 6)
    meta = read_meta(ckpt)
    rule = DecisionRule.from_meta(meta)
    config = ScoreConfig([tmp_path / "in"], tmp_path / "s.csv", checkpoint=ckpt, batch_size=2, engine="ray",
                         ray_address=driver)  # fmt: skip
    output = ScoreOutput(config.out, "csv", score_columns(rule.classes))
    items = expand_inputs(config.paths)
    crash = _CrashOn("x003.jpeg", Preprocessor.from_meta(meta))
    counts, _ = run_on_ray(ScoreJob(config, meta, None, rule, items, output, preprocessor=crash))
    rows = output.finalize([i.key for i in items])
    assert (counts.scored, counts.failed) == (n - 1, 1)
    assert _keys(rows) == [i.key for i in items]
    (bad,) = [r for r in rows if r["error"]]
    assert Path(bad["path"]).name == "x003.jpeg" and "crashed the worker process twice" in bad["error"]


# --- two nodes -------------------------------------------------------------------------------------------
def test_two_nodes_both_do_work_and_every_input_once(
    driver: str, ckpt: Path, kermany: Path, tmp_path: Path, capsys
) -> None:
    n = _copies(kermany, tmp_path / "in", 12)
    out = tmp_path / "scores.csv"
    code = main(["score", "--checkpoint", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--engine", "ray",
                 "--ray-address", driver, "--actors", "2", "--threads", "1", "--batch-size", "2",
                 "--no-progress"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == ExitCode.OK, text
    assert "ray: 2 node(s) decoded, 2 scored" in text, text
    keys = _keys(read_scores(out))
    assert len(keys) == len(set(keys)) == n
