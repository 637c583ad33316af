"""Operating points: choosing a decision threshold on validation data and measuring it elsewhere.

A case is called positive when ``score >= threshold``. Thresholds are always scores that occur in the
data the rule was given (achievable), never interpolated. Rules, by name (``THRESHOLD_RULES``):

- ``youden``: maximise Youden's J = sensitivity + specificity - 1 (ties: the highest threshold);
- ``sens:T``: the highest threshold whose sensitivity is >= T (the most specific such point);
- ``spec:T``: the lowest threshold whose specificity is >= T (the most sensitive such point).

"Sensitivity at specificity >= T" and "specificity at sensitivity >= T" are conservative in the same way:
the best value among achievable thresholds that meet the target, never an interpolation between them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm
from sklearn.metrics import confusion_matrix

from medclass.errors import ConfigError
from medclass.metrics._checks import binary_inputs, both_classes, warn

_EPS = 1e-9


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: np.ndarray) -> np.ndarray:
    """Highest achievable true-positive rate with false-positive rate <= each value of ``fpr``.

    ``pos``/``neg`` are the scores of the positive/negative cases (both non-empty).
    """
    neg_desc = np.sort(neg)[::-1]
    pos_sorted = np.sort(pos)
    n, m = len(neg_desc), len(pos_sorted)
    allowed = np.floor(np.asarray(fpr, dtype=float) * n + _EPS).astype(int)  # negatives allowed above
    out = np.ones(len(allowed))
    inside = allowed < n
    cut = neg_desc[allowed[inside]]  # threshold must be strictly above this negative
    out[inside] = (m - np.searchsorted(pos_sorted, cut, side="right")) / m
    return out


@dataclass(frozen=True)
class ThresholdRule:
    """How a threshold is chosen: ``kind`` in ``THRESHOLD_RULES`` and its ``target`` (sens/spec)."""

    kind: str
    target: float | None = None

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target:g}"

    def describe(self) -> str:
        """One sentence for the report."""
        if self.kind == "youden":
            return "maximum Youden's J (sensitivity + specificity - 1)"
        name = "sensitivity" if self.kind == "sens" else "specificity"
        return f"{name} >= {self.target:g} (the best achievable threshold meeting it)"


def _roc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``roc_curve(y, s, drop_intermediate=False)`` of scikit-learn, without its input checks (the rules
    run thousands of times inside a bootstrap); ``y`` 0/1 with both classes, ``s`` finite."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s_desc, y_desc = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_desc)), len(s_desc) - 1]  # last index of each distinct score
    tps = np.cumsum(y_desc)[last]
    fps = 1 + last - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]], np.r_[np.inf, s_desc[last]]


def _youden(y: np.ndarray, s: np.ndarray, target: float | None) -> float:
    fpr, tpr, thr = _roc(y, s)
    j = tpr[1:] - fpr[1:]
    return float(thr[1:][int(np.argmax(j))])


def _target_sensitivity(y: np.ndarray, s: np.ndarray, target: float | None) -> float:
    assert target is not None
    _, tpr, thr = _roc(y, s)
    ok = np.flatnonzero(tpr[1:] >= target - _EPS)
    return float(thr[1:][ok[0]])  # tpr reaches 1 at the lowest score, so ok is never empty


def _target_specificity(y: np.ndarray, s: np.ndarray, target: float | None) -> float:
    assert target is not None
    fpr, _, thr = _roc(y, s)
    ok = np.flatnonzero(fpr[1:] <= 1 - target + _EPS)
    if ok.size == 0:  # even the top score admits too many negatives: call nothing positive
        return float(np.nextafter(s.max(), np.inf))
    return float(thr[1:][ok[-1]])


THRESHOLD_RULES: dict[str, Callable[[np.ndarray, np.ndarray, float | None], float]] = {
    "youden": _youden,
    "sens": _target_sensitivity,
    "spec": _target_specificity,
}


def parse_threshold_rule(text: str) -> ThresholdRule:
    """``"youden"``, ``"sens:0.9"`` or ``"spec:0.95"`` -> ThresholdRule. Raises ConfigError otherwise."""
    kind, _, value = str(text).strip().partition(":")
    valid = "youden, sens:T, spec:T (0 < T <= 1)"
    if kind not in THRESHOLD_RULES:
        raise ConfigError(f"unknown threshold rule {text!r}; valid: {valid}")
    if kind == "youden":
        if value:
            raise ConfigError(f"threshold rule 'youden' takes no value (got {text!r})")
        return ThresholdRule("youden")
    try:
        target = float(value)
    except ValueError:
        raise ConfigError(
            f"threshold rule {text!r} needs a number, e.g. {kind}:0.9; valid: {valid}"
        ) from None
    if not 0 < target <= 1:
        raise ConfigError(f"threshold rule {text!r}: target must be in (0, 1]")
    return ThresholdRule(kind, target)


def choose_threshold(y_true: object, y_score: object, rule: ThresholdRule | str, *, what: str = "") -> float:
    """The threshold ``rule`` picks on these (validation) labels and scores; NaN + warning if one class.

    Raises DataError on unusable input and ConfigError on an unknown rule.
    """
    rule = parse_threshold_rule(rule) if isinstance(rule, str) else rule
    y, s = binary_inputs(y_true, y_score, what=what)
    if not both_classes(y, what, "the threshold"):
        return math.nan
    return THRESHOLD_RULES[rule.kind](y, s, rule.target)


def wilson_ci(successes: int, total: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes/total``; NaNs when ``total`` is 0."""
    if total == 0:
        return math.nan, math.nan
    z = float(norm.ppf(1 - alpha / 2))
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


