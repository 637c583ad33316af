"""medclass.metrics: values against scikit-learn, DeLong against R's pROC, CIs, thresholds, calibration."""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from medclass.errors import ConfigError, DataError
from medclass.metrics import (
    MetricWarning,
    TemperatureScaling,
    aggregate,
    argmax_summary,
    auc_summary,
    auc_with_ci,
    bootstrap_auc,
    bootstrap_average_auc,
    brier_score,
    calibration,
    choose_threshold,
    compare,
    delong_auc,
    delong_mean_auc,
    fast_auc,
    midranks,
    operating_point,
    parse_threshold_rule,
    roc_auc,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
    top_label_calibration,
    tpr_at_fpr,
    wilson_ci,
)

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _toy(n: int = 200, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    s = rng.normal(size=n) + 1.2 * y
    if ties:
        s = np.round(s, 1)
    return y, s


# --- values equal scikit-learn's --------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_fast_auc_equal_sklearn(ties):
    y, s = _toy(ties=ties)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert fast_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert delong_auc(y, s).auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    np.testing.assert_allclose(midranks(s), rankdata(s, method="average"))


def test_operating_point_equals_sklearn():
    y, s = _toy()
    thr = 0.4
    op = operating_point(y, s, thr)
    pred = (s >= thr).astype(int)
    assert op.confusion == confusion_matrix(y, pred).tolist()
    assert op.sensitivity == pytest.approx(recall_score(y, pred))
    assert op.specificity == pytest.approx(recall_score(1 - y, 1 - pred))
    assert op.ppv == pytest.approx(precision_score(y, pred))
    assert op.npv == pytest.approx(precision_score(1 - y, 1 - pred))
    assert op.f1 == pytest.approx(f1_score(y, pred))
    assert op.accuracy == pytest.approx(accuracy_score(y, pred))
    assert op.tp + op.fp + op.tn + op.fn == len(y) == op.n
    lo, hi = op.sensitivity_ci
    assert lo < op.sensitivity < hi


def test_wilson_interval_known_value():
    lo, hi = wilson_ci(8, 10)  # textbook value
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_ci(0, 0))


def test_brier_equals_sklearn_and_rejects_out_of_range():
    y, s = _toy()
    p = 1 / (1 + np.exp(-s))
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        brier_score(y, s)


def test_multiclass_and_multilabel_averages_equal_sklearn():
    rng = np.random.default_rng(3)
    y_idx = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y_idx]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    onehot = np.eye(3, dtype=int)[y_idx]
    summ = auc_summary(onehot, prob, ["a", "b", "c"], strata=y_idx, n_bootstrap=50, seed=0)
    assert summ.macro.estimate == pytest.approx(
        roc_auc_score(y_idx, prob, multi_class="ovr", average="macro")
    )
    for k, c in enumerate("abc"):
        assert summ.per_class[c].auc == pytest.approx(roc_auc_score(onehot[:, k], prob[:, k]))
    assert summ.micro.estimate == pytest.approx(roc_auc_score(onehot, prob, average="micro"))
    assert summ.macro.ci_low < summ.macro.estimate < summ.macro.ci_high
    multi = (rng.random((300, 4)) < 0.3).astype(int)
    score = rng.normal(size=(300, 4)) + multi
    summ2 = auc_summary(multi, score, list("wxyz"), n_bootstrap=20)
    assert summ2.macro.estimate == pytest.approx(roc_auc_score(multi, score, average="macro"))
    assert summ2.micro.estimate == pytest.approx(roc_auc_score(multi, score, average="micro"))
    ms = argmax_summary(y_idx, prob, ["a", "b", "c"])
    assert ms.accuracy == pytest.approx(accuracy_score(y_idx, prob.argmax(1)))
    assert [list(r) for r in ms.confusion] == confusion_matrix(y_idx, prob.argmax(1)).tolist()


# --- bootstrap ---------------------------------------------------------------------------------------
def test_bootstrap_is_reproducible_with_seed_and_changes_with_it():
    y, s = _toy(ties=True)
    a = bootstrap_auc(y, s, n_bootstrap=300, seed=7)
    b = bootstrap_auc(y, s, n_bootstrap=300, seed=7)
    c = bootstrap_auc(y, s, n_bootstrap=300, seed=8)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.ci_low < a.estimate < a.ci_high
    # the bootstrap and DeLong intervals estimate the same thing: they should roughly agree
    r = auc_with_ci(y, s, n_bootstrap=1000, seed=1)
    assert abs(r.ci_low - r.delong_ci_low) < 0.03 and abs(r.ci_high - r.delong_ci_high) < 0.03


