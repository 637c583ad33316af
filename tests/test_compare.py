"""``medclass compare`` and medclass.evaluate.paired: joining two predictions files, paired DeLong."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_metrics import _proc, pneumonia_predictions  # noqa: F401  (fixture re-used)

from medclass.cli import main
from medclass.errors import DataError
from medclass.evaluate import compare_tables, join_predictions, write_predictions
from medclass.metrics import compare


def _pair(n=300, seed=0, classes=("NORMAL", "PNEUMONIA")):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    a = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.8 * y)))
    b = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.0 * y)))

    def rows(scores, split="test"):
        return [{"image_id": f"img{i:04d}", "patient_id": f"p{i}", "split": split, "label": classes[y[i]],
                 f"prob:{classes[0]}": 1 - scores[i], f"prob:{classes[1]}": scores[i]} for i in range(n)]  # fmt: skip

    return y, a, b, rows(a), rows(b)


def test_join_orders_by_image_id_and_compares():
    y, a, b, ra, rb = _pair()
    ta, tb = join_predictions(ra, list(reversed(rb)))
    res = compare_tables(ta, tb)
    assert list(res) == ["PNEUMONIA"]
    ref = compare(y, a, b)
    assert res["PNEUMONIA"].p_value == pytest.approx(ref.p_value, abs=1e-12)
    assert res["PNEUMONIA"].diff == pytest.approx(ref.diff, abs=1e-12)


def test_mismatched_ids_are_named():
    _, _, _, ra, rb = _pair()
    with pytest.raises(
        DataError, match=r"2 image ids only in A \('img0000', 'img0001'\); 1 only in B \('extra'\)"
    ):
        join_predictions(ra, [*rb[2:], dict(rb[0], image_id="extra")])
    many = [dict(r, image_id=f"x{i}") for i, r in enumerate(rb)]
    with pytest.raises(
        DataError, match=r"300 image ids only in A \('img0000', 'img0001', 'img0002', \.\.\.\)"
    ):
        join_predictions(ra, many)
    with pytest.raises(DataError, match="1 image ids occur more than once"):
        join_predictions(ra, [*rb, rb[5]])


def test_disagreeing_labels_refused():
    _, _, _, ra, rb = _pair()
    rb = [dict(r, label="NORMAL" if r["label"] == "PNEUMONIA" else "PNEUMONIA") if i in (7, 9) else r
          for i, r in enumerate(rb)]  # fmt: skip
    with pytest.raises(DataError, match=r"labels disagree for 2 of 300 images \(first: 'img0007'\)"):
        join_predictions(ra, rb)


def test_other_classes_refused():
    _, _, _, ra, _ = _pair()
    _, _, _, _, rb = _pair(classes=("NORMAL", "COVID"))
    with pytest.raises(DataError, match="classes"):
        join_predictions(ra, rb)


def test_cli_compare(tmp_path, capsys):
    y, a, b, ra, rb = _pair()
    fa = write_predictions(
        tmp_path / "a.csv", ra + [dict(r, split="val", image_id="v" + r["image_id"]) for r in ra[:50]]
    )
    fb = write_predictions(tmp_path / "b.csv", list(reversed(rb)))
    out = tmp_path / "cmp.json"
    assert main(["compare", str(fa), str(fb), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    ref = compare(y, a, b)
    assert "300 paired images (test split)" in text
    assert f"difference A-B {ref.diff:.4f}" in text
    d = json.loads(out.read_text())
    assert d["n"] == 300
    assert d["classes"]["PNEUMONIA"]["p_value"] == pytest.approx(ref.p_value, abs=1e-12)
    assert d["classes"]["PNEUMONIA"]["diff_ci_low"] < ref.diff < d["classes"]["PNEUMONIA"]["diff_ci_high"]
    # the same file against itself: no difference
    assert main(["compare", str(fb), str(fb), "--class", "NORMAL"]) == 0
    assert "p 1.0000" in capsys.readouterr().out


def test_cli_compare_errors(tmp_path, capsys):
    _, _, _, ra, rb = _pair()
    fa = write_predictions(tmp_path / "a.csv", ra)
    fb = write_predictions(tmp_path / "b.csv", rb[:-3])
    assert main(["compare", str(fa), str(fb)]) == 1
    err = capsys.readouterr().err
    assert "3 image ids only in" in err and "img0299" in err
    assert main(["compare", str(fa), str(fa), "--class", "CANCER"]) == 1
    assert "no class 'CANCER'; classes: NORMAL, PNEUMONIA" in capsys.readouterr().err
    assert main(["compare", str(fa), str(fa), "--split", "val"]) == 1
    assert "no rows in split 'val' (splits present: test)" in capsys.readouterr().err


def test_cli_compare_multiclass_compares_every_class(tmp_path, capsys):
    rng = np.random.default_rng(2)
    classes = ("a", "b", "c")
    y = rng.integers(0, 3, 240)

    def rows(strength):
        z = rng.normal(size=(240, 3)) + strength * np.eye(3)[y]
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return [{"image_id": str(i), "label": classes[y[i]]} | {f"prob:{c}": p[i, k] for k, c in enumerate(classes)}
                for i in range(240)]  # fmt: skip

    fa = write_predictions(tmp_path / "a.csv", rows(2.0))
    fb = write_predictions(tmp_path / "b.csv", rows(1.0))
    assert main(["compare", str(fa), str(fb)]) == 0  # no split column: every row
    text = capsys.readouterr().out
    assert all(f"{c}: AUC A" in text for c in classes)


@pytest.mark.slow
@pytest.mark.realdata
def test_cli_compare_on_real_predictions_matches_proc(tmp_path, pneumonia_predictions):  # noqa: F811
    y, a, b = pneumonia_predictions
    classes = ("normal", "pneumonia")

    def rows(s):
        return [{"image_id": f"test/{i}", "split": "test", "label": classes[y[i]], "prob:normal": 1 - s[i],
                 "prob:pneumonia": s[i]} for i in range(len(y))]  # fmt: skip

    fa, fb = write_predictions(tmp_path / "a.csv", rows(a)), write_predictions(tmp_path / "b.csv", rows(b))
    out = tmp_path / "c.json"
    assert main(["compare", str(fa), str(fb), "--out", str(out)]) == 0
    got = json.loads(out.read_text())["classes"]["pneumonia"]
    ref = _proc(tmp_path, y, a, b)
    assert got["p_value"] == pytest.approx(ref["p_value"], abs=1e-6)
    assert got["z"] == pytest.approx(ref["z"], abs=1e-6)
    assert got["auc_a"] == pytest.approx(ref["auc_a"], abs=1e-9)


def test_compare_defaults_to_the_positive_class_by_name_not_the_second():
    """abnormal/normal: the compared class is 'abnormal' (evaluate's rule), not the alphabetically last."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    classes = ("abnormal", "normal")

    def rows(noise):
        s = np.clip(y * 0.6 + rng.normal(0, noise, len(y)), 0, 1)  # P(abnormal): y = 1 is abnormal
        return [{"image_id": str(i), "label": classes[1 - y[i]], "prob:abnormal": s[i], "prob:normal": 1 - s[i]}
                for i in range(len(y))]  # fmt: skip

    res = compare_tables(*join_predictions(rows(0.3), rows(0.5)))
    assert list(res) == ["abnormal"]
