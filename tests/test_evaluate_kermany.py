"""Acceptance: `evaluate` on a model trained on the real Kermany CXR manifest writes report.html, which
headless Chromium renders without console errors and with the ROC figure on screen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import _blue_pixels, _console_errors, _render

from medclass.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_evaluate_kermany_trained_model_report_renders(shared_data, tmp_path, capsys):
    manifest = REPO / "data_manifests" / "kermany_cxr.csv"
    run = tmp_path / "run"
    # a short real training run: small input for CI, --fit crop (letterbox bars would leak aspect ratio)
    code = main(["train", "--manifest", str(manifest), "--data-root", str(shared_data), "--out", str(run),
                 "--image-size", "96", "--epochs", "1", "--batch-size", "16", "--fit", "crop",
                 "--workers", "1", "--no-progress"])  # fmt: skip
    assert code == 0
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(run / "best"), "--manifest", str(manifest),
                 "--data-root", str(shared_data), "--out", str(out), "--bootstrap", "200"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "AUC" in printed and "report:" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["levels"]["image"]
    assert block["n_test"] == 34 and block["n_val"] == 34  # the manifest's patient split
    auc = block["classes"]["PNEUMONIA"]["auc"]
    assert auc is None or 0.0 <= auc <= 1.0
    assert metrics["threshold_rule"]["chosen_on"] == "validation"

    shot = tmp_path / "report.png"
    stderr = _render(out / "report.html", shot, tmp_path / "profile")
    assert _console_errors(stderr) == []
    assert _blue_pixels(shot) > 500  # the ROC curve and its legend are on screen
