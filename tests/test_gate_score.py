"""The input gate in ``medclass score``: flag / refuse / off rows, the profile stored in and read back from a
checkpoint's sidecar, and an old checkpoint without a profile (synthetic PNGs + pydicom's CT_small: no
shared data needed)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from test_score import make_checkpoint

from medclass.cli import ExitCode, main
from medclass.names import REFUSED
from medclass.score import read_scores

pytestmark = pytest.mark.slow  # builds a 96 px Inception V3 and scores through the CLI (~10 s)


def _chest_png(path: Path, seed: int, invert: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:80, 0:64] / 64
    centre = 0.5 + rng.uniform(-0.08, 0.08)
    img = 0.7 * np.exp(-((xx - centre) ** 2) / 0.02) + 0.3 * np.exp(-((yy - 0.2) ** 2) / 0.05)
    img = np.clip(img * rng.uniform(0.8, 1.1) + 0.05 * rng.normal(size=img.shape) + 0.1, 0, 1)
    if invert:
        img = 1 - img
    PILImage.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def gated(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(checkpoint with a profile, the same weights without one, the folder to score)."""
    import pydicom.data

    from medclass import checkpoint, ingest
    from medclass.gate import PROFILE_KEY, FeatureModel, GateProfile, ImageFacts, LayoutProfile, MetaProfile
    from medclass.model.predictor import TorchPredictor
    from medclass.preprocess import Preprocessor

    root = tmp_path_factory.mktemp("gate")
    old = make_checkpoint(root / "old")
    new = root / "new"
    for suffix in (".safetensors", ".json"):
        (new.parent / (new.name + suffix)).write_bytes((old.parent / (old.name + suffix)).read_bytes())
    train = [_chest_png(root / f"train{i}.png", i) for i in range(10)]
    ck = checkpoint.load(new)
    prep = Preprocessor.from_meta(ck.meta)
    images = [ingest.read(p)[0] for p in train]
    arrays = np.stack([prep(im).array for im in images])  # 10×3×96×96
    _, feats = TorchPredictor(ck.model, ck.task).predict(arrays)
    assert feats is not None and feats.shape == (10, 2048)
    # as if trained on CR radiographs: a PNG records no modality (not compared), a CT does
    facts = [dataclasses.replace(ImageFacts.from_meta(im.meta), modality="CR") for im in images]
    profile = GateProfile(
        MetaProfile().fit(facts),
        LayoutProfile(percentile=0).fit(arrays),  # every training image passes
        FeatureModel(components=4, percentile=100).fit(feats, np.arange(10) % 2).calibrate(feats),
    )
    assert profile.features is not None and profile.features.threshold_ is not None
    profile.features.threshold_ *= 1.01  # the scored training images sit at most at the threshold
    checkpoint.update_meta(new, {PROFILE_KEY: profile.to_dict()})
    folder = root / "in"
    folder.mkdir()
    for i in (0, 1):
        (folder / f"cxr{i}.png").write_bytes(train[i].read_bytes())
    _chest_png(folder / "inverted.png", 0, invert=True)
    (folder / "ct.dcm").write_bytes(Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes())
    return new, old, folder


def _score(ckpt: Path, folder: Path, out: Path, *extra: str) -> int:
    args = ["score", "--checkpoint", str(ckpt), str(folder), "--out", str(out), "--workers", "0"]
    return main([*args, "--batch-size", "8", "--no-progress", *extra])


def _by_name(out: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in read_scores(out)}


def test_profile_survives_the_sidecar_round_trip(gated):
    from medclass import checkpoint
    from medclass.gate import Gate

    ck = checkpoint.load(gated[0])  # sealed, validated and loadable
    gate = Gate.from_meta(ck.meta)
    assert gate.active and gate.wants_features
    assert ck.meta["gate_profile"]["meta"]["modalities"] == ["CR"]


def test_flag_keeps_probabilities_and_says_why(gated, tmp_path, capsys):
    out = tmp_path / "flag.jsonl"
    assert _score(gated[0], gated[2], out) == ExitCode.OK
    rows = _by_name(out)
    for name in ("cxr0.png", "cxr1.png"):
        assert rows[name]["in_scope"] is True and rows[name]["gate_reason"] == ""
        assert 0 < rows[name]["ood_score"] <= 1.0
    ct = rows["ct.dcm"]
    assert ct["in_scope"] is False and ct["gate_reason"].startswith("modality CT not in training data (CR)")
    assert (
        rows["inverted.png"]["in_scope"] is False and "looks inverted" in rows["inverted.png"]["gate_reason"]
    )
    assert all(r["prob:NORMAL"] is not None and r["decision"] != REFUSED for r in rows.values())
    assert "input gate: 2 of 4 image(s) out of scope" in capsys.readouterr().out


def test_refuse_gives_no_probabilities_but_no_error(gated, tmp_path, capsys):
    out = tmp_path / "refuse.csv"
    assert _score(gated[0], gated[2], out, "--gate", "refuse") == ExitCode.OK
    rows = _by_name(out)
    for name in ("ct.dcm", "inverted.png"):
        r = rows[name]
        assert (r["decision"], r["prob:NORMAL"], r["predicted"], r["error"]) == (REFUSED, "", "", "")
        assert r["in_scope"] == "False" and r["gate_reason"]
    assert rows["cxr0.png"]["decision"] == "argmax" and rows["cxr0.png"]["prob:NORMAL"] != ""
    assert "2 refused" in capsys.readouterr().out


