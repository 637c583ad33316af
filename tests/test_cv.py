"""Cross-validation (issue 15, point 5): fold plans (manifest.folds), fold reports (report.cv) and
``medclass cv`` end to end on a tiny PNG set."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from test_dataset import make_png_set

from medclass import calibrate
from medclass.cli import main
from medclass.errors import DataError
from medclass.manifest import load_manifest, write_manifest
from medclass.manifest.folds import assign_folds, cv_plan, cv_pool
from medclass.report.cv import cv_markdown, summarize_folds, write_cv
from medclass.weights import read_meta


def synthetic_manifest(folder: Path, n_patients: int = 60, images: int = 2, n_test: int = 10) -> Path:
    """Rows only (no image files): ``images`` per patient, 30% positive patients, the last ``n_test``
    patients in the test split."""
    records = []
    for p in range(n_patients):
        label = "pneumonia" if p % 10 < 3 else "normal"
        split = "test" if p >= n_patients - n_test else ("val" if p % 5 == 0 else "train")
        for i in range(images):
            records.append(
                {"path": f"p{p}/i{i}.png", "patient_id": f"P{p:03d}", "split": split, "label": label}
            )
    path = folder / "m.csv"
    write_manifest(path, records)
    return path


# --- fold plans ----------------------------------------------------------------------------------------
def test_plan_is_patient_grouped_stratified_and_never_uses_test(tmp_path):
    manifest = load_manifest(synthetic_manifest(tmp_path))
    plan = cv_plan(manifest, 5, seed=3)
    test_patients = {r.patient_id for r in manifest.rows if r.split == "test"}
    assert len(plan.pool) == len(cv_pool(manifest)) == 100
    assert not {r.patient_id for r in plan.pool} & test_patients  # the test split is never in the pool
    # every patient in exactly one fold
    folds_of: dict[str, set[int]] = {}
    for r, f in zip(plan.pool, plan.fold_of_row, strict=True):
        folds_of.setdefault(r.patient_id, set()).add(f)
    assert all(len(v) == 1 for v in folds_of.values())
    # every row held out once and validated on once; the parts of a fold are disjoint and cover the pool
    held, validated = Counter(), Counter()
    for fold in plan.folds:
        parts = [set(fold.train), set(fold.val), set(fold.test)]
        assert sum(map(len, parts)) == len(plan.pool) and set.union(*parts) == set(range(len(plan.pool)))
        held.update(fold.test)
        validated.update(fold.val)
    assert set(held.values()) == {1} and set(validated.values()) == {1}
    # stratified: 15 of the 50 pool patients are positive (30 of 100 images), so about 6 images per fold
    for f in range(5):
        labels = [r.label for r, g in zip(plan.pool, plan.fold_of_row, strict=True) if g == f]
        assert 4 <= labels.count("pneumonia") <= 8, labels
    # deterministic in the seed
    assert cv_plan(manifest, 5, seed=3).fold_of_row == plan.fold_of_row
    assert cv_plan(manifest, 5, seed=4).fold_of_row != plan.fold_of_row


def test_plan_refuses_too_few_folds_or_patients(tmp_path):
    rows = load_manifest(synthetic_manifest(tmp_path, n_patients=6, n_test=2)).rows
    pool = [r for r in rows if r.split != "test"]
    with pytest.raises(DataError, match="at least 3"):
        assign_folds(pool, 2)
    with pytest.raises(DataError, match="only 4 patient_id value"):
        assign_folds(pool, 5)


# --- reports -------------------------------------------------------------------------------------------
def _rows() -> list[dict]:
    base = {"class": "pneumonia", "status": "ok", "n_train": 6, "n_val": 2, "n_test": 2}
    return [
        base | {"fold": 1, "auc": 0.9, "ece": 0.1, "brier": 0.1, "threshold": 0.4, "sensitivity": 0.8, "specificity": 0.7},
        base | {"fold": 2, "auc": 0.8, "ece": 0.2, "brier": 0.2, "threshold": 0.6, "sensitivity": 0.6, "specificity": 0.9},
        {"fold": 3, "class": "", "status": "failed", "error": "data: boom | bad"},
    ]  # fmt: skip


def test_summary_is_mean_and_sample_sd_over_finished_folds(tmp_path):
    summary = {s["metric"]: s for s in summarize_folds(_rows())}
    assert summary["auc"]["mean"] == pytest.approx(0.85) and summary["auc"]["n_folds"] == 2
    assert summary["auc"]["sd"] == pytest.approx(math.sqrt(0.005))  # ddof=1: sqrt(((.05)^2 * 2) / 1)
    assert summary["threshold"]["min"] == 0.4 and summary["threshold"]["max"] == 0.6
    md = cv_markdown(_rows(), list(summary.values()))
    assert "| **mean ± SD** (2 folds) | pneumonia |  | 0.850 ± 0.071 |" in md
    assert "failed: data: boom \\| bad" in md
    curves = {"pneumonia": [{"fold": 1, "fpr": [0, 0.5, 1], "tpr": [0, 0.9, 1]}]}
    paths = write_cv(tmp_path, {"schema": "medclass.cv/1"}, _rows(), curves)
    assert paths["figure"].read_bytes()[:4] == b"\x89PNG"
    doc = json.loads(paths["json"].read_text())
    assert doc["schema"] == "medclass.cv/1" and len(doc["folds"]) == 3 and doc["summary"]
    with paths["summary"].open() as fh:
        metrics = {r["metric"] for r in csv.DictReader(fh)}
    assert metrics == {"auc", "ece", "ece_raw", "brier", "threshold", "sensitivity", "specificity"}


# --- end to end ----------------------------------------------------------------------------------------
def tiny_set(root: Path) -> Path:
    """18 train+val PNGs (one per patient) and 4 test rows whose files do not exist: any use of a test
    row would fail the run."""
    manifest = make_png_set(root, n_train=12, n_val=6, size=48, seed=1)
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows += [{"path": f"missing_test_{i}.png", "patient_id": f"t{i}", "split": "test",
              "label": ("normal", "opacity")[i % 2]} for i in range(4)]  # fmt: skip
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _argv(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["cv", "--manifest", str(manifest), "--data-root", str(manifest.parent), "--out", str(out),
            "--folds", "3", "--image-size", "75", "--epochs", "1", "--batch-size", "4", "--bn-batches", "1", "--aux-weight", "0",
            "--warmup-epochs", "0", "--device", "cpu", "--workers", "0", "--no-progress", "--bootstrap", "20", "--calibration", "temperature",
            *extra]  # fmt: skip


@pytest.mark.slow
def test_cv_end_to_end_contained_and_resumable(tmp_path, capsys, monkeypatch):
    import medclass.evaluate
    import medclass.train

    manifest = tiny_set(tmp_path / "data")
    out = tmp_path / "cv"
    real_predict = medclass.evaluate.predict_manifest

    def predict_failing_fold_2(checkpoint, fold_manifest, *a, **k):
        if Path(fold_manifest).parent.name == "fold-2":
            raise DataError("planted failure", fold_manifest)
        return real_predict(checkpoint, fold_manifest, *a, **k)

    monkeypatch.setattr(medclass.evaluate, "predict_manifest", predict_failing_fold_2)
    assert main(_argv(manifest, out)) == 3  # fold 2 failed, folds 1 and 3 went on
    text = capsys.readouterr().out
    assert "fold 2/3: FAILED — data: " in text and "planted failure" in text
    assert "fold 1/3: done in" in text and "fold 3/3: done in" in text
    with (out / "cv_folds.csv").open() as fh:
        status = {r["fold"]: r["status"] for r in csv.DictReader(fh)}
    assert status == {"1": "ok", "2": "failed", "3": "ok"}
    # the test rows never reach a fold: every fold manifest is the 18 train+val rows, relabelled
    source = load_manifest(manifest)
    test_paths = {r.path for r in source.rows if r.split == "test"}
    for i in (1, 2, 3):
        fold = load_manifest(out / f"fold-{i}" / "manifest.csv")
        assert len(fold.rows) == 18 and not {r.path for r in fold.rows} & test_paths
        assert Counter(r.split for r in fold.rows) == {"train": 6, "val": 6, "test": 6}
        assert fold.data_root.resolve() == manifest.parent.resolve()  # recorded in its .meta.json

    # rerun: finished folds are kept (not retrained); fold 2, as if interrupted after its last epoch was
    # saved, continues its training from 'last' (no epoch left: nothing retrained) and is evaluated
    (out / "fold-2" / "trained.json").unlink()
    monkeypatch.setattr(medclass.evaluate, "predict_manifest", real_predict)
    real_train, calls = medclass.train.train, []

    def train_spy(config, *, resume=False, **k):
        calls.append((Path(config.out).parent.name, resume))
        return real_train(config, resume=resume, **k)

    monkeypatch.setattr(medclass.train, "train", train_spy)
    before = (out / "fold-2" / "run" / "best.safetensors").read_bytes()
    assert main(_argv(manifest, out)) == 0
    assert calls == [("fold-2", True)]
    assert (out / "fold-2" / "run" / "best.safetensors").read_bytes() == before
    text = capsys.readouterr().out
    assert "fold 1/3: finished earlier, kept" in text and "fold 3/3: finished earlier, kept" in text
    assert "fold 2/3: done in" in text and "opacity: auc " in text and "± " in text
    doc = json.loads((out / "cv.json").read_text())
    assert [f["status"] for f in doc["folds"]] == ["ok"] * 3
    auc = next(s for s in doc["summary"] if s["metric"] == "auc")
    assert auc["n_folds"] == 3 and 0 <= auc["mean"] <= 1 and auc["sd"] is not None
    for i, row in enumerate(doc["folds"], 1):
        scale = calibrate.scale(read_meta(out / f"fold-{i}" / "run" / "best"))  # train calibrates best
        assert row["class"] == "opacity" and 0 <= row["threshold"] <= 1 and row["probabilities"] == scale
        assert row["n_train"] == 6 and row["n_test"] == 6
        assert 0 <= row["ece"] <= 1 and 0 <= row["ece_raw"] <= 1
        # --calibration temperature: served probabilities are calibrated, raw ones come from the raw: columns
        assert scale == "calibrated" and row["ece_raw"] != row["ece"]
        assert "raw:opacity" in (out / f"fold-{i}" / "predictions.csv").read_text().splitlines()[0]
    assert {s["metric"] for s in doc["summary"]} >= {"ece", "ece_raw"}
    assert "mean ± SD" in (out / "cv.md").read_text() and (out / "cv.png").stat().st_size > 10_000
    # other settings in the same folder are refused before any work
    assert main(_argv(manifest, out, "--epochs", "2")) == 1
    assert "other settings (recipe.epochs: 1 → 2)" in capsys.readouterr().err
