"""medclass.metrics.threshold_ci and its place in ``medclass evaluate`` (issue 15, point 6)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from medclass.cli import main
from medclass.evaluate import EvaluationConfig, evaluate_predictions, to_dict, write_predictions
from medclass.metrics import MIN_VALIDATION_CASES, MetricWarning, choose_threshold, threshold_ci
from medclass.metrics.operating import _roc
from medclass.report import render_html
from medclass.report.markdown import threshold_markdown

SMALL = "validation set with only"


def sample(n_pos: int, n_neg: int, seed: int, shift: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores (normal, positives shifted by ``shift``), in random order."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    s = rng.normal(size=len(y)) + shift * y
    order = rng.permutation(len(y))
    return y[order], s[order]


def _ci(n: int, seed: int = 0, rule: str = "youden", **kw):
    yv, sv = sample(n, n, 10 + n)
    yt, st = sample(n, n, 20 + n)
    return threshold_ci(yv, sv, yt, st, rule, n_bootstrap=kw.pop("n_bootstrap", 400), seed=seed, **kw)


def _small_warnings(caught) -> list[str]:
    return [
        str(w.message) for w in caught if issubclass(w.category, MetricWarning) and SMALL in str(w.message)
    ]


def test_fast_roc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for i in range(200):
        n = int(rng.integers(2, 50))
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        s = np.round(rng.normal(size=n), 1) if i % 2 else rng.normal(size=n)  # ties on odd rounds
        for ours, theirs in zip(_roc(y, s), roc_curve(y, s, drop_intermediate=False), strict=True):
            np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("rule", ["youden", "sens:0.9", "spec:0.9"])
def test_interval_contains_the_estimate_and_the_estimate_is_the_full_data_choice(rule):
    yv, sv = sample(150, 150, 1)
    yt, st = sample(200, 200, 2)
    c = threshold_ci(yv, sv, yt, st, rule, n_bootstrap=500, seed=3)
    assert c.threshold.estimate == choose_threshold(yv, sv, rule)
    thr = c.threshold.estimate
    assert c.sensitivity.estimate == np.mean(st[yt == 1] >= thr)
    assert c.specificity.estimate == np.mean(st[yt == 0] < thr)
    for iv in (c.threshold, c.sensitivity, c.specificity):
        assert iv.ci_low <= iv.estimate <= iv.ci_high
        assert iv.ci_low < iv.ci_high  # a real spread, not a point
    assert c.n_valid == 500 and not c.small_validation


def test_interval_narrows_with_more_data():
    small, large = _ci(30), _ci(3000)  # Youden's threshold converges slowly (cube-root rate)
    for name in ("threshold", "sensitivity", "specificity"):
        a, b = getattr(small, name), getattr(large, name)
        assert (b.ci_high - b.ci_low) < 0.6 * (a.ci_high - a.ci_low), name


def test_deterministic_with_a_seed():
    assert _ci(60, seed=5) == _ci(60, seed=5)
    a, b = _ci(60, seed=5), _ci(60, seed=6)
    assert (a.threshold, a.sensitivity, a.specificity) != (b.threshold, b.sensitivity, b.specificity)


@pytest.mark.parametrize(("n_pos", "n_neg", "fires"), [(19, 200, True), (200, 19, True), (20, 200, False),
                                                       (20, 20, False), (200, 21, False)])  # fmt: skip
def test_small_validation_warning_fires_below_twenty(n_pos, n_neg, fires):
    assert MIN_VALIDATION_CASES == 20
    yv, sv = sample(n_pos, n_neg, 4)
    yt, st = sample(100, 100, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = threshold_ci(yv, sv, yt, st, "youden", n_bootstrap=50, what="PNEUMONIA")
    found = _small_warnings(caught)
    assert c.small_validation is fires
    assert len(found) == (1 if fires else 0)
    if fires:
        assert found[0].startswith("PNEUMONIA: ") and "\n" not in found[0]
        assert "only 19 positive" in found[0] if n_pos == 19 else "only 19 negative" in found[0]


def test_one_class_validation_gives_nan():
    yv, sv = np.ones(30, dtype=int), np.linspace(0, 1, 30)
    yt, st = sample(20, 20, 1)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        c = threshold_ci(yv, sv, yt, st, "youden", n_bootstrap=20)
    assert np.isnan(c.threshold.estimate) and np.isnan(c.sensitivity.ci_low) and c.n_valid == 0


# --- in evaluate: metrics.json, the report, the markdown table, the command line -------------------------
def rows(n_pos: int, n_neg: int, split: str, seed: int) -> list[dict]:
    y, s = sample(n_pos, n_neg, seed)
    p = 1 / (1 + np.exp(-s))
    return [{"image_id": f"{split}{i}", "patient_id": f"{split}p{i}", "split": split,
             "label": ("NORMAL", "PNEUMONIA")[int(t)], "prob:NORMAL": 1 - q, "prob:PNEUMONIA": q}
            for i, (t, q) in enumerate(zip(y, p, strict=True))]  # fmt: skip


def test_evaluate_reports_the_threshold_interval_and_the_small_validation_note():
    val, test = rows(12, 60, "val", 1), rows(80, 80, "test", 2)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = evaluate_predictions(val, test, config=EvaluationConfig(n_bootstrap=200, level="image"))
    assert any("PNEUMONIA (image level): the threshold was chosen on a validation set with only 12 positive"
               in w for w in result.warnings)  # fmt: skip
    d = to_dict(result)
    op = d["levels"]["image"]["classes"]["PNEUMONIA"]["operating_point"]
    b = op["threshold_bootstrap"]
    assert b["threshold"] == op["threshold"] and b["sensitivity"] == op["sensitivity"]
    assert b["threshold_ci_low"] <= b["threshold"] <= b["threshold_ci_high"]
    assert b["validation_n_pos"] == 12 and b["validation_n_neg"] == 60 and b["small_validation"] is True
    assert b["n_bootstrap"] == 200 and json.dumps(d, allow_nan=False)
    md = threshold_markdown(d)
    assert "| image | PNEUMONIA | 12 / 60 **(few)** |" in md and "fewer than 20 validation cases" in md
    page = render_html(d)
    assert "Does the threshold transfer?" in page and "12 / 60 <b>(fewer than 20)</b>" in page
    assert "only 12 positive" in page  # the warning box


def test_cli_writes_the_markdown_table_and_prints_the_interval(tmp_path, capsys):
    pred = write_predictions(tmp_path / "p.csv", [*rows(19, 40, "val", 3), *rows(60, 60, "test", 4)])
    out = tmp_path / "out"
    assert main(["evaluate", "--predictions", str(pred), "--out", str(out), "--bootstrap", "100"]) == 0
    text = capsys.readouterr().out
    assert "bootstrap 95% CI: threshold [" in text
    assert (
        "warning: PNEUMONIA (image level): the threshold was chosen on a validation set with only 19" in text
    )
    md = (out / "operating_point.md").read_text()
    assert "| patient | PNEUMONIA | 19 / 40 **(few)** |" in md
    op = json.loads((out / "operating_point.json").read_text())
    assert op["threshold_bootstrap"]["PNEUMONIA"]["small_validation"] is True


def test_markdown_cells_are_escaped():
    from medclass.report.markdown import md_table

    text = md_table(["a|b", "c"], [["<script>x</script>", "1\n2"]])
    assert text.splitlines() == ["| a\\|b | c |", "|---|---|", "| &lt;script&gt;x&lt;/script&gt; | 1 2 |"]
