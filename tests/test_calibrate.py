"""medclass.calibrate and its wiring: fitted on validation logits, stored in the sidecar, applied by the one
predictor (evaluate, score, explain, export), ``--no-calibration`` for the raw probabilities.

The fitting tests use synthetic logits whose distortion is known; the wiring tests a random 2-class
Inception V3 at 75 px (initialised so that its probabilities are spread out) on small generated PNGs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from medclass.calibrate import Calibration, check, fit_calibration, from_meta, scores
from medclass.errors import CheckpointError, ConfigError

CLASSES = ["normal", "opacity"]
SIZE = 75


def _binary(n: int, seed: int, *, distort) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(logits N×2, labels, true log-odds)``: labels drawn from sigmoid(true), logits = distort(true)."""
    rng = np.random.default_rng(seed)
    s = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-s))).astype(int)
    return np.stack([np.zeros(n), distort(s)], 1), y, s


# --- fitting on synthetic logits --------------------------------------------------------------------------
def test_temperature_recovers_a_known_temperature():
    z, y, _ = _binary(6000, 0, distort=lambda s: 3.0 * s)  # 3× over-confident
    cal = fit_calibration(z, y, "multiclass", method="temperature")
    assert cal.params["temperature"] == pytest.approx(3.0, rel=0.08)
    rng = np.random.default_rng(1)  # 4 exclusive classes, one shared T
    true = rng.normal(0, 1.2, (6000, 4))
    p = np.exp(true) / np.exp(true).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    cal4 = fit_calibration(2.5 * true, labels, "multiclass")
    assert cal4.method == "temperature" and cal4.params["temperature"] == pytest.approx(2.5, rel=0.08)
    ml = fit_calibration(
        3.0 * true[:, :2], (rng.random((6000, 2)) < 1 / (1 + np.exp(-true[:, :2]))), "multilabel"
    )
    assert ml.method == "temperature" and ml.params["temperature"] == pytest.approx(3.0, rel=0.1)


def test_auto_picks_a_monotone_map_by_held_out_nll_and_lowers_test_ece():
    def distort(s):
        return 4.0 * s + 2.0  # over-confident and shifted: temperature alone cannot fix the shift

    z, y, _ = _binary(400, 2, distort=distort)
    zt, yt, _ = _binary(4000, 3, distort=distort)  # an independent test set from the same model
    cal = fit_calibration(z, y, "multiclass")
    sel = cal.record["selection"]
    assert set(sel["candidates"]) == {"none", "temperature", "platt", "isotonic"} and sel["folds"] == 5
    assert cal.method == min(sel["candidates"], key=lambda m: sel["candidates"][m]["nll"])
    assert cal.method in ("platt", "isotonic")  # the shift needs an intercept
    grid = np.stack([np.zeros(200), np.linspace(-20, 20, 200)], 1)
    assert np.all(np.diff(cal.probabilities(grid)[:, 1]) >= 0)  # monotone: AUC unchanged
    raw = Calibration("none", "multiclass", 2)
    before, after = (
        scores(yt, raw.probabilities(zt), "multiclass"),
        scores(yt, cal.probabilities(zt), "multiclass"),
    )
    assert after["ece"] < 0.5 * before["ece"] and after["nll"] < before["nll"]
    assert cal.record["n"] == 400 and cal.record["class_counts"] == np.bincount(y).tolist()
    assert cal.record["validation"]["calibrated"]["nll"] < cal.record["validation"]["raw"]["nll"]


def test_isotonic_overfits_a_small_set_and_is_not_chosen_for_it():
    """In-sample isotonic always looks best; held out on 40 cases it loses to a 1-2 parameter map."""
    z, y, _ = _binary(40, 4, distort=lambda s: 3.0 * s)
    cal = fit_calibration(z, y, "multiclass")
    iso = fit_calibration(z, y, "multiclass", method="isotonic")
    assert iso.record["validation"]["calibrated"]["ece"] <= cal.record["validation"]["calibrated"]["ece"]
    assert cal.method in ("temperature", "platt")
    assert np.all((iso.probabilities(z) > 0) & (iso.probabilities(z) < 1))  # never exactly 0 or 1


