"""medclass.evaluate and ``medclass evaluate``: evaluation of a predictions table, end to end."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from medclass.cli import main
from medclass.errors import ConfigError, DataError
from medclass.evaluate import (
    EvaluationConfig,
    evaluate_predictions,
    prediction_table,
    read_predictions,
    split_rows,
    to_dict,
    write_predictions,
)
from medclass.metrics import MetricWarning

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("NORMAL", "PNEUMONIA")


def make_rows(n: int, split: str, seed: int, *, shift: float = 1.5, prevalence: float = 0.6) -> list[dict]:
    """Binary predictions: two images per patient, scores informative by ``shift``, a ``sex`` column."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        y = int(rng.random() < prevalence)
        p = float(1 / (1 + np.exp(-(rng.normal() + shift * y))))
        rows.append({"image_id": f"{split}-{i}", "patient_id": f"{split}-p{i // 2}", "split": split,
                     "label": CLASSES[y], "prob:NORMAL": 1 - p, "prob:PNEUMONIA": p,
                     "sex": "F" if i % 3 else "M"})  # fmt: skip
    return rows


def fast(**kw) -> EvaluationConfig:
    return EvaluationConfig(n_bootstrap=kw.pop("n_bootstrap", 200), **kw)


def _y(rows):
    return np.array([CLASSES.index(r["label"]) for r in rows])


def _p(rows):
    return np.array([r["prob:PNEUMONIA"] for r in rows])


@pytest.fixture(scope="module")
def val_test():
    return make_rows(300, "val", 1), make_rows(400, "test", 2)


def test_values_equal_sklearn_at_both_levels(val_test):
    val, test = val_test
    res = evaluate_predictions(val, test, config=fast())
    assert res.reported_classes == ("PNEUMONIA",)
    img = res.levels["image"].classes["PNEUMONIA"]
    assert img.auc.auc == pytest.approx(roc_auc_score(_y(test), _p(test)))
    assert img.auc.ci_low < img.auc.auc < img.auc.ci_high
    assert res.levels["image"].macro.estimate == img.auc.auc  # binary: the average is the positive class
    assert res.levels["image"].macro_delong.ci_low == pytest.approx(img.auc.delong_ci_low)
    pred = (_p(test) >= img.threshold).astype(int)
    assert img.operating.confusion == confusion_matrix(_y(test), pred).tolist()
    # patient level: mean of the two images, positive if either image is
    pats = {}
    for r in test:
        pats.setdefault(r["patient_id"], []).append((CLASSES.index(r["label"]), r["prob:PNEUMONIA"]))
    yp = [max(y for y, _ in v) for _, v in sorted(pats.items())]
    sp = [np.mean([s for _, s in v]) for _, v in sorted(pats.items())]
    pat = res.levels["patient"]
    assert pat.n_test == 200
    assert pat.classes["PNEUMONIA"].auc.auc == pytest.approx(roc_auc_score(yp, sp))
    maxed = evaluate_predictions(val, test, config=fast(level="patient", aggregate="max"))
    sp_max = [max(s for _, s in v) for _, v in sorted(pats.items())]
    assert maxed.levels["patient"].classes["PNEUMONIA"].auc.auc == pytest.approx(roc_auc_score(yp, sp_max))
    assert "image" not in maxed.levels


def test_threshold_is_chosen_without_test_labels(val_test):
    val, test = val_test
    cfg = fast(n_bootstrap=20)
    base = evaluate_predictions(val, test, config=cfg)
    rng = np.random.default_rng(0)
    labels = [r["label"] for r in test]
    shuffled = [dict(r, label=lab) for r, lab in zip(test, rng.permutation(labels), strict=True)]
    other = evaluate_predictions(val, shuffled, config=cfg)
    for level in ("image", "patient"):
        assert (
            other.levels[level].classes["PNEUMONIA"].threshold
            == base.levels[level].classes["PNEUMONIA"].threshold
        )
    # the test metrics did see the shuffled labels...
    assert (
        other.levels["image"].classes["PNEUMONIA"].auc.auc
        != base.levels["image"].classes["PNEUMONIA"].auc.auc
    )
    # ...and changing validation labels does move the threshold
    flipped_val = [
        dict(r, label=CLASSES[1 - CLASSES.index(r["label"])]) if i % 4 == 0 else r for i, r in enumerate(val)
    ]
    moved = evaluate_predictions(flipped_val, test, config=cfg)
    assert (
        moved.levels["image"].classes["PNEUMONIA"].threshold
        != base.levels["image"].classes["PNEUMONIA"].threshold
    )
    for rule, rate, target in (("sens:0.9", "sensitivity", 0.9), ("spec:0.95", "specificity", 0.95)):
        a = evaluate_predictions(val, test, config=fast(n_bootstrap=0, threshold=rule, level="image"))
        b = evaluate_predictions(val, shuffled, config=fast(n_bootstrap=0, threshold=rule, level="image"))
        ca, cb = a.levels["image"].classes["PNEUMONIA"], b.levels["image"].classes["PNEUMONIA"]
        assert ca.threshold == cb.threshold
        assert (
            getattr(ca.val_operating, rate) >= target
        )  # the target is met on validation, where it was chosen


