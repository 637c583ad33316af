"""How well a validation-chosen threshold transfers: bootstrap CIs for the threshold and its rates.

A threshold chosen on a small validation set is itself a random quantity: another draw of the same
number of patients would have given another threshold, and the test split another sensitivity. Each
bootstrap replicate therefore

1. resamples the validation cases (positives and negatives separately, with replacement, keeping their
   counts, as :func:`~medclass.metrics.bootstrap.bootstrap_auc` does) and re-chooses the threshold with
   the same rule (:data:`~medclass.metrics.operating.THRESHOLD_RULES`);
2. resamples the evaluated split's cases the same way and measures sensitivity and specificity at that
   replicate's threshold.

The CIs are the ``alpha/2`` and ``1 - alpha/2`` percentiles of the replicates: the threshold's CI shows
how unstable the choice is; the sensitivity/specificity CIs cover both that instability and the
evaluated split's own sampling error (wider than a Wilson interval at a fixed threshold). The same
``seed`` gives identical intervals. A validation set with fewer than :data:`MIN_VALIDATION_CASES`
positives or negatives warns (:class:`~medclass.metrics.MetricWarning`): its threshold rarely transfers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medclass.metrics._checks import binary_inputs, warn
from medclass.metrics.bootstrap import percentile_ci
from medclass.metrics.operating import THRESHOLD_RULES, ThresholdRule, parse_threshold_rule

MIN_VALIDATION_CASES = 20  # fewer positives or negatives than this in validation: the threshold is unstable


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap CI (NaN when undefined)."""

    estimate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ThresholdCI:
    """The validation-chosen threshold and the rates it gives on the evaluated split, with bootstrap CIs.

    ``n_valid``: replicates whose rates were defined; ``small_validation``: validation had fewer than
    ``min_cases`` positives or negatives (the warning was emitted).
    """

    threshold: Interval
    sensitivity: Interval
    specificity: Interval
    n_bootstrap: int
    n_valid: int
    seed: int
    alpha: float
    val_n_pos: int
    val_n_neg: int
    min_cases: int = MIN_VALIDATION_CASES

    @property
    def small_validation(self) -> bool:
        return min(self.val_n_pos, self.val_n_neg) < self.min_cases


def small_validation_message(
    n_pos: int, n_neg: int, *, what: str = "", min_cases: int = MIN_VALIDATION_CASES
) -> str:
    """The one-line warning for a validation set with fewer than ``min_cases`` of a class ("" if none)."""
    few = [f"{n} {name}" for n, name in ((n_pos, "positive"), (n_neg, "negative")) if n < min_cases]
    if not few:
        return ""
    prefix = f"{what}: " if what else ""
    return (
        f"{prefix}the threshold was chosen on a validation set with only {' and '.join(few)} case(s) "
        f"(fewer than {min_cases}): it may not transfer; read its bootstrap CI, or enlarge validation"
    )


def _rate(hits: np.ndarray, total: int) -> float:
    return float(hits.mean()) if total else math.nan


def threshold_ci(
    val_true: object,
    val_score: object,
    test_true: object,
    test_score: object,
    rule: ThresholdRule | str,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    min_cases: int = MIN_VALIDATION_CASES,
    what: str = "",
) -> ThresholdCI:
    """Bootstrap CIs of the threshold ``rule`` picks on validation and of test sensitivity/specificity at it.

    Estimates are the threshold chosen on the full validation set and the rates it gives on the full
    evaluated split. Validation with one class only: NaN everywhere (the threshold itself warns). Warns
    when validation has fewer than ``min_cases`` positives or negatives. Raises DataError on unusable
    input and ConfigError on an unknown rule.
    """
    rule = parse_threshold_rule(rule) if isinstance(rule, str) else rule
    yv, sv = binary_inputs(val_true, val_score, what=f"{what} (validation)" if what else "validation")
    yt, st = binary_inputs(test_true, test_score, what=what)
    val_pos, val_neg = sv[yv == 1], sv[yv == 0]
    test_pos, test_neg = st[yt == 1], st[yt == 0]
    n_pos, n_neg = len(val_pos), len(val_neg)
    message = small_validation_message(n_pos, n_neg, what=what, min_cases=min_cases)
    if message and n_pos and n_neg:  # one class only: the threshold's own warning says it
        warn(message)
    nan = Interval(math.nan, math.nan, math.nan)
    if n_pos == 0 or n_neg == 0:
        return ThresholdCI(nan, nan, nan, n_bootstrap, 0, seed, alpha, n_pos, n_neg, min_cases)
    choose = THRESHOLD_RULES[rule.kind]
    label = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    thr = choose(yv, sv, rule.target)
    sens, spec = _rate(test_pos >= thr, len(test_pos)), _rate(test_neg < thr, len(test_neg))
    rng = np.random.default_rng(seed)
    reps = np.full((n_bootstrap, 3), np.nan)
    m, n = len(test_pos), len(test_neg)
    for b in range(n_bootstrap):
        scores = np.concatenate(
            [val_pos[rng.integers(0, n_pos, n_pos)], val_neg[rng.integers(0, n_neg, n_neg)]]
        )
        t = choose(label, scores, rule.target)
        p = test_pos[rng.integers(0, m, m)] if m else test_pos
        q = test_neg[rng.integers(0, n, n)] if n else test_neg
        reps[b] = (t, _rate(p >= t, m), _rate(q < t, n))
    t_iv, sens_iv, spec_iv = (
        Interval(est, *percentile_ci(reps[:, j], alpha)) for j, est in enumerate((thr, sens, spec))
    )
    n_valid = int(np.isfinite(reps).all(axis=1).sum())
    return ThresholdCI(t_iv, sens_iv, spec_iv, n_bootstrap, n_valid, seed, alpha, n_pos, n_neg, min_cases)