def test_too_few_cases_keeps_raw_and_separated_sets_stay_finite():
    z = np.array([[0.0, 50.0], [0.0, 40.0], [0.0, -30.0], [0.0, -60.0], [0.0, 35.0]])
    y = np.array([1, 1, 0, 0, 1])
    cal = fit_calibration(z[[0, 1, 2, 4]], y[[0, 1, 2, 4]], "multiclass")  # one negative: nothing held out
    assert cal.method == "none" and "too few" in cal.record["selection"]["reason"]
    platt = fit_calibration(z, y, "multiclass", method="platt")  # perfectly separated, saturated logits
    assert np.isfinite(platt.params["slope"]) and 0 < platt.probabilities(z)[2, 1] < 0.5
    with pytest.raises(ConfigError, match="binary tasks only"):
        fit_calibration(np.zeros((6, 3)), np.arange(6) % 3, "multiclass", method="platt")


def test_check_refuses_malformed_records():
    good = fit_calibration(*_binary(200, 5, distort=lambda s: 2 * s)[:2], "multiclass").to_dict()
    assert check(good, 2, "multiclass") is None
    assert "not this model's" in check(good, 3, "multiclass")
    assert "positive number" in check({**good, "method": "temperature", "params": {"temperature": -1}})
    assert "parameters" in check({**good, "method": "platt", "params": {"slope": 1.0}})
    assert "format" in check({**good, "format": 99})
    bad_iso = {**good, "method": "isotonic", "params": {"x": [0.0, 1.0], "y": [0.9, 0.1]}}
    assert "non-decreasing" in check(bad_iso)
    again = Calibration.from_dict(json.loads(json.dumps(good)))
    z = np.random.default_rng(0).normal(0, 3, (10, 2))
    assert np.allclose(again.probabilities(z), Calibration.from_dict(good).probabilities(z))


# --- wiring: a tiny checkpoint and generated images -------------------------------------------------------
def _png(path: Path, blob: bool, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :48]
    img = 40 + rng.normal(0, 8, (48, 48)) + (150 * (((yy - 24) ** 2 + (xx - 24) ** 2) < 49) if blob else 0)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