def test_bootstrap_cis_reproducible_end_to_end(val_test):
    val, test = val_test
    a = to_dict(evaluate_predictions(val, test, config=fast(seed=3)))
    b = to_dict(evaluate_predictions(val, test, config=fast(seed=3)))
    c = to_dict(evaluate_predictions(val, test, config=fast(seed=4)))
    assert json.dumps(a) == json.dumps(b)
    ca, cc = a["levels"]["image"]["classes"]["PNEUMONIA"], c["levels"]["image"]["classes"]["PNEUMONIA"]
    assert (ca["auc_ci_low"], ca["auc_ci_high"]) != (cc["auc_ci_low"], cc["auc_ci_high"])
    assert ca["auc_delong_ci_low"] == cc["auc_delong_ci_low"]  # DeLong does not resample


def test_metrics_json_keys(val_test):
    val, test = val_test
    d = to_dict(evaluate_predictions(val, test, config=fast(by=("sex",))))
    json.dumps(d, allow_nan=False)
    cls = d["levels"]["image"]["classes"]["PNEUMONIA"]
    for key in (
        "auc",
        "auc_ci_low",
        "auc_ci_high",
        "auc_delong_ci_low",
        "auc_delong_ci_high",
        "n_pos",
        "prevalence",
    ):
        assert isinstance(cls[key], (int, float)), key
    op = cls["operating_point"]
    assert op["chosen_on"] == "validation" and op["rule"] == "youden"
    assert set(op) >= {
        "threshold",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
        "f1",
        "accuracy",
        "confusion_matrix",
    }
    assert set(cls["sensitivity_at_specificity"]) == {"0.9", "0.95"}
    for point in cls["sensitivity_at_specificity"].values():  # bootstrap CI read off the ROC band
        assert point["ci_low"] <= point["value"] <= point["ci_high"] and point["ci_low"] < point["ci_high"]
    assert cls["calibration"]["n_bins"] == 10 and len(cls["calibration"]["bins"]) == 10
    macro = d["levels"]["patient"]["macro"]
    assert set(macro) >= {"auc", "auc_ci_low", "auc_ci_high", "auc_delong_ci_low", "auc_delong_ci_high"}
    assert [e["value"] for e in d["subgroups"]["sex"]] == ["F", "M"]
    assert d["subgroups"]["sex"][0]["n"] == sum(1 for r in test if r["sex"] == "F")


def test_multiclass_three_classes():
    rng = np.random.default_rng(0)
    classes = ("a", "b", "c")

    def rows(n, split):
        out = []
        for i in range(n):
            k = int(rng.integers(0, 3))
            z = rng.normal(size=3) + 1.5 * np.eye(3)[k]
            p = np.exp(z) / np.exp(z).sum()
            out.append({"image_id": f"{split}{i}", "patient_id": f"{split}{i}", "split": split, "label": classes[k]}
                       | {f"prob:{c}": float(v) for c, v in zip(classes, p, strict=True)})  # fmt: skip
        return out

    val, test = rows(200, "val"), rows(300, "test")
    res = evaluate_predictions(val, test, config=fast(level="image"))
    lv = res.levels["image"]
    assert tuple(lv.classes) == classes
    y = np.array([classes.index(r["label"]) for r in test])
    s = np.array([[r[f"prob:{c}"] for c in classes] for r in test])
    assert lv.macro.estimate == pytest.approx(roc_auc_score(y, s, multi_class="ovr", average="macro"))
    assert lv.multiclass is not None
    assert [list(r) for r in lv.multiclass.confusion] == confusion_matrix(y, s.argmax(1)).tolist()
    assert lv.top_label_calibration is not None


