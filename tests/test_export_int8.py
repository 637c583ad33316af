"""``medclass export --quantize int8``: calibrated on real images, guarded against fp32, scored by onnxruntime."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_export import SCORE_OPTS, jpeg_folder
from test_score import make_checkpoint

from medclass.cli import ExitCode, main
from medclass.score import read_scores

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "data_manifests" / "kermany_cxr.csv"
N_CAL = 12


def _export(ckpt: Path, out: Path, data_root: Path, *extra: str) -> int:
    return main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int8",
                 "--calibration", str(MANIFEST), "--data-root", str(data_root),
                 "--calibration-images", str(N_CAL), *extra])  # fmt: skip


@pytest.fixture(scope="module")
def int8(tmp_path_factory, shared_data: Path) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("int8")
    ckpt = make_checkpoint(folder / "tiny")
    out = folder / "model.int8.onnx"
    # a random network is not a trained one: the guard may refuse it, so --force (its verdict is recorded)
    assert _export(ckpt, out, shared_data, "--force") == ExitCode.OK
    return ckpt, out


@pytest.mark.realdata
def test_int8_export_is_quantized_and_records_its_guard(int8: tuple[Path, Path]) -> None:
    import onnx

    ckpt, out = int8
    side = json.loads(out.with_name(out.name + ".json").read_text())
    assert side["precision"] == "int8"
    q = side["quantization"]
    assert q["dtype"] == "int8" and q["calibration_split"] == "val"
    assert Path(q["calibration_manifest"]) == MANIFEST
    g = q["guard"]
    assert g["images"] == N_CAL
    assert g["max_abs_prob_diff"] >= g["mean_abs_prob_diff"] >= 0
    assert g["max_auc_drop_allowed"] == 0.002 and g["max_abs_prob_diff_allowed"] == 0.05
    assert g["passed"] == (
        g["max_abs_prob_diff"] <= 0.05 and (g["auc_drop"] is None or g["auc_drop"] <= 0.002)
    )
    assert q["forced"] == (not g["passed"])
    # both quantizers were measured and the kept one is the better by the guard's order
    assert set(q["candidates"]) == {"nncf", "onnxruntime"} and q["quantizer"] in q["candidates"]
    other = next(k for k in q["candidates"] if k != q["quantizer"])
    from medclass.quantize import better

    def full(c: dict) -> dict:
        ok = c["max_abs_prob_diff"] <= 0.05 and (c["auc_drop"] is None or c["auc_drop"] <= 0.002)
        return {**c, "passed": ok}

    kept, rival = full(q["candidates"][q["quantizer"]]), full(q["candidates"][other])
    assert kept["max_abs_prob_diff"] == g["max_abs_prob_diff"] and not better(rival, kept)
    if g["auc_drop"] is not None:
        assert g["auc_drop"] == pytest.approx(g["auc_fp32"] - g["auc_int8"])
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert out.stat().st_size < ckpt.with_suffix(".safetensors").stat().st_size / 3  # int8 weights


@pytest.mark.realdata
def test_score_with_int8_prints_the_guard_and_stays_close(
    int8: tuple[Path, Path], kermany: Path, tmp_path: Path, capsys
) -> None:
    ckpt, out = int8
    folder = jpeg_folder(kermany, tmp_path / "in", 4)
    common = SCORE_OPTS
    a, b = tmp_path / "torch.csv", tmp_path / "int8.csv"
    assert main(["score", "--checkpoint", str(ckpt), str(folder), "--out", str(a), *common]) == ExitCode.OK
    capsys.readouterr()
    assert main(["score", "--backend", "onnxruntime", "--onnx", str(out), str(folder), "--out", str(b),
                 *common]) == ExitCode.OK  # fmt: skip
    err = capsys.readouterr().err
    assert f"int8 vs fp32 on {N_CAL} calibration images (val split, quantizer " in err
    assert "precision=int8" in err
    ra, rb = read_scores(a), read_scores(b)
    assert [r["path"] for r in ra] == [r["path"] for r in rb]
    diffs = [
        abs(float(x["prob:PNEUMONIA"]) - float(y["prob:PNEUMONIA"])) for x, y in zip(ra, rb, strict=True)
    ]
    assert max(diffs) < 0.5  # int8, not garbage: the same model's probabilities, slightly moved
    assert all(not r["error"] for r in rb)
    if importlib.util.find_spec("openvino") is not None:  # the same int8 graph run by OpenVINO
        c = tmp_path / "int8-ov.csv"
        assert main(["score", "--backend", "openvino", "--onnx", str(out), str(folder), "--out", str(c),
                     *common]) == ExitCode.OK  # fmt: skip
        rc = read_scores(c)
        gap = max(
            abs(float(x["prob:PNEUMONIA"]) - float(y["prob:PNEUMONIA"])) for x, y in zip(rb, rc, strict=True)
        )
        assert gap < 0.05, gap


@pytest.mark.realdata
def test_guard_refusal_writes_nothing_and_keeps_the_previous_export(
    int8: tuple[Path, Path], shared_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from medclass import quantize

    ckpt, good = int8
    out = tmp_path / "m.onnx"
    shutil.copy(good, out)
    shutil.copy(good.with_name(good.name + ".json"), out.with_name(out.name + ".json"))
    before = out.read_bytes()
    real = quantize.guard

    def failing(*args, **kwargs):
        return real(*args, **{**kwargs, "max_prob_diff": -1.0})  # any change is too much

    monkeypatch.setattr(quantize, "guard", failing)
    assert _export(ckpt, out, shared_data) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert "over the limit, not written" in err and "--force" in err and "max |Δprob|" in err
    (line,) = [
        x for x in err.splitlines() if x.startswith("medclass export: error:")
    ]  # one line, no traceback
    assert "--force" in line and "Traceback" not in err
    assert out.read_bytes() == before  # the previous export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]


def _tiny_onnx(classes: int = 2) -> bytes:
    import io

    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, classes),
    ).eval()  # fmt: skip
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), buf, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)  # fmt: skip
    return buf.getvalue()


def test_guard_measures_auc_drop_and_probability_change() -> None:
    from medclass import quantize

    fp32 = _tiny_onnx()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1] * 10)
    same = quantize.guard(fp32, fp32, x, y, task="multiclass")
    assert same["auc_drop"] == 0 and same["max_abs_prob_diff"] == 0 and same["passed"]
    int8 = quantize.quantize_int8(fp32, x)
    g = quantize.guard(fp32, int8, x, y, task="multiclass")
    assert 0 < g["max_abs_prob_diff"] < 0.5 and g["images"] == 20
    strict = quantize.guard(fp32, int8, x, y, task="multiclass", max_prob_diff=0.0)
    assert not strict["passed"]
    assert quantize.better(g, strict) and not quantize.better(strict, g)  # passing wins
    ort8 = quantize.quantize_int8(fp32, x, "onnxruntime")
    assert quantize.guard(fp32, ort8, x, y, task="multiclass")["max_abs_prob_diff"] < 0.5
    one_class = quantize.guard(fp32, fp32, x, np.zeros(20, dtype=int), task="multiclass")
    assert one_class["auc_drop"] is None and one_class["passed"]  # no AUC without both classes
    assert "AUC not measured" in quantize.describe({"guard": one_class, "calibration_split": "val"})


def test_auc_for_each_task() -> None:
    from medclass.quantize import _auc

    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[y] * 0.8 + 0.2 / 3
    assert _auc(y, probs, "multiclass", 1) == 1.0
    assert _auc(np.array([0, 1, 0, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]]),
                "multiclass", 1) == 0.75  # fmt: skip
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    assert _auc(labels, np.array([[0.9, 0.5], [0.1, 0.5], [0.8, 0.5], [0.2, 0.5]]), "multilabel", 1) == 1.0


def test_quantize_flags_need_each_other(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "none"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"),
                 "--quantize", "int8"]) == ExitCode.ERROR  # fmt: skip
    assert "--quantize int8 needs --calibration MANIFEST" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"),
                 "--force"]) == ExitCode.ERROR  # fmt: skip
    assert "go with --quantize int8" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
