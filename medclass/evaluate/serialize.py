"""An :class:`EvaluationResult` as plain JSON-safe data: the content of ``metrics.json``.

Undefined values (NaN: a class absent from a split, a rate with a zero denominator) are ``null``.
``schema`` is bumped on incompatible changes. Layout (``<C>``: a reported class; a two-class task reports
its positive class only, otherwise every class or finding)::

    schema, medclass_version, task ("multiclass"|"multilabel"), classes, reported_classes, positive_class,
    config {threshold, n_bootstrap, seed, alpha, level, aggregate, group_column, by, n_bins, ...},
    threshold_rule {rule, description, chosen_on: "validation"}, temperature (T or null),
    splits {validation, test}                      (added by the CLI)
    levels.image / levels.patient:
      n_val, n_test
      classes.<C>:
        n, n_pos, n_neg, prevalence,
        auc, auc_ci_low, auc_ci_high               (stratified bootstrap, percentile)
        auc_delong_ci_low, auc_delong_ci_high, auc_delong_variance,
        average_precision,
        operating_point {threshold, rule, rule_description, chosen_on,
                         sensitivity, specificity, ppv, npv (+ _ci_low/_ci_high, Wilson), f1, accuracy,
                         tp, fp, tn, fn, confusion_matrix [[tn, fp], [fn, tp]],
                         validation {the same rates on the validation split},
                         threshold_bootstrap {threshold, threshold_ci_low, threshold_ci_high,
                                              sensitivity(_ci_low/_ci_high), specificity(...),
                                              n_bootstrap, n_valid, seed, validation_n_pos,
                                              validation_n_neg, min_validation_cases,
                                              small_validation, method}},
        sensitivity_at_specificity {"0.9": {value, threshold, ci_low, ci_high}, "0.95": ...}  (bootstrap)
        specificity_at_sensitivity {"0.9": {value, threshold}, "0.95": ...},
        calibration {brier, ece, mce, n_bins, bins [{lower, upper, count, mean_predicted, observed}]},
        calibration_before_scaling {...}           (with temperature scaling)
        curves {roc {fpr, tpr}, roc_band {fpr, tpr, tpr_low, tpr_high}, pr {recall, precision}}
      macro {auc, auc_ci_low, auc_ci_high, n_bootstrap_valid, auc_delong_ci_low, auc_delong_ci_high}
      micro {auc, auc_ci_low, auc_ci_high, n_bootstrap_valid}            (more than one reported class)
      multiclass {accuracy, confusion_matrix, classes}                   (single-label: arg-max class)
      top_label_calibration {...}                                        (single-label)
    subgroups.<column>: [{value, n, classes.<C> {n, n_pos, n_neg, prevalence, auc, auc_ci_low,
                          auc_ci_high, auc_delong_ci_low, auc_delong_ci_high, sensitivity, specificity}}]
    patients_in_val_and_test, warnings [one line per undefined metric]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from medclass import __version__
from medclass.evaluate.core import ClassResult, EvaluationResult, LevelResult
from medclass.metrics import AUCResult, BootstrapCI, CalibrationResult, OperatingPoint, ThresholdCI

SCHEMA = "medclass.metrics/1"


def _num(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and not isinstance(x, (list, tuple, dict)):
        return _num(x.item())
    return x


def _auc(a: AUCResult) -> dict[str, Any]:
    return {
        "n": a.n,
        "n_pos": a.n_pos,
        "n_neg": a.n_neg,
        "prevalence": _num(a.prevalence),
        "auc": _num(a.auc),
        "auc_ci_low": _num(a.ci_low),
        "auc_ci_high": _num(a.ci_high),
        "auc_delong_ci_low": _num(a.delong_ci_low),
        "auc_delong_ci_high": _num(a.delong_ci_high),
        "auc_delong_variance": _num(a.delong_variance),
    }


def _op(op: OperatingPoint) -> dict[str, Any]:
    out: dict[str, Any] = {"threshold": _num(op.threshold), "n": op.n}
    for name in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
        lo, hi = getattr(op, f"{name}_ci")
        out |= {name: _num(getattr(op, name)), f"{name}_ci_low": _num(lo), f"{name}_ci_high": _num(hi)}
    out |= {
        "f1": _num(op.f1),
        "tp": op.tp,
        "fp": op.fp,
        "tn": op.tn,
        "fn": op.fn,
    }
    out["confusion_matrix"] = op.confusion
    return out


def _calibration(c: CalibrationResult | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "brier": _num(c.brier),
        "ece": _num(c.ece),
        "mce": _num(c.mce),
        "n_bins": len(c.bins),
        "bins": [{k: _num(v) for k, v in dataclasses.asdict(b).items()} for b in c.bins],
    }


def _boot(b: BootstrapCI) -> dict[str, Any]:
    return {"auc": _num(b.estimate), "auc_ci_low": _num(b.ci_low), "auc_ci_high": _num(b.ci_high),
            "n_bootstrap_valid": b.n_valid}  # fmt: skip


THRESHOLD_BOOTSTRAP_METHOD = (
    "percentile bootstrap; each replicate resamples validation (positives and negatives apart) and "
    "re-chooses the threshold with the same rule, and resamples the evaluated split to measure the rates at it"
)


def _threshold_bootstrap(t: ThresholdCI) -> dict[str, Any]:
    """The threshold's bootstrap CI and the evaluated split's rates at it (see metrics.threshold_ci)."""
    out: dict[str, Any] = {}
    for name in ("threshold", "sensitivity", "specificity"):
        iv = getattr(t, name)
        out |= {
            name: _num(iv.estimate),
            f"{name}_ci_low": _num(iv.ci_low),
            f"{name}_ci_high": _num(iv.ci_high),
        }
    return out | {
        "n_bootstrap": t.n_bootstrap,
        "n_valid": t.n_valid,
        "seed": t.seed,
        "validation_n_pos": t.val_n_pos,
        "validation_n_neg": t.val_n_neg,
        "min_validation_cases": t.min_cases,
        "small_validation": t.small_validation,
        "method": THRESHOLD_BOOTSTRAP_METHOD,
    }


def _band_ci(c: ClassResult, fpr: float) -> dict[str, Any]:
    """Bootstrap CI of the sensitivity at FPR <= ``fpr`` read from the ROC band (when on its grid)."""
    band = c.auc.band
    if band is None:
        return {}
    hits = [i for i, f in enumerate(band.fpr) if abs(f - fpr) < 1e-9]
    if not hits:
        return {}
    return {"ci_low": _num(band.tpr_low[hits[0]]), "ci_high": _num(band.tpr_high[hits[0]])}


def _class(c: ClassResult, rule: str, description: str) -> dict[str, Any]:
    out = _auc(c.auc)
    out["average_precision"] = _num(c.average_precision)
    op = _op(c.operating)
    op |= {"rule": rule, "rule_description": description, "chosen_on": "validation"}
    op["validation"] = {k: v for k, v in _op(c.val_operating).items() if k != "threshold"}
    if c.threshold_ci is not None:
        op["threshold_bootstrap"] = _threshold_bootstrap(c.threshold_ci)
    out["operating_point"] = op
    out["sensitivity_at_specificity"] = {
        f"{p.target:g}": {"value": _num(p.value), "threshold": _num(p.threshold)} | _band_ci(c, 1 - p.target)
        for p in c.sens_at_spec
    }
    out["specificity_at_sensitivity"] = {
        f"{p.target:g}": {"value": _num(p.value), "threshold": _num(p.threshold)} for p in c.spec_at_sens
    }
    out["calibration"] = _calibration(c.calibration)
    if c.calibration_before_scaling is not None:
        out["calibration_before_scaling"] = _calibration(c.calibration_before_scaling)
    curves: dict[str, Any] = {}
    if c.roc is not None:
        curves["roc"] = {"fpr": [_num(v) for v in c.roc.x], "tpr": [_num(v) for v in c.roc.y]}
    band = c.auc.band
    if band is not None:
        curves["roc_band"] = {
            "fpr": list(band.fpr),
            "tpr": list(band.tpr),
            "tpr_low": [_num(v) for v in band.tpr_low],
            "tpr_high": [_num(v) for v in band.tpr_high],
        }
    if c.pr is not None:
        curves["pr"] = {"recall": [_num(v) for v in c.pr.x], "precision": [_num(v) for v in c.pr.y]}
    out["curves"] = curves
    return out


def _level(lv: LevelResult, rule: str, description: str) -> dict[str, Any]:
    macro = _boot(lv.macro)
    macro |= {
        "auc_delong_ci_low": _num(lv.macro_delong.ci_low),
        "auc_delong_ci_high": _num(lv.macro_delong.ci_high),
    }
    out: dict[str, Any] = {
        "n_val": lv.n_val,
        "n_test": lv.n_test,
        "classes": {name: _class(c, rule, description) for name, c in lv.classes.items()},
        "macro": macro,
    }
    if len(lv.classes) > 1:  # micro-averaging the two columns of a binary task means nothing
        out["micro"] = _boot(lv.micro)
    if lv.multiclass is not None:
        out["multiclass"] = {
            "accuracy": _num(lv.multiclass.accuracy),
            "accuracy_ci_low": _num(lv.multiclass.accuracy_ci[0]),
            "accuracy_ci_high": _num(lv.multiclass.accuracy_ci[1]),
            "confusion_matrix": [list(r) for r in lv.multiclass.confusion],
            "classes": list(lv.multiclass.classes),
        }
    if lv.top_label_calibration is not None:
        out["top_label_calibration"] = _calibration(lv.top_label_calibration)
    return out


def to_dict(result: EvaluationResult) -> dict[str, Any]:
    """The JSON-safe content of ``metrics.json`` (NaN as ``None``)."""
    cfg = result.config
    rule, description = str(result.rule), result.rule.describe()
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "medclass_version": __version__,
        "task": result.task,
        "classes": list(result.classes),
        "reported_classes": list(result.reported_classes),
        "positive_class": (
            result.reported_classes[0] if result.task == "multiclass" and len(result.classes) == 2 else None
        ),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()},
        "threshold_rule": {"rule": rule, "description": description, "chosen_on": "validation"},
        "temperature": _num(result.temperature) if result.temperature is not None else None,
        "levels": {name: _level(lv, rule, description) for name, lv in result.levels.items()},
        "subgroups": {},
        "patients_in_val_and_test": result.patients_in_val_and_test,
        "warnings": list(result.warnings),
    }
    for sg in result.subgroups:
        per: dict[str, Any] = {}
        entry = {"value": sg.value, "n": sg.n, "classes": per}
        for name, c in sg.classes.items():
            per[name] = _auc(c.auc) | {
                "sensitivity": _num(c.sensitivity),
                "specificity": _num(c.specificity),
            }
        out["subgroups"].setdefault(sg.column, []).append(entry)
    return out
