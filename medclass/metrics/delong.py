"""DeLong's variance of the ROC AUC and the paired DeLong test, by the fast midrank algorithm.

Sun X. & Xu W. (2014), "Fast implementation of DeLong's algorithm for comparing the areas under
correlated receiver operating characteristic curves", IEEE Signal Processing Letters 21(11):1389-1393.

For ``m`` positive scores ``X`` and ``n`` negative scores ``Y`` of each classifier ``r``, with midranks
``Tx`` (of ``X`` among ``X``), ``Ty`` (of ``Y`` among ``Y``) and ``Tz`` (of each score among all ``m + n``):

- ``AUC_r = (sum_i Tz_i - m(m+1)/2) / (m n)`` over the positives ``i``;
- structural components ``V10_i = (Tz_i - Tx_i) / n`` (positives) and
  ``V01_j = 1 - (Tz_{m+j} - Ty_j) / m`` (negatives);
- ``S = cov(V10) / m + cov(V01) / n`` (sample covariances, ``n - 1`` denominators), a ``k x k`` matrix
  for ``k`` classifiers scored on the same cases.

The variance of one AUC is ``S[r, r]``; the paired difference ``AUC_a - AUC_b`` has variance
``S[a,a] + S[b,b] - 2 S[a,b]`` and ``z = diff / sqrt(var)`` is compared with a standard normal
(two-sided). Confidence intervals are normal, ``auc +/- z_{1-alpha/2} * sqrt(var)``, clipped to [0, 1]
for a single AUC (as pROC's ``ci.auc(method="delong")``) and to [-1, 1] for a difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from medclass.metrics._checks import binary_inputs, both_classes, warn


@dataclass(frozen=True)
class DeLongResult:
    """One AUC with its DeLong variance and normal-approximation CI (NaN when undefined)."""

    auc: float
    variance: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int
    alpha: float = 0.05


@dataclass(frozen=True)
class DeLongComparison:
    """Paired DeLong comparison of two scores on the same cases: ``diff = auc_a - auc_b``."""

    auc_a: float
    auc_b: float
    diff: float
    diff_ci_low: float
    diff_ci_high: float
    z: float
    p_value: float
    variance: float
    n_pos: int
    n_neg: int
    alpha: float = 0.05


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` where tied values share the mean of the ranks they occupy."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.empty(len(xs), dtype=bool)
    new_group[:1] = True
    new_group[1:] = xs[1:] != xs[:-1]
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], len(xs))
    mean_rank = (starts + 1 + ends) / 2.0  # ranks start+1 .. end
    ranks = np.empty(len(xs), dtype=float)
    ranks[order] = mean_rank[np.cumsum(new_group) - 1]
    return ranks


def _structural_components(
    scores: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (k), V10 (k x m) and V01 (k x n) of ``k`` score rows (k x N) for boolean ``positive`` (N)."""
    m = int(positive.sum())
    n = len(positive) - m
    k = scores.shape[0]
    aucs = np.empty(k)
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    for r in range(k):
        x = scores[r, positive]
        y = scores[r, ~positive]
        tx, ty = midranks(x), midranks(y)
        tz = midranks(np.concatenate([x, y]))
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    return aucs, v10, v01


