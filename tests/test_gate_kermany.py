"""Measured on real data: a small model trained on the shared Kermany chest X-rays (and one on PneumoniaMNIST),
its input gate (fitted by ``medclass train`` itself) and what it flags: the CT and MR slices of
``../shared/data/dicom_samples``, test images rotated by 90° and inverted, and the untouched test split.
Prints the flagged fractions and the AUROC of the feature-distance score per kind of shift (``pytest -s``).

The model is tiny on purpose (128 px, one epoch from random weights on 157 images: CI time), so these
numbers are a floor for a real model; nothing here is tuned on the test images (the thresholds come from
the training run's validation split).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medclass.cli import main
from medclass.errors import MedclassError

REPO = Path(__file__).resolve().parents[1]
SHIFTED_MODALITIES = ("CT", "MR", "OT")


def _batches(images: list, size: int = 16) -> Iterator[list]:
    for start in range(0, len(images), size):
        yield images[start : start + size]


def _judge(ckpt, gate, images: list) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(in scope, feature score, reasons) of ``images`` through the one predictor and the gate."""
    from medclass.gate import ImageFacts
    from medclass.model.predictor import TorchPredictor
    from medclass.preprocess import Preprocessor

    prep = Preprocessor.from_meta(ckpt.meta)
    predictor = TorchPredictor(ckpt.model, ckpt.task)
    ins, scores, reasons = [], [], []
    for batch in _batches(images):
        x = np.stack([prep(im).array for im in batch])  # B×3×S×S
        _, feats = predictor.predict(x)
        for r in gate.judge([ImageFacts.from_meta(im.meta) for im in batch], x, feats):
            ins.append(bool(r.in_scope))
            scores.append(float(r.ood_score))
            reasons.append(r.reason)
    return np.array(ins), np.array(scores), reasons


def _shifted_dicoms(dicom_samples: Path) -> list:
    from medclass import ingest

    out = []
    for source in ingest.discover([dicom_samples]):
        try:
            modality = ingest.read_meta(source.paths[0]).modality
        except MedclassError:  # a sample that cannot be read is not part of this measurement
            continue
        if modality in SHIFTED_MODALITIES:
            out += [im for im in ingest.load_each(source, slice_policy="all") if isinstance(im, ingest.Image)]
    return out


def _measure(ckpt, test: list, shifted: list, title: str) -> dict[str, float]:
    """Flag the untouched ``test`` images, the same rotated by 90° and inverted, and the ``shifted`` DICOM
    slices; print the fractions and the AUROC of the feature score against the untouched ones. Returns
    the flagged fraction per kind."""
    from sklearn.metrics import roc_auc_score

    from medclass.gate import Gate
    from medclass.ingest.types import Image

    assert "gate_profile" in ckpt.meta, "train did not fit the input gate's profile into best"
    gate = Gate.from_meta(ckpt.meta)
    rotated = [Image(np.rot90(im.pixels).copy(), im.meta) for im in test]
    inverted = [Image(im.pixels.max() + im.pixels.min() - im.pixels, im.meta) for im in test]
    base_in, base_score, base_why = _judge(ckpt, gate, test)
    results = {"untouched test": (base_in, base_score, base_why)}
    for name, images in (("CT/MR slices", shifted), ("rotated 90°", rotated), ("inverted", inverted)):
        results[name] = _judge(ckpt, gate, images)
    flagged = {name: float((~ins).mean()) for name, (ins, _, _) in results.items()}
    auroc = {}
    for name, (_, score, _) in results.items():
        if name != "untouched test":
            y = np.r_[np.zeros(len(base_score)), np.ones(len(score))]
            auroc[name] = float(roc_auc_score(y, np.r_[base_score, score]))
    print(f"\ninput gate on {title}:")
    for name, (ins, _, why) in results.items():
        extra = f", feature-score AUROC vs untouched {auroc[name]:.3f}" if name in auroc else ""
        print(f"  {name}: {int((~ins).sum())}/{len(ins)} flagged ({flagged[name]:.1%}){extra}")
        kinds = {r.split(" (")[0].split(" ")[0] for w in why for r in w.split("; ") if r}
        print(f"    reasons seen: {sorted(kinds)}")
    return flagged


@pytest.mark.slow
def test_gate_on_kermany_flags_shifts_and_keeps_the_test_split(shared_data, dicom_samples, tmp_path):
    from medclass import checkpoint, ingest
    from medclass.manifest import load_manifest

    manifest_path = REPO / "data_manifests" / "kermany_cxr.csv"
    run = tmp_path / "run"
    code = main(["train", "--manifest", str(manifest_path), "--data-root", str(shared_data), "--out", str(run),
                 "--image-size", "128", "--epochs", "1", "--batch-size", "16", "--fit", "crop",
                 "--workers", "1", "--no-progress"])  # fmt: skip
    assert code == 0
    manifest = load_manifest(manifest_path, shared_data)
    test = [ingest.read(manifest.resolve(r))[0] for r in manifest.split("test")]
    shifted = _shifted_dicoms(dicom_samples)
    assert len(test) == 34 and len(shifted) >= 100
    flagged = _measure(checkpoint.load(run / "best"), test, shifted, "Kermany (128 px, 1 epoch from scratch)")
    assert flagged["untouched test"] <= 0.05 + 1e-9  # the target: ≤ 5% of the untouched split
    assert flagged["CT/MR slices"] >= 0.95
    assert flagged["inverted"] >= 0.95
    assert flagged["rotated 90°"] >= 0.95


@pytest.mark.slow
def test_gate_on_pneumoniamnist_keeps_its_test_split(shared_data, dicom_samples, tmp_path):
    """The same on PneumoniaMNIST (28×28 Kermany images, upsampled to 75 px): a model trained on a seeded
    subset (400 train, 200 val), measured on 200 images of its official test split."""
    import csv
    import random

    from medclass import checkpoint, ingest
    from medclass.manifest import load_manifest

    source = REPO / "data_manifests" / "pneumoniamnist.csv"
    with source.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = random.Random(0)
    keep = []
    for split, n in (("train", 400), ("val", 200), ("test", 200)):
        keep += rng.sample([r for r in rows if r["split"] == split], n)
    manifest_path = tmp_path / "pmnist.csv"
    with manifest_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    run = tmp_path / "run"
    code = main(["train", "--manifest", str(manifest_path), "--data-root", str(shared_data), "--out", str(run),
                 "--image-size", "75", "--epochs", "1", "--batch-size", "32", "--workers", "1",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    manifest = load_manifest(manifest_path, shared_data)
    test = [ingest.read_frame(manifest.resolve(r), int(r.frame)) for r in manifest.split("test")]
    shifted = _shifted_dicoms(dicom_samples)
    flagged = _measure(checkpoint.load(run / "best"), test, shifted, "PneumoniaMNIST (75 px, 1 epoch)")
    assert flagged["untouched test"] <= 0.05 + 1e-9
    assert flagged["CT/MR slices"] >= 0.95
    assert flagged["inverted"] >= 0.95
    assert flagged["rotated 90°"] >= 0.95
