"""Bootstrap confidence intervals for AUCs and ROC curves (seeded, percentile method).

- One binary AUC: *stratified* bootstrap, positives and negatives resampled separately with replacement
  (each replicate keeps the observed counts, so every replicate has an AUC).
- Macro/micro averages over classes: cases resampled with replacement (within each true class for a
  single-label task); replicates where a class defined on the full data has lost all its positives or
  negatives are dropped and counted (``n_valid``).
- The CI is the ``alpha/2`` and ``1 - alpha/2`` percentiles of the replicates. The same ``seed`` gives
  identical intervals; each call makes its own ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from medclass.metrics._checks import binary_inputs, both_classes, warn
from medclass.metrics.delong import midranks
from medclass.metrics.operating import tpr_at_fpr

DEFAULT_FPR_GRID = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class RocBand:
    """Pointwise bootstrap band of the (conservative, step) ROC curve on a grid of FPR values."""

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    tpr_low: tuple[float, ...]
    tpr_high: tuple[float, ...]


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate and its percentile bootstrap CI (NaN bounds when undefined)."""

    estimate: float
    ci_low: float
    ci_high: float
    n_bootstrap: int
    n_valid: int
    seed: int
    alpha: float = 0.05
    band: RocBand | None = None


def fast_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC by midranks (equal to sklearn's ``roc_auc_score``); NaN with one class only."""
    pos = y.astype(bool)
    m = int(pos.sum())
    n = len(y) - m
    if m == 0 or n == 0:
        return math.nan
    ranks = midranks(s)
    return float((ranks[pos].sum() - m * (m + 1) / 2.0) / (m * n))


def percentile_ci(values: Sequence[float] | np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """``alpha/2`` and ``1 - alpha/2`` percentiles of the finite ``values``; NaNs when there are none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_auc(
    y_true: object,
    y_score: object,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    fpr_grid: np.ndarray | None = None,
    what: str = "",
) -> BootstrapCI:
    """AUC (scikit-learn) with a stratified-bootstrap percentile CI, and an ROC band if ``fpr_grid``.

    One class only: warns and returns NaNs. Raises DataError on empty input, NaN scores or non-0/1 labels.
    """
    y, s = binary_inputs(y_true, y_score, what=what)
    if not both_classes(y, what, "AUC"):
        return BootstrapCI(math.nan, math.nan, math.nan, n_bootstrap, 0, seed, alpha)
    estimate = float(roc_auc_score(y, s))
    pos_s, neg_s = s[y == 1], s[y == 0]
    m, n = len(pos_s), len(neg_s)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_bootstrap)
    grid = None if fpr_grid is None else np.asarray(fpr_grid, dtype=float)
    curves = None if grid is None else np.empty((n_bootstrap, len(grid)))
    label = np.r_[np.ones(m, dtype=bool), np.zeros(n, dtype=bool)]
    for b in range(n_bootstrap):
        p = pos_s[rng.integers(0, m, m)]
        q = neg_s[rng.integers(0, n, n)]
        ranks = midranks(np.concatenate([p, q]))
        reps[b] = (ranks[label].sum() - m * (m + 1) / 2.0) / (m * n)
        if curves is not None and grid is not None:
            curves[b] = tpr_at_fpr(p, q, grid)
    lo, hi = percentile_ci(reps, alpha)
    band = None
    if grid is not None and curves is not None:
        if n_bootstrap:
            low, high = np.percentile(curves, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
        else:
            low = high = np.full(len(grid), np.nan)
        band = RocBand(
            tuple(grid.tolist()),
            tuple(tpr_at_fpr(pos_s, neg_s, grid).tolist()),
            tuple(low.tolist()),
            tuple(high.tolist()),
        )
    return BootstrapCI(estimate, lo, hi, n_bootstrap, n_bootstrap, seed, alpha, band)


@dataclass(frozen=True)
class AverageBootstrap:
    """Macro and micro average AUCs over classes, each with a case-resampling bootstrap CI."""

    macro: BootstrapCI
    micro: BootstrapCI
    classes_used: tuple[int, ...]


def bootstrap_average_auc(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    strata: np.ndarray | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> AverageBootstrap:
    """Macro (mean of per-class AUCs) and micro (AUC of all case-class pairs pooled) averages with CIs.

    ``y_true`` and ``y_score`` are N x K (0/1 indicators and scores). Classes whose AUC is undefined on
    the full data (one class only) are left out of the macro average, with a warning. ``strata`` (N
    labels), when given, makes the case resampling stratified by it. Raises DataError on unusable input.
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"y_true and y_score must both be N x K (got {y.shape} and {s.shape})")
    for k in range(y.shape[1]):
        binary_inputs(y[:, k], s[:, k])
    used = tuple(k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y))
    if len(used) < y.shape[1]:
        warn(f"{y.shape[1] - len(used)} class(es) have one class only; left out of the macro average")
    flat_y, flat_s = y.ravel(), s.ravel()
    micro = float(roc_auc_score(flat_y, flat_s)) if 0 < flat_y.sum() < len(flat_y) else math.nan
    macro = float(np.mean([roc_auc_score(y[:, k], s[:, k]) for k in used])) if used else math.nan
    if not used:
        warn("no class has both positives and negatives: macro AUC undefined")
    rng = np.random.default_rng(seed)
    groups = (
        [np.arange(len(y))] if strata is None else [np.flatnonzero(strata == g) for g in np.unique(strata)]
    )
    macro_reps = np.full(n_bootstrap, np.nan)
    micro_reps = np.full(n_bootstrap, np.nan)
    for b in range(n_bootstrap):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        yb, sb = y[idx], s[idx]
        per = [fast_auc(yb[:, k], sb[:, k]) for k in used]
        if used and all(math.isfinite(a) for a in per):
            macro_reps[b] = np.mean(per)
        micro_reps[b] = fast_auc(yb.ravel(), sb.ravel())
    n_macro = int(np.isfinite(macro_reps).sum())
    n_micro = int(np.isfinite(micro_reps).sum())
    if used and n_macro < n_bootstrap:
        warn(f"{n_bootstrap - n_macro} of {n_bootstrap} bootstrap replicates lost a class; dropped")
    mlo, mhi = percentile_ci(macro_reps, alpha)
    ulo, uhi = percentile_ci(micro_reps, alpha)
    return AverageBootstrap(
        BootstrapCI(macro, mlo, mhi, n_bootstrap, n_macro, seed, alpha),
        BootstrapCI(micro, ulo, uhi, n_bootstrap, n_micro, seed, alpha),
        used,
    )