def delong_covariance(y_true: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k) and their DeLong covariance matrix (k x k) for ``scores`` of shape k x N (or N).

    Needs at least two positives and two negatives for a variance (otherwise the covariance is NaN).
    Raises DataError on unusable input (see :func:`medclass.metrics.auc.roc_auc`).
    """
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    y = None
    for row in s:
        y, _ = binary_inputs(y_true, row)
    assert y is not None
    positive = y.astype(bool)
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        return np.full(len(s), np.nan), np.full((len(s), len(s)), np.nan)
    aucs, v10, v01 = _structural_components(s, positive)
    if m < 2 or n < 2:
        return aucs, np.full((len(s), len(s)), np.nan)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_auc(y_true: object, y_score: object, *, alpha: float = 0.05, what: str = "") -> DeLongResult:
    """AUC, DeLong variance and ``1 - alpha`` CI of one score. One class only: warns, NaN values.

    Raises DataError on empty input, NaN scores or labels other than 0/1.
    """
    y, s = binary_inputs(y_true, y_score, what=what)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if not both_classes(y, what, "DeLong AUC"):
        return DeLongResult(math.nan, math.nan, math.nan, math.nan, n_pos, n_neg, alpha)
    aucs, cov = delong_covariance(y, s)
    auc, var = float(aucs[0]), float(cov[0, 0])
    if not math.isfinite(var):
        warn(f"{what + ': ' if what else ''}DeLong variance needs >= 2 positives and >= 2 negatives")
        return DeLongResult(auc, math.nan, math.nan, math.nan, n_pos, n_neg, alpha)
    half = float(norm.ppf(1 - alpha / 2)) * math.sqrt(max(var, 0.0))
    return DeLongResult(auc, var, max(0.0, auc - half), min(1.0, auc + half), n_pos, n_neg, alpha)


def compare(
    y_true: object, score_a: object, score_b: object, *, alpha: float = 0.05, what: str = ""
) -> DeLongComparison:
    """Paired two-sided DeLong test of ``AUC(score_a) - AUC(score_b)`` on the same cases.

    Returns the AUCs, their difference with a ``1 - alpha`` normal CI, ``z`` and the p-value. Identical
    scores give ``z = 0``, ``p = 1``. One class only: warns, NaN values. Raises DataError on unusable
    input or when the two score vectors differ in length.
    """
    y, a = binary_inputs(y_true, score_a, what=what)
    _, b = binary_inputs(y_true, score_b, what=what)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    nan = math.nan
    if not both_classes(y, what, "DeLong comparison"):
        return DeLongComparison(nan, nan, nan, nan, nan, nan, nan, nan, n_pos, n_neg, alpha)
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if not math.isfinite(var):
        warn(f"{what + ': ' if what else ''}DeLong test needs >= 2 positives and >= 2 negatives")
        return DeLongComparison(
            float(aucs[0]), float(aucs[1]), diff, nan, nan, nan, nan, nan, n_pos, n_neg, alpha
        )
    var = max(var, 0.0)
    if var <= 1e-15 * max(1.0, abs(diff)):  # same ranking of every case by both scores
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else 0.0
    else:
        z = diff / math.sqrt(var)
        p = float(2 * norm.sf(abs(z)))
    half = float(norm.ppf(1 - alpha / 2)) * math.sqrt(var)
    return DeLongComparison(
        float(aucs[0]),
        float(aucs[1]),
        diff,
        max(-1.0, diff - half),
        min(1.0, diff + half),
        float(z),
        p,
        var,
        n_pos,
        n_neg,
        alpha,
    )


def delong_mean_auc(
    y_true: object, y_score: object, *, classes: Sequence[int] | None = None, alpha: float = 0.05
) -> DeLongResult:
    """Mean (macro) AUC over the columns of N x K indicators/scores with a DeLong-type CI.

    Each class's DeLong structural components give every case an influence on that class's AUC
    (``(V10_i - AUC) / sqrt(m (m-1))`` for its positives, ``(V01_j - AUC) / sqrt(n (n-1))`` for its
    negatives); the variance of the mean is the sum over cases of the squared mean influence. For one
    class this is exactly DeLong's variance. ``classes`` picks the columns (default: all with both
    outcomes). Raises DataError on unusable input.
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"y_true and y_score must both be N x K (got {y.shape} and {s.shape})")
    cols = [k for k in range(y.shape[1]) if 0 < binary_inputs(y[:, k], s[:, k])[0].sum() < len(y)]
    used = list(classes) if classes is not None else cols
    nan = math.nan
    if not used or any(k not in cols for k in used):
        warn("macro DeLong CI undefined: a class has one outcome only")
        return DeLongResult(nan, nan, nan, nan, 0, 0, alpha)
    influence = np.zeros(len(y))
    aucs = []
    for k in used:
        pos = y[:, k].astype(bool)
        m, n = int(pos.sum()), int((~pos).sum())
        if m < 2 or n < 2:
            warn("macro DeLong CI needs >= 2 positives and >= 2 negatives in every class")
            return DeLongResult(nan, nan, nan, nan, 0, 0, alpha)
        auc, v10, v01 = _structural_components(s[:, k][None, :], pos)
        aucs.append(float(auc[0]))
        influence[pos] += (v10[0] - auc[0]) / math.sqrt(m * (m - 1))
        influence[~pos] += (v01[0] - auc[0]) / math.sqrt(n * (n - 1))
    influence /= len(used)
    mean_auc = float(np.mean(aucs))
    var = float(np.sum(influence**2))
    half = float(norm.ppf(1 - alpha / 2)) * math.sqrt(var)
    n_pos = int(y[:, used].sum())  # case-class pairs
    n_neg = len(y) * len(used) - n_pos
    return DeLongResult(
        mean_auc, var, max(0.0, mean_auc - half), min(1.0, mean_auc + half), n_pos, n_neg, alpha
    )