def test_multilabel_findings():
    rng = np.random.default_rng(1)

    def rows(n, split):
        out = []
        for i in range(n):
            f = (rng.random(2) < [0.3, 0.5]).astype(int)
            p = 1 / (1 + np.exp(-(rng.normal(size=2) + 2 * f - 1)))
            out.append({"image_id": f"{split}{i}", "patient_id": f"{split}{i}", "split": split,
                        "finding:effusion": f[0], "finding:nodule": f[1],
                        "prob:effusion": p[0], "prob:nodule": p[1]})  # fmt: skip
        return out

    res = evaluate_predictions(
        rows(200, "val"), rows(300, "test"), config=fast(level="image", temperature_scaling=True)
    )
    assert res.task == "multilabel" and res.reported_classes == ("effusion", "nodule")
    assert res.levels["image"].multiclass is None
    assert res.temperature is not None and res.temperature > 0


def test_temperature_scaling_keeps_binary_auc(val_test):
    val, test = val_test
    plain = evaluate_predictions(val, test, config=fast(level="image"))
    scaled = evaluate_predictions(val, test, config=fast(level="image", temperature_scaling=True))
    a, b = plain.levels["image"].classes["PNEUMONIA"], scaled.levels["image"].classes["PNEUMONIA"]
    assert b.auc.auc == pytest.approx(a.auc.auc)  # monotone transform of a 2-class softmax
    assert scaled.temperature is not None and b.calibration_before_scaling is not None
    assert b.calibration_before_scaling.brier == pytest.approx(a.calibration.brier)


# --- degenerate input ----------------------------------------------------------------------------------
def test_one_class_test_split_gives_nan_not_a_crash(val_test, tmp_path):
    val, _ = val_test
    test = [r for r in make_rows(200, "test", 5) if r["label"] == "PNEUMONIA"]
    with pytest.warns(MetricWarning):
        res = evaluate_predictions(val, test, config=fast(by=("sex",)))
    c = res.levels["image"].classes["PNEUMONIA"]
    assert math.isnan(c.auc.auc) and math.isnan(c.operating.specificity)
    assert c.operating.sensitivity > 0  # still defined: there are positives
    assert any("AUC is undefined" in w for w in res.warnings)
    d = to_dict(res)
    assert d["levels"]["image"]["classes"]["PNEUMONIA"]["auc"] is None
    from medclass.report import write_evaluation

    paths = write_evaluation(d, tmp_path)
    assert paths["report"].read_text().count("n/a") > 3


def test_one_class_validation_gives_nan_threshold(val_test):
    _, test = val_test
    val = [r for r in make_rows(100, "val", 6) if r["label"] == "NORMAL"]
    with pytest.warns(MetricWarning, match="threshold is undefined"):
        res = evaluate_predictions(val, test, config=fast(level="image"))
    c = res.levels["image"].classes["PNEUMONIA"]
    assert math.isnan(c.threshold) and math.isnan(c.operating.sensitivity)
    assert not math.isnan(c.auc.auc)


def test_unusable_tables_raise_clear_errors(val_test):
    val, test = val_test
    bad = [dict(r) for r in test]
    for i in (1, 5, 9):
        bad[i]["prob:PNEUMONIA"] = "nan"
    bad[20]["prob:NORMAL"] = ""
    with pytest.raises(
        DataError, match=r"4 of 400 rows have missing, non-numeric or NaN probabilities \(first: test-1\)"
    ):
        evaluate_predictions(val, bad, config=fast())
    with pytest.raises(DataError, match="test split: no rows"):
        evaluate_predictions(val, [], classes=CLASSES, task="multiclass", config=fast())
    with pytest.raises(DataError, match=r"2 rows have a label that is not a class \('CANCER'\)"):
        evaluate_predictions(
            val, [dict(r, label="CANCER") if i < 2 else r for i, r in enumerate(test)], config=fast()
        )
    with pytest.raises(DataError, match="--by site: no such column"):
        evaluate_predictions(val, test, config=fast(by=("site",)))
    with pytest.raises(ConfigError, match="unknown threshold rule"):
        evaluate_predictions(val, test, config=fast(threshold="best"))
    with pytest.raises(DataError, match="no rows"):
        prediction_table([])


