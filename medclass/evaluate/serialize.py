"""An :class:`EvaluationResult` as plain JSON-safe data: the content of ``metrics.json``.

NaN (an undefined metric) becomes ``null``. The layout is documented in ``docs/metrics-json.md`` terms
in :data:`SCHEMA` (a version string bumped on incompatible changes).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from medclass import __version__
from medclass.evaluate.core import ClassResult, EvaluationResult, LevelResult
from medclass.metrics import AUCResult, BootstrapCI, CalibrationResult, OperatingPoint

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
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        lo, hi = getattr(op, f"{name}_ci")
        out |= {name: _num(getattr(op, name)), f"{name}_ci_low": _num(lo), f"{name}_ci_high": _num(hi)}
    out |= {
        "f1": _num(op.f1),
        "accuracy": _num(op.accuracy),
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


def _class(c: ClassResult, rule: str, description: str) -> dict[str, Any]:
    out = _auc(c.auc)
    out["average_precision"] = _num(c.average_precision)
    op = _op(c.operating)
    op |= {"rule": rule, "rule_description": description, "chosen_on": "validation"}
    op["validation"] = {k: v for k, v in _op(c.val_operating).items() if k != "threshold"}
    out["operating_point"] = op
    out["sensitivity_at_specificity"] = {
        f"{p.target:g}": {"value": _num(p.value), "threshold": _num(p.threshold)} for p in c.sens_at_spec
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