def test_roc_band_contains_curve():
    y, s = _toy()
    grid = np.linspace(0, 1, 21)
    band = bootstrap_auc(y, s, n_bootstrap=200, seed=0, fpr_grid=grid).band
    assert band is not None
    assert np.all(np.array(band.tpr_low) <= np.array(band.tpr) + 1e-12)
    assert np.all(np.array(band.tpr) <= np.array(band.tpr_high) + 1e-12)
    assert band.tpr[-1] == 1.0


# --- operating points ---------------------------------------------------------------------------------
def test_threshold_rules():
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    s = np.arange(10) / 10
    # t=0.4: sens 5/5, spec 4/5; t=0.6: sens 4/5, spec 5/5 -> J ties at 0.8; the higher threshold wins
    assert choose_threshold(y, s, "youden") == pytest.approx(0.6)
    t90 = choose_threshold(y, s, "sens:0.9")
    assert np.mean(s[y == 1] >= t90) >= 0.9 and t90 == pytest.approx(0.4)
    assert choose_threshold(y, s, "sens:0.8") == pytest.approx(0.6)
    t80 = choose_threshold(y, s, "spec:0.8")
    assert np.mean(s[y == 0] < t80) >= 0.8 and t80 == pytest.approx(0.4)
    assert choose_threshold(y, s, "spec:1") == pytest.approx(0.6)
    for bad in ["youdn", "sens", "sens:x", "spec:1.5", "youden:1"]:
        with pytest.raises(ConfigError):
            parse_threshold_rule(bad)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_fixed_points_are_conservative_roc_points(target):
    y, s = _toy(n=300, seed=4, ties=True)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    sens = sensitivity_at_specificity(y, s, target)
    assert sens.value == pytest.approx(tpr[fpr <= 1 - target + 1e-12].max())
    assert np.mean(s[y == 0] < sens.threshold) >= target  # achievable: the threshold really meets it
    spec = specificity_at_sensitivity(y, s, target)
    assert spec.value == pytest.approx((1 - fpr[tpr >= target - 1e-12]).max())
    assert np.mean(s[y == 1] >= spec.threshold) >= target
    grid_value = tpr_at_fpr(s[y == 1], s[y == 0], np.array([1 - target]))[0]
    assert grid_value == pytest.approx(sens.value)


# --- calibration --------------------------------------------------------------------------------------
def test_ece_by_hand():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.85, 0.95, 0.95])
    cal = calibration(y, p, n_bins=2)
    # bin [0, .5): conf 0.1, freq 0.5 ; bin [.5, 1]: conf 0.9167, freq 0.6667
    assert cal.ece == pytest.approx(2 / 5 * 0.4 + 3 / 5 * abs(2 / 3 - 2.75 / 3))
    assert cal.mce == pytest.approx(0.4)
    assert [b.count for b in cal.bins] == [2, 3]
    assert cal.brier == pytest.approx(brier_score_loss(y, p))
    assert calibration(y, p).bins[3].count == 0 and math.isnan(calibration(y, p).bins[3].observed)


def test_temperature_scaling_recovers_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 3)) * 2
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in true_p])
    over = np.exp(2 * z) / np.exp(2 * z).sum(1, keepdims=True)  # logits doubled: over-confident
    ts = TemperatureScaling("multiclass").fit(over, y)
    assert ts.temperature_ == pytest.approx(2.0, rel=0.1)
    assert ts.nll_after_ < ts.nll_before_
    np.testing.assert_allclose(ts.transform(over).sum(1), 1.0)
    before = top_label_calibration(y, over).ece
    after = top_label_calibration(y, ts.transform(over)).ece
    assert after < before
    yb = (rng.random(4000) < 1 / (1 + np.exp(-z[:, 0]))).astype(int)
    pb = 1 / (1 + np.exp(-3 * z[:, 0]))
    assert TemperatureScaling("multilabel").fit(pb, yb).temperature_ == pytest.approx(3.0, rel=0.1)