def test_off_and_old_checkpoints_are_not_gated(gated, tmp_path, capsys, caplog):
    out = tmp_path / "off.jsonl"
    assert _score(gated[0], gated[2], out, "--gate", "off") == ExitCode.OK
    assert all(r["in_scope"] is None and r["gate_reason"] == "" for r in _by_name(out).values())
    out = tmp_path / "old.jsonl"
    with caplog.at_level(logging.WARNING):
        assert _score(gated[1], gated[2], out, "--gate", "refuse") == ExitCode.OK
    assert "no input profile" in caplog.text + capsys.readouterr().err
    assert all(r["in_scope"] is None and r["prob:NORMAL"] is not None for r in _by_name(out).values())


def _manifest(gated, tmp_path: Path) -> tuple[Path, Path]:
    """val: six in-distribution PNGs; test: four more, the inverted one and the CT (labels alternate)."""
    folder = gated[2]
    root = folder.parent
    lines = ["path,patient_id,split,label"]
    for i in range(10):
        split = "val" if i < 6 else "test"
        lines.append(f"train{i}.png,p{i},{split},{('NORMAL', 'PNEUMONIA')[i % 2]}")
    lines += ["in/inverted.png,p10,test,NORMAL", "in/ct.dcm,p11,test,PNEUMONIA"]
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, root


def test_evaluate_counts_out_of_scope_images_and_measures_the_rest(gated, tmp_path, capsys):
    import json

    from medclass.evaluate import read_predictions

    manifest, root = _manifest(gated, tmp_path)
    base = ["evaluate", "--checkpoint", str(gated[0]), "--manifest", str(manifest), "--data-root", str(root)]
    out = tmp_path / "flag"
    assert main([*base, "--out", str(out), "--bootstrap", "20", "--no-attach", "--level", "image"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gate"]["out_of_scope"] == {"validation": 0, "test": 2}
    assert metrics["levels"]["image"]["n_test"] == 6 and metrics["in_scope"]["levels"]["image"]["n_test"] == 4
    rows = {Path(r["image_id"]).name: r for r in read_predictions(out / "predictions.csv")}
    assert str(rows["ct.dcm"]["in_scope"]) == "False" and "modality CT" in rows["ct.dcm"]["gate_reason"]
    printed = capsys.readouterr().out
    assert "input gate: 2 of 6 image(s) out of scope in the test split" in printed
    assert "in-scope images only, image level (test n=4)" in printed
    out = tmp_path / "refuse"
    args = [
        *base,
        "--out",
        str(out),
        "--bootstrap",
        "20",
        "--no-attach",
        "--level",
        "image",
        "--gate",
        "refuse",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["levels"]["image"]["n_test"] == 4 and "in_scope" not in metrics


def test_explain_banners_out_of_scope_images_and_refuses_them_on_request(gated, tmp_path, capsys):
    import json

    base = ["explain", "--checkpoint", str(gated[0]), str(gated[2]), "--faithfulness", "none", "--no-pdf"]
    out = tmp_path / "flag"
    assert main([*base, "--out", str(out)]) == ExitCode.OK
    doc = json.loads((out / "explanations.json").read_text())
    rows = {Path(r["source"]).name: r for r in doc["images"]}
    assert rows["ct.dcm"]["in_scope"] is False and "modality CT" in rows["ct.dcm"]["gate_reason"]
    assert rows["cxr0.png"]["in_scope"] is True and doc["refused"] == []
    report = (out / rows["ct.dcm"]["report_html"]).read_text()
    assert "OUT OF SCOPE: this image is unlike the images the model was trained on (modality CT" in report
    assert "OUT OF SCOPE" not in (out / rows["cxr0.png"]["report_html"]).read_text()
    assert "input gate: 2 of 4 image(s) out of scope" in capsys.readouterr().out
    out = tmp_path / "refuse"
    assert main([*base, "--out", str(out), "--gate", "refuse"]) == ExitCode.OK
    doc = json.loads((out / "explanations.json").read_text())
    assert sorted(Path(r["source"]).name for r in doc["images"]) == ["cxr0.png", "cxr1.png"]
    assert sorted(Path(r["source"]).name for r in doc["refused"]) == ["ct.dcm", "inverted.png"]
    assert all(r["decision"] == "refused" and r["gate_reason"] for r in doc["refused"])
    assert "Refused by the input gate" in (out / "index.html").read_text()


def test_profile_command_adds_a_profile_to_an_old_checkpoint(gated, tmp_path, capsys):
    from medclass import checkpoint

    root = gated[2].parent
    old = tmp_path / "old"
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"old{suffix}").write_bytes((gated[1].parent / f"old{suffix}").read_bytes())
    lines = ["path,patient_id,split,label"]
    lines += [
        f"train{i}.png,p{i},{'train' if i < 7 else 'val'},{('NORMAL', 'PNEUMONIA')[i % 2]}" for i in range(10)
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    args = ["profile", "--checkpoint", str(old), "--manifest", str(manifest), "--data-root", str(root)]
    assert main([*args, "--workers", "0"]) == ExitCode.OK
    assert "input-gate profile written to" in capsys.readouterr().out
    meta = checkpoint.load(old).meta  # the weights untouched, the sidecar sealed again
    assert meta["sha256"] == checkpoint.load(gated[1]).meta["sha256"]
    profile = meta["gate_profile"]
    assert profile["meta"]["n"] == 7 and profile["meta"]["formats"] == ["png"]
    assert profile["features"]["calibration_n"] == 3
    out = tmp_path / "s.jsonl"
    assert _score(old, gated[2], out) == ExitCode.OK
    assert all(r["in_scope"] is not None for r in _by_name(out).values())