def _checkpoint(stem: Path) -> Path:
    """Random init with He convolutions and a unit-variance head: probabilities spread out, not 0/1."""
    import torch

    from medclass import checkpoint
    from medclass.model import create_model
    from medclass.preprocess import input_spec

    torch.manual_seed(0)
    model = create_model(2, image_size=SIZE)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=1.0)
            torch.nn.init.zeros_(m.bias)
    meta = {"classes": CLASSES, "task": "multiclass", "positive_class": "opacity", "window": "auto",
            "fit": "letterbox", "input": dataclasses.asdict(input_spec(image_size=SIZE))}  # fmt: skip
    checkpoint.save(stem, model.eval(), meta)
    return stem


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """data/m.csv: 16 val and 8 test images, labelled so that the random model ranks them fairly well
    (the upper half of its log-odds is ``opacity``, with 2 swaps per split): a model worth calibrating."""
    root = tmp_path_factory.mktemp("cal_data")
    files = [root / f"i{i:02d}.png" for i in range(24)]
    for i, f in enumerate(files):
        _png(f, i % 2 == 0, i)
    z = _logits(_checkpoint(tmp_path_factory.mktemp("probe") / "ck"), files)
    s = z[:, 1] - z[:, 0]
    lines = ["path,patient_id,split,label"]
    for part, split in ((slice(0, 16), "val"), (slice(16, 24), "test")):
        idx = np.arange(24)[part]
        order = idx[np.argsort(s[idx])]
        up = set(order[len(order) // 2 :].tolist()) ^ {order[0], order[-1]}  # swap the two extremes
        lines += [f"{files[i].name},p{i:02d},{split},{CLASSES[int(i in up)]}" for i in idx]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root / "m.csv"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, data: Path) -> Path:
    """A checkpoint calibrated with ``medclass calibrate --method temperature`` (an operating point from an
    earlier evaluate was stored first: calibrating removes it)."""
    from medclass import checkpoint
    from medclass.cli import main

    stem = _checkpoint(tmp_path_factory.mktemp("cal_ckpt") / "ck")
    checkpoint.update_meta(stem, {"operating_point": {"opacity": {"threshold": 0.5}}})
    before = checkpoint.file_sha256(Path(f"{stem}.safetensors"))
    argv = ["calibrate", "--checkpoint", str(stem), "--manifest", str(data), "--data-root", str(data.parent),
            "--method", "temperature"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads(Path(f"{stem}.json").read_text())
    assert checkpoint.file_sha256(Path(f"{stem}.safetensors")) == before == meta["sha256"]
    assert "operating_point" not in meta
    return stem


@pytest.mark.slow
def test_calibrate_command_stores_a_valid_record_and_keeps_the_weights(calibrated: Path, capsys):
    from medclass import checkpoint

    ck = checkpoint.load(calibrated)  # verified sha, validated sidecar
    doc = ck.meta["calibration"]
    assert doc["method"] == "temperature" and doc["split"] == "val" and doc["n"] == 16
    assert doc["class_counts"] == [8, 8] and doc["selection"]["requested"] == "temperature"
    assert set(doc["validation"]) == {"raw", "calibrated"}
    cal = from_meta(ck.meta)
    assert cal is not None and cal.params["temperature"] > 0
    with pytest.raises(CheckpointError, match="calibration"):  # refused before it is written
        checkpoint.update_meta(calibrated, {"calibration": {**doc, "n_classes": 3}})


def _images(data: Path, n: int) -> list[Path]:
    return sorted(data.parent.glob("i*.png"))[:n]


def _logits(stem: Path, files: list[Path]) -> np.ndarray:
    from medclass import checkpoint, ingest
    from medclass.model.predictor import TorchPredictor
    from medclass.preprocess import Preprocessor

    ck = checkpoint.load(stem)
    pre = Preprocessor.from_meta(ck.meta)
    x = np.stack([pre(ingest.read(f)[0]).array for f in files])  # N×3×S×S
    return TorchPredictor(ck.model, "multiclass").logits(x).numpy()


def _scores(stem: Path, files: list[Path], out: Path, *extra: str) -> dict[str, np.ndarray]:
    from medclass.cli import main

    argv = ["score", "--checkpoint", str(stem), *map(str, files), "--out", str(out), "--workers", "0",
            "--no-progress", *extra]  # fmt: skip
    assert main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    return {Path(r["path"]).name: np.array([float(r[f"prob:{c}"]) for c in CLASSES]) for r in rows}


@pytest.mark.slow
def test_score_applies_the_calibration_unless_told_not_to(calibrated: Path, data: Path, tmp_path: Path):
    from medclass import checkpoint

    files = _images(data, 4)
    cal = from_meta(checkpoint.load(calibrated).meta)
    z = _logits(calibrated, files)
    by_hand = dict(zip((f.name for f in files), cal.probabilities(z), strict=True))
    raw_by_hand = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    got = _scores(calibrated, files, tmp_path / "cal.csv")
    raw = _scores(calibrated, files, tmp_path / "raw.csv", "--no-calibration")
    for i, f in enumerate(files):
        np.testing.assert_allclose(got[f.name], by_hand[f.name], atol=1e-5)
        np.testing.assert_allclose(raw[f.name], raw_by_hand[i], atol=1e-5)
    assert max(np.abs(got[f.name] - raw[f.name]).max() for f in files) > 1e-3
    assert {r["probability_scale"] for r in csv.DictReader((tmp_path / "cal.csv").open())} == {"calibrated"}
    assert {r["probability_scale"] for r in csv.DictReader((tmp_path / "raw.csv").open())} == {"raw"}


@pytest.mark.slow
def test_resume_never_mixes_calibrated_and_raw_rows(calibrated: Path, data: Path, tmp_path: Path, capsys):
    from medclass.cli import main

    files = _images(data, 4)
    out = tmp_path / "s.csv"
    _scores(calibrated, files[:2], out)
    before = out.read_bytes()
    argv = ["score", "--checkpoint", str(calibrated), *map(str, files), "--out", str(out), "--workers", "0",
            "--no-progress", "--resume"]  # fmt: skip
    capsys.readouterr()
    assert main([*argv, "--no-calibration"]) == 1
    err = capsys.readouterr().err
    assert "holds calibrated probabilities and this run gives raw ones (--no-calibration given)" in err
    assert out.read_bytes() == before  # refused before anything was written
    assert main(argv) == 0  # the same setting resumes
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and {r["probability_scale"] for r in rows} == {"calibrated"}


@pytest.mark.slow
def test_evaluate_reports_raw_and_calibrated_and_attaches_a_calibrated_threshold(
    calibrated: Path, data: Path, tmp_path: Path, capsys
):
    from sklearn.metrics import roc_auc_score

    from medclass.cli import main
    from medclass.score.decide import DecisionRule
    from medclass.weights import read_meta

    out = tmp_path / "ev"
    argv = ["evaluate", "--checkpoint", str(calibrated), "--manifest", str(data), "--data-root",
            str(data.parent), "--bootstrap", "50", "--level", "image"]  # fmt: skip
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "raw → calibrated (temperature)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["checkpoint_calibration"]
    assert metrics["probability_scale"] == "calibrated" and block["method"] == "temperature"
    for split in ("val", "test"):
        assert set(block["splits"][split]) == {"raw", "calibrated"}
        assert set(block["splits"][split]["raw"]) == {"nll", "ece", "brier"}
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    y = [r["label"] == "opacity" for r in rows]
    cal_auc = roc_auc_score(y, [float(r["prob:opacity"]) for r in rows])
    assert cal_auc == pytest.approx(roc_auc_score(y, [float(r["raw:opacity"]) for r in rows]))
    assert "Calibrated probabilities" in (out / "report.html").read_text()
    assert "| test | calibrated |" in (out / "calibration.md").read_text()
    meta = read_meta(calibrated)
    assert meta["operating_point"]["opacity"]["scale"] == "calibrated"
    assert DecisionRule.from_meta(meta).name == "operating_point"
    assert DecisionRule.from_meta(meta, calibrated=False).name == "argmax"  # not on raw scores
    assert json.loads((out / "operating_point.json").read_text())["scale"] == "calibrated"
    # --no-calibration: raw probabilities, and their threshold does not replace the calibrated one
    assert main([*argv, "--out", str(tmp_path / "raw"), "--no-calibration"]) == 0
    assert "operating point not stored" in capsys.readouterr().out
    raw_metrics = json.loads((tmp_path / "raw" / "metrics.json").read_text())
    assert raw_metrics["probability_scale"] == "raw" and not raw_metrics["checkpoint_calibration"]["applied"]
    assert read_meta(calibrated)["operating_point"] == meta["operating_point"]


@pytest.mark.slow
def test_an_old_checkpoint_without_calibration_predicts_raw_with_one_notice(
    tmp_path: Path, data: Path, caplog
):
    stem = _checkpoint(tmp_path / "old")
    files = _images(data, 2)
    z = _logits(stem, files)
    with caplog.at_level(logging.INFO, logger="medclass"):
        got = _scores(stem, files, tmp_path / "s.csv")
    notices = [r for r in caplog.records if "holds no calibration" in r.getMessage()]
    assert len(notices) <= 1 and all("\n" not in r.getMessage() for r in notices)
    raw = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    for i, f in enumerate(files):
        np.testing.assert_allclose(got[f.name], raw[i], atol=1e-5)


@pytest.mark.slow
def test_explain_shows_calibrated_probabilities(calibrated: Path, data: Path):
    from medclass import checkpoint, ingest
    from medclass.explain import Explainer
    from medclass.preprocess import Preprocessor

    ck = checkpoint.load(calibrated)
    pre = Preprocessor.from_meta(ck.meta)
    files = _images(data, 2)
    x = np.stack([pre(ingest.read(f)[0]).array for f in files])
    z = _logits(calibrated, files)
    cal = Explainer(ck.model, task=ck.task, calibration=from_meta(ck.meta)).explain(x)
    raw = Explainer(ck.model, task=ck.task).explain(x)
    np.testing.assert_allclose(cal.probabilities, from_meta(ck.meta).probabilities(z), atol=1e-4)
    np.testing.assert_allclose(raw.probabilities, np.exp(z) / np.exp(z).sum(1, keepdims=True), atol=1e-4)
    np.testing.assert_allclose(cal.maps, raw.maps, atol=1e-6)  # maps follow the logits


@pytest.mark.slow
def test_export_carries_the_calibration_and_onnxruntime_applies_it(
    calibrated: Path, data: Path, tmp_path: Path
):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from medclass import checkpoint
    from medclass.export import export_onnx, read_sidecar

    onnx_path = tmp_path / "m.onnx"
    export_onnx(calibrated, onnx_path)
    assert read_sidecar(onnx_path)["calibration"] == checkpoint.load(calibrated).meta["calibration"]
    files = _images(data, 3)
    torch_scores = _scores(calibrated, files, tmp_path / "t.csv")
    onnx_scores = _scores(
        calibrated, files, tmp_path / "o.csv", "--backend", "onnxruntime", "--onnx", str(onnx_path)
    )
    raw = _scores(calibrated, files, tmp_path / "r.csv", "--backend", "onnxruntime", "--onnx", str(onnx_path),
                  "--no-calibration")  # fmt: skip
    for f in files:
        np.testing.assert_allclose(onnx_scores[f.name], torch_scores[f.name], atol=1e-4)
    assert max(np.abs(onnx_scores[f.name] - raw[f.name]).max() for f in files) > 1e-3


def test_multilabel_record_is_valid():
    rng = np.random.default_rng(7)
    z = rng.normal(0, 2, (60, 3))
    y = (rng.random((60, 3)) < 1 / (1 + np.exp(-z / 2))).astype(int)
    cal = fit_calibration(z, y, "multilabel", positive=1)
    assert check(cal.to_dict(), 3, "multilabel") is None and cal.record["class_counts"] == y.sum(0).tolist()
    one = fit_calibration(z[:, :1], y[:, :1], "multilabel", method="platt")  # one sigmoid output: binary
    assert check(one.to_dict(), 1, "multilabel") is None and one.probabilities(z[:, :1]).shape == (60, 1)


@pytest.mark.slow
def test_explain_cli_shows_calibrated_probabilities_unless_told_not_to(
    calibrated: Path, data: Path, tmp_path: Path
):
    from medclass.cli import main

    (f,) = _images(data, 1)
    z = _logits(calibrated, [f])
    want = {"": from_meta(json.loads(Path(f"{calibrated}.json").read_text())).probabilities(z)[0],
            "--no-calibration": (np.exp(z) / np.exp(z).sum(1, keepdims=True))[0]}  # fmt: skip
    for flag, expected in want.items():
        out = tmp_path / (flag or "cal")
        argv = [
            "explain",
            "--checkpoint",
            str(calibrated),
            str(f),
            "--out",
            str(out),
            "--no-pdf",
            *filter(None, [flag]),
        ]
        assert main(argv) == 0
        doc = json.loads((out / "explanations.json").read_text())
        assert doc["probability_scale"] == ("raw" if flag else "calibrated")
        (row,) = doc["images"]
        np.testing.assert_allclose([row[f"prob:{c}"] for c in CLASSES], expected, atol=1e-5)
