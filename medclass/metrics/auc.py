"""ROC AUC per class with two 95% CIs (stratified bootstrap and DeLong), and macro/micro averages.

Point values are scikit-learn's ``roc_auc_score``. For a multiclass single-label task each class is
scored one-vs-rest; for a multi-label task each finding on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from medclass.metrics._checks import binary_inputs, both_classes
from medclass.metrics.bootstrap import BootstrapCI, RocBand, bootstrap_auc, bootstrap_average_auc
from medclass.metrics.delong import delong_auc


def roc_auc(y_true: object, y_score: object, *, what: str = "") -> float:
    """scikit-learn's ROC AUC; NaN with a MetricWarning when only one class is present.

    Raises DataError on empty input, NaN scores or labels other than 0/1.
    """
    y, s = binary_inputs(y_true, y_score, what=what)
    if not both_classes(y, what, "AUC"):
        return math.nan
    return float(roc_auc_score(y, s))


@dataclass(frozen=True)
class AUCResult:
    """AUC of one class with its bootstrap and DeLong CIs, counts and (optionally) an ROC band."""

    auc: float
    ci_low: float  # stratified bootstrap, percentile
    ci_high: float
    delong_ci_low: float
    delong_ci_high: float
    delong_variance: float
    n: int
    n_pos: int
    n_neg: int
    prevalence: float
    n_bootstrap: int
    seed: int
    alpha: float = 0.05
    band: RocBand | None = None


def auc_with_ci(
    y_true: object,
    y_score: object,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    fpr_grid: np.ndarray | None = None,
    what: str = "",
) -> AUCResult:
    """AUC with a stratified-bootstrap CI and a DeLong CI (NaNs and one warning if one class only).

    Raises DataError on empty input, NaN scores or labels other than 0/1.
    """
    y, s = binary_inputs(y_true, y_score, what=what)
    n_pos = int(y.sum())
    if not both_classes(y, what, "AUC"):
        nan = math.nan
        return AUCResult(nan, nan, nan, nan, nan, nan, len(y), n_pos, len(y) - n_pos, n_pos / len(y),
                         n_bootstrap, seed, alpha)  # fmt: skip
    boot = bootstrap_auc(y, s, n_bootstrap=n_bootstrap, seed=seed, alpha=alpha, fpr_grid=fpr_grid, what=what)
    dl = delong_auc(y, s, alpha=alpha, what=what)
    return AUCResult(
        auc=boot.estimate,
        ci_low=boot.ci_low,
        ci_high=boot.ci_high,
        delong_ci_low=dl.ci_low,
        delong_ci_high=dl.ci_high,
        delong_variance=dl.variance,
        n=len(y),
        n_pos=n_pos,
        n_neg=len(y) - n_pos,
        prevalence=n_pos / len(y),
        n_bootstrap=n_bootstrap,
        seed=seed,
        alpha=alpha,
        band=boot.band,
    )


@dataclass(frozen=True)
class AUCSummary:
    """Per-class AUCs (in class order) and their macro/micro averages with bootstrap CIs."""

    per_class: dict[str, AUCResult]
    macro: BootstrapCI
    micro: BootstrapCI


def auc_summary(
    y_true: np.ndarray,
    y_score: np.ndarray,
    classes: Sequence[str],
    *,
    strata: np.ndarray | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    fpr_grid: np.ndarray | None = None,
) -> AUCSummary:
    """Per-class AUCs with CIs plus macro and micro averages for N x K indicators and scores.

    ``strata`` (N class indices for a single-label task) stratifies the averages' case resampling.
    Raises DataError on unusable input.
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    per = {
        c: auc_with_ci(
            y[:, k], s[:, k], n_bootstrap=n_bootstrap, seed=seed, alpha=alpha, fpr_grid=fpr_grid, what=c
        )
        for k, c in enumerate(classes)
    }
    avg = bootstrap_average_auc(y, s, strata=strata, n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)
    return AUCSummary(per, avg.macro, avg.micro)
