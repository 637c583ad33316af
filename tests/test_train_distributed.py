"""``medclass train`` under ``torchrun --nproc-per-node 2`` on the CPU (gloo): one set of outputs, and a
validation AUC computed over every validation image exactly once despite DistributedSampler's padding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_dataset import make_png_set

REPO = Path(__file__).resolve().parents[1]


def test_setup_without_torchrun_is_single_process(monkeypatch):
    from medclass.train.distributed import setup, wrap

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    model = torch.nn.Linear(2, 2)
    assert wrap(model, ctx) is model


def test_cuda_asked_without_gpu_is_a_config_error():
    from medclass.errors import ConfigError
    from medclass.train.distributed import pick_device

    if torch.cuda.is_available():
        assert pick_device("cuda").type == "cuda"
    else:
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            pick_device("cuda")
    assert pick_device("cpu").type == "cpu"


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    # 5 validation images over 2 ranks: DistributedSampler pads rank 1 with a repeat of image 0.
    manifest = make_png_set(tmp_path / "data", n_train=8, n_val=5)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "medclass", "train", "--manifest", str(manifest), "--out", str(out), "--image-size", "75",
        "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--no-progress", "--workers", "0",
        "--cache", "disk", "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # rank 0 alone wrote the outputs and printed the summary
    assert proc.stdout.count("best epoch 1") == 1, proc.stdout
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "best.json", "best.safetensors", "config.yaml", "last.json", "last.safetensors",
        "last.state.json", "last.state.safetensors", "metrics.csv",
    ]  # fmt: skip
    from medclass.train.runfiles import read_metrics

    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 1 and rows[0]["val_count"] == 5
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 13  # rank 0 decoded, rank 1 read the cache
    assert "rank 1/2" in proc.stderr and "gloo" in proc.stderr