# --- aggregation ----------------------------------------------------------------------------------------
def test_patient_aggregation_mean_and_max():
    ids = ["p2", "p1", "p2", "p1", "p3"]
    y = np.array([0, 0, 1, 0, 1])
    s = np.array([0.2, 0.1, 0.8, 0.3, 0.6])
    mean = aggregate(ids, y, s, "mean")
    assert mean.group_ids == ("p1", "p2", "p3")
    np.testing.assert_allclose(mean.scores, [0.2, 0.5, 0.6])
    np.testing.assert_array_equal(mean.y, [0, 1, 1])
    np.testing.assert_array_equal(mean.n_images, [2, 2, 1])
    np.testing.assert_allclose(aggregate(ids, y, s, "max").scores, [0.3, 0.8, 0.6])
    with pytest.raises(ConfigError, match="mean, max"):
        aggregate(ids, y, s, "median")
    with pytest.raises(DataError, match="1 of 5 rows have no patient"):
        aggregate(["p1", "", "p2", "p1", "p3"], y, s)


# --- degenerate input -------------------------------------------------------------------------------------
def test_one_class_warns_and_gives_nan():
    y = np.zeros(20, dtype=int)
    s = np.linspace(0, 1, 20)
    with pytest.warns(MetricWarning, match="all 20 cases are negative"):
        assert math.isnan(roc_auc(y, s))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        r = auc_with_ci(y, s, n_bootstrap=10)
        assert math.isnan(r.auc) and math.isnan(r.ci_low) and math.isnan(r.delong_ci_high)
        assert math.isnan(choose_threshold(y, s, "youden"))
        assert math.isnan(compare(y, s, s[::-1]).p_value)
        assert math.isnan(sensitivity_at_specificity(y, s, 0.9).value)


