"""Evaluation of a predictions table: the threshold is chosen on validation, everything is measured on test.

Pure: validation and test predictions in, an :class:`EvaluationResult` out. No model, no files.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from medclass.errors import ConfigError, DataError, look_up
from medclass.evaluate.table import PredictionTable, prediction_table
from medclass.manifest.meta import positive_class
from medclass.metrics import (
    AGGREGATORS,
    DEFAULT_FPR_GRID,
    AUCResult,
    BootstrapCI,
    CalibrationResult,
    DeLongResult,
    FixedPoint,
    MetricWarning,
    MulticlassSummary,
    OperatingPoint,
    TemperatureScaling,
    ThresholdCI,
    ThresholdRule,
    aggregate,
    argmax_summary,
    auc_with_ci,
    bootstrap_average_auc,
    calibration,
    choose_threshold,
    delong_mean_auc,
    operating_point,
    parse_threshold_rule,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
    threshold_ci,
    top_label_calibration,
)

log = logging.getLogger(__name__)
LEVELS = ("image", "patient", "both")


@dataclass(frozen=True)
class EvaluationConfig:
    """How to evaluate. ``threshold``: ``youden``, ``sens:T`` or ``spec:T`` (chosen on validation)."""

    threshold: str = "youden"
    n_bootstrap: int = 2000
    seed: int = 0
    alpha: float = 0.05
    level: str = "both"
    aggregate: str = "mean"
    group_column: str = "patient_id"
    by: tuple[str, ...] = ()
    n_bins: int = 10
    temperature_scaling: bool = False
    positive_class: str | None = None
    fixed_specificities: tuple[float, ...] = (0.90, 0.95)
    fixed_sensitivities: tuple[float, ...] = (0.90, 0.95)

    def validate(self) -> ThresholdRule:
        """The parsed threshold rule. Raises ConfigError on any invalid setting."""
        look_up(LEVELS, self.level, "level")
        look_up(AGGREGATORS, self.aggregate, "aggregation")
        if self.n_bootstrap < 0:
            raise ConfigError(f"bootstrap count must be >= 0 (got {self.n_bootstrap})")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1) (got {self.alpha})")
        if self.n_bins < 1:
            raise ConfigError(f"calibration bins must be >= 1 (got {self.n_bins})")
        return parse_threshold_rule(self.threshold)


@dataclass(frozen=True)
class Curve:
    """Points of a curve (ROC: x = FPR, y = TPR; PR: x = recall, y = precision)."""

    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True)
class ClassResult:
    """One class (or finding) at one level: AUC, operating point, fixed points, calibration, curves."""

    name: str
    auc: AUCResult
    threshold: float
    operating: OperatingPoint  # test, at the validation threshold
    val_operating: OperatingPoint  # validation, same threshold
    sens_at_spec: tuple[FixedPoint, ...]
    spec_at_sens: tuple[FixedPoint, ...]
    calibration: CalibrationResult
    calibration_before_scaling: CalibrationResult | None
    average_precision: float
    roc: Curve | None
    pr: Curve | None
    threshold_ci: ThresholdCI | None = None  # bootstrap CI of the threshold and the test rates at it


@dataclass(frozen=True)
class LevelResult:
    """All classes at one level (``image`` or ``patient``) with macro/micro averages."""

    level: str
    n_val: int
    n_test: int
    classes: dict[str, ClassResult]
    macro: BootstrapCI
    macro_delong: DeLongResult
    micro: BootstrapCI
    multiclass: MulticlassSummary | None
    top_label_calibration: CalibrationResult | None


@dataclass(frozen=True)
class SubgroupClass:
    """One class in one subgroup: AUC with CIs and the rates at the global (validation) threshold."""

    auc: AUCResult
    sensitivity: float
    specificity: float


@dataclass(frozen=True)
class SubgroupResult:
    """Test-set metrics for the rows where ``column == value`` (image level)."""

    column: str
    value: str
    n: int
    classes: dict[str, SubgroupClass]


@dataclass(frozen=True)
class EvaluationResult:
    """Everything measured; :func:`medclass.evaluate.to_dict` turns it into metrics.json."""

    config: EvaluationConfig
    rule: ThresholdRule
    task: str
    classes: tuple[str, ...]
    reported_classes: tuple[str, ...]
    levels: dict[str, LevelResult]
    subgroups: tuple[SubgroupResult, ...]
    temperature: float | None
    patients_in_val_and_test: int
    warnings: tuple[str, ...] = field(default=())


def _as_table(
    data: PredictionTable | Sequence[Mapping[str, Any]], classes, task, what: str
) -> PredictionTable:
    if isinstance(data, PredictionTable):
        return data
    return prediction_table(data, classes, task, what=what)


def _reported(classes: tuple[str, ...], task: str, positive: str | None) -> tuple[str, ...]:
    """The positive class alone for a two-class task (given, else the class not named like a negative;
    :func:`medclass.manifest.positive_class` refuses to guess), else every class."""
    chosen = positive_class(classes, positive, task=task)
    return classes if chosen is None else (chosen,)


def _class_result(
    name, k, val: PredictionTable, test: PredictionTable, rule, config, before, curves, level: str = ""
) -> ClassResult:
    yv, sv = val.y[:, k], val.scores[:, k]
    yt, st = test.y[:, k], test.scores[:, k]
    thr = choose_threshold(yv, sv, rule, what=f"{name} (validation)")
    auc = auc_with_ci(yt, st, n_bootstrap=config.n_bootstrap, seed=config.seed, alpha=config.alpha,
                      fpr_grid=DEFAULT_FPR_GRID if curves else None, what=name)  # fmt: skip
    both = 0 < yt.sum() < len(yt)
    roc = pr = None
    ap = math.nan
    if both and curves:
        fpr, tpr, _ = roc_curve(yt, st)
        roc = Curve(tuple(fpr.tolist()), tuple(tpr.tolist()))
        prec, rec, _ = precision_recall_curve(yt, st)
        pr = Curve(tuple(rec.tolist()), tuple(prec.tolist()))
    if both:
        ap = float(average_precision_score(yt, st))
    return ClassResult(
        name=name,
        auc=auc,
        threshold=thr,
        operating=operating_point(yt, st, thr, alpha=config.alpha, what=name),
        val_operating=operating_point(yv, sv, thr, alpha=config.alpha, what=f"{name} (validation)"),
        sens_at_spec=tuple(
            sensitivity_at_specificity(yt, st, t, what=name) for t in config.fixed_specificities
        ),
        spec_at_sens=tuple(
            specificity_at_sensitivity(yt, st, t, what=name) for t in config.fixed_sensitivities
        ),
        calibration=calibration(yt, st, n_bins=config.n_bins, what=name),
        calibration_before_scaling=None
        if before is None
        else calibration(yt, before[:, k], n_bins=config.n_bins),
        average_precision=ap,
        roc=roc,
        pr=pr,
        threshold_ci=threshold_ci(
            yv,
            sv,
            yt,
            st,
            rule,
            n_bootstrap=config.n_bootstrap,
            seed=config.seed,
            alpha=config.alpha,
            what=f"{name} ({level} level)" if level else name,
        ),
    )


def _level(level, val, test, reported, rule, config, before) -> LevelResult:
    idx = {c: j for j, c in enumerate(test.classes)}
    per = {c: _class_result(c, idx[c], val, test, rule, config, before, True, level) for c in reported}
    single = test.task == "multiclass" and bool(np.all(test.y.sum(axis=1) == 1))
    cols = [idx[c] for c in reported]  # a binary task averages over its positive class only
    y_avg, s_avg = test.y[:, cols], test.scores[:, cols]
    strata = y_avg[:, 0] if len(cols) == 1 else (test.y_index if single else None)
    avg = bootstrap_average_auc(y_avg, s_avg, strata=strata, n_bootstrap=config.n_bootstrap,
                                seed=config.seed, alpha=config.alpha)  # fmt: skip
    macro_dl = delong_mean_auc(y_avg, s_avg, classes=avg.classes_used, alpha=config.alpha)
    return LevelResult(
        level=level,
        n_val=len(val),
        n_test=len(test),
        classes=per,
        macro=avg.macro,
        macro_delong=macro_dl,
        micro=avg.micro,
        multiclass=argmax_summary(test.y_index, test.scores, test.classes) if single else None,
        top_label_calibration=top_label_calibration(test.y_index, test.scores, n_bins=config.n_bins)
        if single
        else None,
    )


def _aggregate_table(table: PredictionTable, column: str, method: str) -> PredictionTable:
    ids = table.column(column)
    agg = aggregate(ids, table.y, table.scores, method)
    rows = tuple({column: g, "n_images": int(n)} for g, n in zip(agg.group_ids, agg.n_images, strict=True))
    return PredictionTable(rows, table.classes, table.task, agg.y, agg.scores)


def _subgroups(
    test: PredictionTable, reported, thresholds: dict[str, float], config
) -> tuple[SubgroupResult, ...]:
    out = []
    idx = {c: j for j, c in enumerate(test.classes)}
    for column in config.by:
        if column not in test.rows[0]:
            raise DataError(
                f"--by {column}: no such column in the predictions (columns: {', '.join(test.rows[0])})"
            )
        values = np.array([v or "(missing)" for v in test.column(column)])
        for value in sorted(set(values.tolist())):
            sub = test.subset(values == value)
            per = {}
            for c in reported:
                k = idx[c]
                what = f"{column}={value}, {c}"
                a = auc_with_ci(sub.y[:, k], sub.scores[:, k], n_bootstrap=config.n_bootstrap, seed=config.seed,
                                alpha=config.alpha, what=what)  # fmt: skip
                with warnings.catch_warnings():  # a subgroup without positives has no sensitivity: NaN
                    warnings.simplefilter("ignore", MetricWarning)
                    op = operating_point(sub.y[:, k], sub.scores[:, k], thresholds[c], what=what)
                per[c] = SubgroupClass(a, op.sensitivity, op.specificity)
            out.append(SubgroupResult(column, value, len(sub), per))
    return tuple(out)


def evaluate_predictions(
    val: PredictionTable | Sequence[Mapping[str, Any]],
    test: PredictionTable | Sequence[Mapping[str, Any]],
    classes: Sequence[str] | None = None,
    task: str | None = None,
    config: EvaluationConfig | None = None,
) -> EvaluationResult:
    """Evaluate test predictions, choosing thresholds (and the temperature) on validation only.

    ``val``/``test`` are predictions rows (see :mod:`medclass.evaluate.table`) or tables. Undefined
    metrics (a class absent from a split or subgroup) are NaN and listed in ``warnings`` (also emitted
    as MetricWarning). Raises DataError for empty splits, NaN probabilities, unknown labels or a missing
    ``--by`` column, and ConfigError for invalid settings.
    """
    config = config or EvaluationConfig()
    rule = config.validate()
    val_t = _as_table(val, classes, task, "validation split")
    test_t = _as_table(test, classes or val_t.classes, task or val_t.task, "test split")
    if val_t.classes != test_t.classes or val_t.task != test_t.task:
        raise DataError(
            f"validation and test predictions disagree on classes/task ({val_t.classes} vs {test_t.classes})"
        )
    reported = _reported(test_t.classes, test_t.task, config.positive_class)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        temperature = None
        before = None
        if config.temperature_scaling:
            ts = TemperatureScaling(test_t.task).fit(
                val_t.scores, val_t.y_index if val_t.task == "multiclass" else val_t.y
            )
            temperature = ts.temperature_
            before = test_t.scores
            val_t, test_t = (
                val_t.with_scores(ts.transform(val_t.scores)),
                test_t.with_scores(ts.transform(test_t.scores)),
            )
            log.info(
                "temperature scaling: T = %.3f (validation NLL %.4f -> %.4f)",
                temperature,
                ts.nll_before_,
                ts.nll_after_,
            )
        levels: dict[str, LevelResult] = {}
        if config.level in ("image", "both"):
            levels["image"] = _level("image", val_t, test_t, reported, rule, config, before)
        overlap = 0
        col = config.group_column
        has_groups = col in test_t.rows[0] and col in val_t.rows[0]
        if config.level == "patient" and not has_groups:
            raise DataError(f"patient-level metrics need a {col!r} column in the predictions")
        if config.level == "both" and not has_groups:
            log.warning("no %r column in the predictions: image-level metrics only", col)
        if config.level in ("patient", "both") and has_groups:
            overlap = len(set(val_t.column(col)) & set(test_t.column(col)) - {""})
            pv = _aggregate_table(val_t, col, config.aggregate)
            pt = _aggregate_table(test_t, col, config.aggregate)
            pb = (
                None
                if before is None
                else _aggregate_table(test_t.with_scores(before), col, config.aggregate).scores
            )
            levels["patient"] = _level("patient", pv, pt, reported, rule, config, pb)
        subgroups: tuple[SubgroupResult, ...] = ()
        if config.by:  # image level, at the image-level thresholds chosen on validation
            if "image" in levels:
                thresholds = {c: r.threshold for c, r in levels["image"].classes.items()}
            else:
                k = {c: j for j, c in enumerate(val_t.classes)}
                thresholds = {
                    c: choose_threshold(val_t.y[:, k[c]], val_t.scores[:, k[c]], rule, what=c)
                    for c in reported
                }
            subgroups = _subgroups(test_t, reported, thresholds, config)
    messages = tuple(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, MetricWarning)))
    for w in caught:  # hand every warning on to the caller; we only recorded them for the report
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if overlap:
        log.warning("%d patients appear in both the validation and the test split", overlap)
    return EvaluationResult(config, rule, test_t.task, test_t.classes, reported, levels, subgroups, temperature,
                            overlap, messages)  # fmt: skip