@dataclass(frozen=True)
class OperatingPoint:
    """Counts and rates at one threshold (score >= threshold is positive); Wilson CIs for the rates."""

    threshold: float
    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    f1: float
    accuracy: float
    sensitivity_ci: tuple[float, float]
    specificity_ci: tuple[float, float]
    ppv_ci: tuple[float, float]
    npv_ci: tuple[float, float]
    accuracy_ci: tuple[float, float] = (math.nan, math.nan)

    @property
    def confusion(self) -> list[list[int]]:
        """[[tn, fp], [fn, tp]] (rows: truth 0/1, columns: predicted 0/1), as scikit-learn."""
        return [[self.tn, self.fp], [self.fn, self.tp]]


def operating_point(
    y_true: object, y_score: object, threshold: float, *, alpha: float = 0.05, what: str = ""
) -> OperatingPoint:
    """Sensitivity, specificity, PPV, NPV, F1, accuracy and the confusion matrix at ``threshold``.

    A NaN threshold gives NaN rates. Rates whose denominator is 0 are NaN (with a warning). Raises
    DataError on unusable input.
    """
    y, s = binary_inputs(y_true, y_score, what=what)
    if math.isnan(threshold):
        nan, nan2 = math.nan, (math.nan, math.nan)
        return OperatingPoint(
            threshold, len(y), 0, 0, 0, 0, nan, nan, nan, nan, nan, nan, nan2, nan2, nan2, nan2, nan2
        )
    pred = (s >= threshold).astype(int)
    (tn, fp), (fn, tp) = confusion_matrix(y, pred, labels=[0, 1]).tolist()
    undefined = [name for name, den in (("sensitivity", tp + fn), ("specificity", tn + fp),
                                        ("PPV", tp + fp), ("NPV", tn + fn)) if den == 0]  # fmt: skip
    if undefined:
        warn(f"{what + ': ' if what else ''}{', '.join(undefined)} undefined at threshold {threshold:.4g}")
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return OperatingPoint(
        threshold=float(threshold),
        n=len(y),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        f1=f1,
        accuracy=(tp + tn) / len(y),
        sensitivity_ci=wilson_ci(tp, tp + fn, alpha),
        specificity_ci=wilson_ci(tn, tn + fp, alpha),
        ppv_ci=wilson_ci(tp, tp + fp, alpha),
        npv_ci=wilson_ci(tn, tn + fn, alpha),
        accuracy_ci=wilson_ci(tp + tn, len(y), alpha),
    )


@dataclass(frozen=True)
class FixedPoint:
    """The best achievable ``value`` of one rate given the other rate >= ``target``, and its threshold."""

    target: float
    value: float
    threshold: float


def sensitivity_at_specificity(
    y_true: object, y_score: object, target: float, *, what: str = ""
) -> FixedPoint:
    """Highest sensitivity among thresholds whose specificity is >= ``target`` (NaN if one class)."""
    y, s = binary_inputs(y_true, y_score, what=what)
    if not both_classes(y, what, f"sensitivity at specificity {target:g}"):
        return FixedPoint(target, math.nan, math.nan)
    thr = _target_specificity(y, s, target)
    pos = s[y == 1]
    return FixedPoint(target, float(np.mean(pos >= thr)), thr)


def specificity_at_sensitivity(
    y_true: object, y_score: object, target: float, *, what: str = ""
) -> FixedPoint:
    """Highest specificity among thresholds whose sensitivity is >= ``target`` (NaN if one class)."""
    y, s = binary_inputs(y_true, y_score, what=what)
    if not both_classes(y, what, f"specificity at sensitivity {target:g}"):
        return FixedPoint(target, math.nan, math.nan)
    thr = _target_sensitivity(y, s, target)
    neg = s[y == 0]
    return FixedPoint(target, float(np.mean(neg < thr)), thr)


@dataclass(frozen=True)
class MulticlassSummary:
    """Single-label multiclass: accuracy of the arg-max class and the K x K confusion matrix."""

    accuracy: float
    confusion: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted class
    classes: tuple[str, ...]
    accuracy_ci: tuple[float, float] = (math.nan, math.nan)  # Wilson, 95%


def argmax_summary(
    y_index: object, y_score: object, classes: tuple[str, ...] | list[str]
) -> MulticlassSummary:
    """Accuracy and confusion matrix of predicting the highest-scoring class (``y_score`` is N x K).

    Raises DataError when there are no cases.
    """
    y = np.asarray(y_index, dtype=int)
    s = np.asarray(y_score, dtype=float)
    binary_inputs(np.zeros(len(y), dtype=int), s.max(axis=1) if s.size else np.array([]))
    pred = s.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(len(classes))))
    correct = int(np.sum(pred == y))
    return MulticlassSummary(
        correct / len(y),
        tuple(tuple(int(v) for v in r) for r in cm),
        tuple(classes),
        accuracy_ci=wilson_ci(correct, len(y)),
    )