def test_subgroup_with_one_class_is_nan_with_warning(val_test):
    val, test = val_test
    rows = [dict(r, site="A" if i < 300 else "B") for i, r in enumerate(test)]
    for r in rows[300:]:
        r["label"] = "NORMAL"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate_predictions(val, rows, config=fast(level="image", by=("site",)))
    sub = {s.value: s for s in res.subgroups}
    assert math.isnan(sub["B"].classes["PNEUMONIA"].auc.auc) and sub["B"].n == 100
    assert not math.isnan(sub["A"].classes["PNEUMONIA"].auc.auc)
    assert any("site=B" in str(w.message) for w in caught)


# --- files and the command line -------------------------------------------------------------------------
def test_predictions_csv_roundtrip_and_formula_safety(tmp_path, val_test):
    val, test = val_test
    rows = [*val, *test]
    rows[0] = dict(rows[0], image_id='=HYPERLINK("x")', sex="@SUM(1)")
    path = write_predictions(tmp_path / "predictions.csv", rows)
    back = read_predictions(path)
    assert back[0]["image_id"].startswith("'=") and back[0]["sex"].startswith("'@")
    assert list(back[0])[:4] == ["image_id", "patient_id", "split", "label"]
    assert len(split_rows(back, "test")) == 400
    t = prediction_table(split_rows(back, "test"))
    np.testing.assert_allclose(t.scores[:, 1], _p(test))


def test_cli_evaluate_from_predictions(tmp_path, val_test, capsys):
    val, test = val_test
    pred = write_predictions(tmp_path / "p.csv", [*val, *test])
    out = tmp_path / "out"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text(
        "epoch,train_loss,val_loss,val_auc\n1,0.7,0.69,0.6\n2,0.5,0.55,0.8\n"
    )
    code = main(["evaluate", "--predictions", str(pred), "--out", str(out), "--bootstrap", "100", "--by", "sex",
                 "--threshold", "spec:0.9", "--run-dir", str(tmp_path / "run")])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "PNEUMONIA: AUC" in text and "spec:0.9" in text
    d = json.loads((out / "metrics.json").read_text())
    assert d["config"]["threshold"] == "spec:0.9" and d["splits"] == {"validation": "val", "test": "test"}
    op = json.loads((out / "operating_point.json").read_text())
    assert (
        op["thresholds"]["PNEUMONIA"]
        == d["levels"]["image"]["classes"]["PNEUMONIA"]["operating_point"]["threshold"]
    )
    for name in (
        "report.html",
        "roc_image.png",
        "roc_patient.png",
        "reliability_image.png",
        "training_curves.png",
    ):
        assert (out / name).stat().st_size > 1000, name