def test_unusable_input_raises_clear_errors():
    y, s = _toy(n=50)
    s = s.copy()
    s[[3, 7, 9]] = np.nan
    with pytest.raises(DataError, match="3 of 50 scores are NaN"):
        roc_auc(y, s)
    with pytest.raises(DataError, match="empty"):
        roc_auc([], [])
    with pytest.raises(DataError, match="5 labels but 4 scores"):
        roc_auc([0, 1, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(DataError, match="0/1"):
        roc_auc([0, 2, 1], [0.1, 0.2, 0.3])


def test_macro_delong_reduces_to_delong_and_agrees_with_bootstrap():
    y, s = _toy(n=300)
    p = 1 / (1 + np.exp(-s))
    two = delong_mean_auc(np.c_[1 - y, y], np.c_[1 - p, p])
    one = delong_auc(y, p)
    assert two.auc == pytest.approx(one.auc) and two.variance == pytest.approx(one.variance, rel=1e-9)
    rng = np.random.default_rng(5)
    yi = rng.integers(0, 3, 400)
    sc = rng.normal(size=(400, 3)) + np.eye(3)[yi]
    dl = delong_mean_auc(np.eye(3, dtype=int)[yi], sc)
    boot = bootstrap_average_auc(np.eye(3, dtype=int)[yi], sc, strata=yi, n_bootstrap=500, seed=0).macro
    assert dl.auc == pytest.approx(boot.estimate)
    assert abs(dl.ci_low - boot.ci_low) < 0.01 and abs(dl.ci_high - boot.ci_high) < 0.01


def test_compare_identical_scores():
    y, s = _toy()
    c = compare(y, s, s)
    assert c.diff == 0 and c.p_value == 1.0 and c.z == 0.0


# --- DeLong against R's pROC ----------------------------------------------------------------------------
def _rscript_with_proc() -> str:
    exe = shutil.which("Rscript")
    reason = None
    if exe is None:
        reason = "Rscript not found (apt-get install r-base-core r-cran-proc, or scripts/system-deps.sh)"
    elif subprocess.run([exe, "-e", "library(pROC)"], capture_output=True).returncode != 0:
        reason = "R package pROC not installed (apt-get install r-cran-proc)"
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    assert exe is not None
    return exe


def _proc(tmp_path: Path, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    exe = _rscript_with_proc()
    path = tmp_path / "in.csv"
    np.savetxt(path, np.column_stack([y, a, b]), delimiter=",", header="y,a,b", comments="", fmt="%.17g")
    out = subprocess.run(
        [exe, str(REPO / "tests" / "r" / "delong.R"), str(path)], capture_output=True, text=True, check=True
    ).stdout
    pairs = dict(line.split("=", 1) for line in out.strip().splitlines())
    pairs.pop("pROC")
    return {k: float(v) for k, v in pairs.items()}


def _check_against_proc(ref: dict[str, float], y: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    da, db = delong_auc(y, a), delong_auc(y, b)
    c = compare(y, a, b)
    assert da.auc == pytest.approx(ref["auc_a"], abs=1e-9)
    assert db.auc == pytest.approx(ref["auc_b"], abs=1e-9)
    assert da.variance == pytest.approx(ref["var_a"], abs=1e-6, rel=1e-6)
    assert db.variance == pytest.approx(ref["var_b"], abs=1e-6, rel=1e-6)
    assert da.ci_low == pytest.approx(ref["ci_low_a"], abs=1e-6)
    assert da.ci_high == pytest.approx(ref["ci_high_a"], abs=1e-6)
    assert c.z == pytest.approx(ref["z"], abs=1e-6)
    assert c.p_value == pytest.approx(ref["p_value"], abs=1e-6)
    if "diff_ci_low" in ref:
        assert c.diff_ci_low == pytest.approx(ref["diff_ci_low"], abs=1e-6)
        assert c.diff_ci_high == pytest.approx(ref["diff_ci_high"], abs=1e-6)


@pytest.mark.slow
def test_delong_matches_proc_on_synthetic_ties(tmp_path):
    y, a = _toy(n=150, seed=11, ties=True)
    b = np.round(a + np.random.default_rng(2).normal(scale=1.0, size=len(a)), 0)  # heavy ties
    _check_against_proc(_proc(tmp_path, y, a, b), y, a, b)


@functools.lru_cache(maxsize=1)
def _pneumonia_lr(npz: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    d = np.load(npz)

    def pixels(split: str, step: int) -> np.ndarray:
        return d[f"{split}_images"][:, ::step, ::step].reshape(len(d[f"{split}_images"]), -1) / 255.0

    y_train, y_test = d["train_labels"].ravel(), d["test_labels"].ravel()
    scores = []
    for step, c in ((2, 1.0), (4, 0.01)):  # 14x14 pixels, C=1; 7x7 pixels, C=0.01
        model = LogisticRegression(C=c, max_iter=2000).fit(pixels("train", step), y_train)
        scores.append(model.predict_proba(pixels("test", step))[:, 1])
    return y_test.astype(int), scores[0], scores[1]


@pytest.fixture
def pneumonia_predictions(medmnist):
    """Real predictions: two logistic regressions on PneumoniaMNIST pixels, fitted on train, scored on test."""
    return _pneumonia_lr(medmnist / "pneumoniamnist_official_counts.npz")


@pytest.mark.slow
@pytest.mark.realdata
def test_delong_matches_proc_on_real_pneumoniamnist_predictions(tmp_path, pneumonia_predictions):
    y, a, b = pneumonia_predictions
    assert len(y) == 624 and 0.75 < roc_auc_score(y, a) < 0.99
    _check_against_proc(_proc(tmp_path, y, a, b), y, a, b)


# --- properties -------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings(
    "ignore::medclass.metrics.MetricWarning"
)  # PPV undefined when nothing is positive
@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=4, max_size=60).filter(
        lambda v: 2 <= sum(y for y, _ in v) <= len(v) - 2
    )
)
def test_properties_against_sklearn_with_heavy_ties(cases):
    y = np.array([int(a) for a, _ in cases])
    s = np.array([b / 6 for _, b in cases])  # few distinct values: many ties
    assert fast_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    np.testing.assert_allclose(midranks(s), rankdata(s))
    dl = delong_auc(y, s)
    assert dl.variance >= 0 and dl.ci_low <= dl.auc <= dl.ci_high
    for rule in ("youden", "sens:0.8", "spec:0.8"):
        thr = choose_threshold(y, s, rule)
        assert thr in set(s.tolist()) or thr > s.max()  # an achievable threshold
        op = operating_point(y, s, thr)
        assert op.tp + op.fn == y.sum() and op.tn + op.fp == len(y) - y.sum()
        if rule == "sens:0.8":
            assert op.sensitivity >= 0.8
        if rule == "spec:0.8":
            assert op.specificity >= 0.8


def test_accuracy_has_a_wilson_ci_at_the_operating_point_and_for_argmax():
    from medclass.metrics.operating import argmax_summary, operating_point, wilson_ci

    y = np.array([0, 0, 0, 1, 1, 1, 1, 0, 1, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2, 0.9, 0.6, 0.55, 0.05])
    op = operating_point(y, s, 0.5)
    correct = int(np.sum((s >= 0.5) == y))
    assert op.accuracy == correct / len(y)
    assert op.accuracy_ci == wilson_ci(correct, len(y))
    assert op.accuracy_ci[0] < op.accuracy < op.accuracy_ci[1]
    summary = argmax_summary(y, np.stack([1 - s, s], axis=1), ["a", "b"])
    assert summary.accuracy == op.accuracy and summary.accuracy_ci == op.accuracy_ci