def test_cli_evaluate_errors(tmp_path, val_test, capsys):
    _, test = val_test
    pred = write_predictions(tmp_path / "p.csv", [*test])
    assert main(["evaluate", "--predictions", str(pred), "--out", str(tmp_path / "o")]) == 1
    assert "no rows in split 'val' (splits present: test)" in capsys.readouterr().err
    assert main(["evaluate", "--out", str(tmp_path / "o")]) == 1
    assert "--checkpoint and --manifest" in capsys.readouterr().err
    assert (
        main(["evaluate", "--predictions", str(pred), "--out", str(tmp_path / "o"), "--threshold", "sens:2"])
        == 1
    )
    assert "target must be in (0, 1]" in capsys.readouterr().err
    assert (
        main(["evaluate", "--predictions", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 1
    )
    assert "missing.csv" in capsys.readouterr().err


# --- the model forward (checkpoint + manifest) -----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.realdata
def test_predict_manifest_and_cli_on_real_pneumoniamnist(tmp_path, shared_data, capsys):
    """A random-init checkpoint scored on 24 real PneumoniaMNIST frames through the manifest/dataset path."""
    import csv
    import dataclasses

    import torch

    from medclass import checkpoint
    from medclass.ingest import read_frame
    from medclass.model import MainLogits, create_model
    from medclass.preprocess import Preprocessor, input_spec

    src = list(csv.DictReader((REPO / "data_manifests" / "pneumoniamnist.csv").open()))
    picked = []
    for split in ("val", "test"):
        for label in ("normal", "pneumonia"):
            picked += [r for r in src if r["split"] == split and r["label"] == label][:6]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,frame,patient_id,split,label\n" + "".join(
        f"{r['path']},{r['frame']},{r['patient_id']},{r['split']},{r['label']}\n" for r in picked))  # fmt: skip
    torch.manual_seed(0)
    model = create_model(2, image_size=75).eval()
    spec = input_spec("inception_v3", image_size=75)
    meta = {"classes": ["normal", "pneumonia"], "task": "multiclass", "input": dataclasses.asdict(spec),
            "window": "auto", "fit": "letterbox", "seed": 0}  # fmt: skip
    checkpoint.save(tmp_path / "ck", model, meta)

    out = tmp_path / "out"
    code = main(["evaluate", "--checkpoint", str(tmp_path / "ck"), "--manifest", str(manifest), "--data-root",
                 str(shared_data), "--out", str(out), "--bootstrap", "50", "--level", "image"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = read_predictions(out / "predictions.csv")  # written by predict_manifest's rows
    assert [r["split"] for r in rows] == ["val"] * 12 + ["test"] * 12
    assert [r["label"] for r in rows] == [r["label"] for r in picked]
    assert all(r["patient_id"].startswith("P-") and "pmnist" not in r["patient_id"] for r in rows)
    probs = np.array([[float(r["prob:normal"]), float(r["prob:pneumonia"])] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    # an independent forward pass of two rows gives the same probabilities
    pre = Preprocessor(spec, window="auto", fit="letterbox")
    for i in (0, 13):
        img = read_frame(shared_data / picked[i]["path"], int(picked[i]["frame"]))
        x = torch.from_numpy(pre(img).array)[None]  # 1×3×75×75
        with torch.no_grad():
            expected = torch.softmax(MainLogits(model)(x), dim=1)[0].numpy()
        np.testing.assert_allclose(probs[i], expected, atol=1e-5)
    d = json.loads((out / "metrics.json").read_text())
    assert d["levels"]["image"]["n_test"] == 12
    assert "manifest sha256" in (out / "report.html").read_text()


def test_without_patient_ids_both_levels_falls_back_to_image(val_test):
    val, test = val_test

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "patient_id"} for r in rows]

    res = evaluate_predictions(strip(val), strip(test), config=fast(n_bootstrap=10))
    assert list(res.levels) == ["image"]
    with pytest.raises(DataError, match="patient-level metrics need a 'patient_id' column"):
        evaluate_predictions(strip(val), strip(test), config=fast(n_bootstrap=10, level="patient"))
    blank = [dict(r, patient_id="") if i < 3 else r for i, r in enumerate(test)]
    with pytest.raises(DataError, match="3 of 400 rows have no patient/study id"):
        evaluate_predictions(val, blank, config=fast(n_bootstrap=10))


def test_subgroups_use_image_thresholds_even_for_patient_level_only(val_test):
    val, test = val_test
    both = evaluate_predictions(val, test, config=fast(n_bootstrap=10, by=("sex",)))
    pat = evaluate_predictions(val, test, config=fast(n_bootstrap=10, by=("sex",), level="patient"))
    assert list(pat.levels) == ["patient"]
    for a, b in zip(both.subgroups, pat.subgroups, strict=True):
        assert a.classes["PNEUMONIA"].sensitivity == b.classes["PNEUMONIA"].sensitivity


# --- issue 20: positive class by name, operating point stored in the checkpoint, --by checked first -------
def _abnormal_normal_run(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A random-init checkpoint RUN/best with classes abnormal/normal (positive: abnormal, as train records
    it) and a manifest of 16 small PNGs in val/test with a 'site' column. Returns (run, manifest, images)."""
    import dataclasses

    import torch
    from PIL import Image

    from medclass import checkpoint
    from medclass.model import create_model
    from medclass.preprocess import input_spec

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    lines = ["path,patient_id,split,label,site"]
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(images / f"im{i:02d}.png")
        split, label = ("val" if i < 8 else "test"), ("abnormal" if i % 2 else "normal")
        lines.append(f"im{i:02d}.png,p{i},{split},{label},{'A' if i % 4 < 2 else 'B'}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    spec = input_spec("inception_v3", image_size=75)
    meta = {"classes": ["abnormal", "normal"], "task": "multiclass", "positive_class": "abnormal",
            "input": dataclasses.asdict(spec), "window": "auto", "fit": "letterbox", "seed": 0}  # fmt: skip
    run = tmp_path / "run"
    checkpoint.save(run / "best", create_model(2, image_size=75).eval(), meta)
    return run, manifest, images


@pytest.mark.slow
def test_cli_evaluate_positive_class_operating_point_and_by(tmp_path, capsys):
    import csv

    from medclass import checkpoint

    run, manifest, images = _abnormal_normal_run(tmp_path)
    base = ["evaluate", "--checkpoint", str(run), "--manifest", str(manifest), "--data-root", str(images),
            "--bootstrap", "20", "--level", "image"]  # fmt: skip
    # an unknown --by column is refused before any prediction
    assert main([*base, "--out", str(tmp_path / "bad"), "--by", "sexx"]) == 1
    err = capsys.readouterr().err
    assert "--by sexx: no such column in the manifest; columns: path, patient_id, split, label, site" in err
    assert not (tmp_path / "bad" / "predictions.csv").exists()

    out = tmp_path / "out"
    assert main([*base, "--out", str(out), "--by", "site"]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "is a run folder; using its checkpoint" in captured.err
    assert "positive class: abnormal (negative: normal)" in captured.out
    d = json.loads((out / "metrics.json").read_text())
    assert d["positive_class"] == "abnormal" and d["reported_classes"] == ["abnormal"]
    assert "positive class: abnormal" in (out / "report.html").read_text()
    # the operating point travels with the model, sealed: load verifies it, score decides with it
    threshold = d["levels"]["image"]["classes"]["abnormal"]["operating_point"]["threshold"]
    meta = checkpoint.load(run).meta
    op = meta["operating_point"]["abnormal"]
    assert op["threshold"] == threshold and op["chosen_on"] == "val" and op["rule"] == "youden"
    assert f"operating point stored in {run / 'best.json'}" in captured.out
    scores = tmp_path / "s.csv"
    assert (
        main(
            ["score", "--checkpoint", str(run / "best"), str(images), "--out", str(scores), "--workers", "0"]
        )
        == 0
    )
    out_text = capsys.readouterr().out
    assert (
        f"positive class abnormal; decision: the checkpoint's operating point (abnormal ≥ {threshold:.3f})"
        in out_text
    )
    rows = list(csv.DictReader(scores.open()))
    assert rows and {r["decision"] for r in rows} == {"operating_point"}
    for r in rows:
        p = float(r["prob:abnormal"])
        assert r["predicted"] == ("abnormal" if p >= threshold else "normal")


def test_default_positive_class_is_by_name_not_alphabet(val_test):
    """abnormal/normal: the positive class is 'abnormal' (not the alphabetically last 'normal'); two
    names that do not tell are refused with the classes listed."""
    val, test = val_test
    rename = {"NORMAL": "normal", "PNEUMONIA": "abnormal"}

    def relabel(rows):
        out = []
        for r in rows:
            r = dict(r, label=rename[r["label"]])
            r["prob:normal"], r["prob:abnormal"] = r.pop("prob:NORMAL"), r.pop("prob:PNEUMONIA")
            out.append(r)
        return out

    cfg = EvaluationConfig(n_bootstrap=10, level="image")
    result = evaluate_predictions(relabel(val), relabel(test), config=cfg)
    assert result.reported_classes == ("abnormal",) and to_dict(result)["positive_class"] == "abnormal"
    rename = {"NORMAL": "cat", "PNEUMONIA": "dog"}

    def pets(rows):
        return [
            {
                k.replace("NORMAL", "cat").replace("PNEUMONIA", "dog"): v
                for k, v in dict(r, label=rename[r["label"]]).items()
            }
            for r in rows
        ]

    with pytest.raises(ConfigError, match=r"which class is positive\? neither or both of cat, dog"):
        evaluate_predictions(pets(val), pets(test), config=cfg)


def test_cli_summary_prints_micro_auc_for_several_classes(tmp_path, capsys):
    rng = np.random.default_rng(1)
    classes = ("a", "b", "c")
    rows = []
    for split, n in (("val", 60), ("test", 90)):
        for i in range(n):
            k = int(rng.integers(0, 3))
            z = rng.normal(size=3) + 1.5 * np.eye(3)[k]
            p = np.exp(z) / np.exp(z).sum()
            rows.append({"image_id": f"{split}{i}", "patient_id": f"{split}{i}", "split": split, "label": classes[k]}
                        | {f"prob:{c}": float(v) for c, v in zip(classes, p, strict=True)})  # fmt: skip
    pred = tmp_path / "p.csv"
    write_predictions(pred, rows)
    assert main(["evaluate", "--predictions", str(pred), "--out", str(tmp_path / "o"), "--bootstrap", "20",
                 "--level", "image"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    micro = json.loads((tmp_path / "o" / "metrics.json").read_text())["levels"]["image"]["micro"]["auc"]
    assert f"micro AUC {micro:.3f}" in out and "macro AUC" in out
