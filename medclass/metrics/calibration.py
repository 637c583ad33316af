"""Calibration: Brier score, expected calibration error with reliability-diagram data, temperature scaling.

Expected calibration error (equal-width bins): split [0, 1] into ``B`` bins ``[b/B, (b+1)/B)`` (the last
one closed); for the ``n_b`` cases whose predicted probability falls in bin ``b`` let ``conf_b`` be their
mean predicted probability and ``freq_b`` the fraction that are positive; then

    ECE = sum_b (n_b / N) * |freq_b - conf_b|        MCE = max_b |freq_b - conf_b| (non-empty bins)

For a single-label multiclass task the "top-label" ECE uses the highest probability of each case as
``conf`` and whether that class is the true one as the outcome.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logit, softmax
from sklearn.metrics import brier_score_loss

from medclass.errors import DataError
from medclass.metrics._checks import binary_inputs

_CLIP = 1e-7


def brier_score(y_true: object, y_prob: object, *, what: str = "") -> float:
    """Mean squared difference between the 0/1 outcome and the predicted probability (scikit-learn).

    Raises DataError on unusable input or probabilities outside [0, 1].
    """
    y, p = binary_inputs(y_true, y_prob, what=what)
    _check_probabilities(p, what)
    return float(brier_score_loss(y, p, pos_label=1))


def _check_probabilities(p: np.ndarray, what: str) -> None:
    if p.size and (p.min() < 0 or p.max() > 1):
        prefix = f"{what}: " if what else ""
        raise DataError(f"{prefix}probabilities must lie in [0, 1] (found {p.min():.4g}..{p.max():.4g})")


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram (``mean_predicted``/``observed`` are NaN when ``count`` is 0)."""

    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed: float


@dataclass(frozen=True)
class CalibrationResult:
    """ECE, MCE, Brier score and the bins they came from."""

    ece: float
    mce: float
    brier: float
    n: int
    bins: tuple[ReliabilityBin, ...]


def calibration(y_true: object, y_prob: object, *, n_bins: int = 10, what: str = "") -> CalibrationResult:
    """ECE/MCE over ``n_bins`` equal-width bins, reliability data and Brier score of a binary problem.

    Raises DataError on unusable input or probabilities outside [0, 1]; ValueError if ``n_bins < 1``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1 (got {n_bins})")
    y, p = binary_inputs(y_true, y_prob, what=what)
    _check_probabilities(p, what)
    index = np.minimum((p * n_bins).astype(int), n_bins - 1)
    bins = []
    ece = 0.0
    gaps = []
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        if count:
            conf, freq = float(p[inside].mean()), float(y[inside].mean())
            ece += count / len(y) * abs(freq - conf)
            gaps.append(abs(freq - conf))
        else:
            conf = freq = math.nan
        bins.append(ReliabilityBin(b / n_bins, (b + 1) / n_bins, count, conf, freq))
    return CalibrationResult(float(ece), float(max(gaps)), brier_score(y, p), len(y), tuple(bins))


def top_label_calibration(y_index: object, y_prob: object, *, n_bins: int = 10) -> CalibrationResult:
    """Top-label calibration of a single-label multiclass problem (``y_prob`` is N x K)."""
    p = np.asarray(y_prob, dtype=float)
    y = np.asarray(y_index, dtype=int)
    if p.ndim != 2 or len(p) != len(y):
        raise DataError(f"top-label calibration needs N x K probabilities for N labels (got {p.shape})")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(int)
    return calibration(correct, conf, n_bins=n_bins, what="top label")


class TemperatureScaling:
    """Divide logits by one temperature ``T`` fitted on validation data by minimising the NLL.

    ``task="multiclass"``: probabilities are ``softmax(logits / T)``; logits may be given as
    probabilities (``from_probabilities=True``, the default): ``log p`` is a valid logit vector.
    ``task="multilabel"`` (or binary sigmoid outputs): each column is ``sigmoid(logit / T)``.
    After :meth:`fit`, ``temperature_`` holds T (> 1 softens over-confident outputs).
    """

    def __init__(
        self,
        task: str = "multiclass",
        *,
        from_probabilities: bool = True,
        bounds: tuple[float, float] = (0.05, 20.0),
    ) -> None:
        if task not in ("multiclass", "multilabel"):
            raise ValueError(f"task must be 'multiclass' or 'multilabel' (got {task!r})")
        self.task = task
        self.from_probabilities = from_probabilities
        self.bounds = bounds

    def _logits(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if x.ndim == 1:
            x = x[:, None]
        if not np.all(np.isfinite(x)):
            raise DataError(f"{int((~np.isfinite(x)).any(axis=1).sum())} rows have NaN/inf scores")
        if not self.from_probabilities:
            return x
        p = np.clip(x, _CLIP, 1 - _CLIP)
        return np.log(p) if self.task == "multiclass" else logit(p)

    def _nll(self, z: np.ndarray, y: np.ndarray, t: float) -> float:
        if self.task == "multiclass":
            return float(-log_softmax(z / t, axis=1)[np.arange(len(y)), y].mean())
        q = np.clip(expit(z / t), 1e-12, 1 - 1e-12)
        return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())

    def fit(self, scores: object, y: object) -> TemperatureScaling:
        """Fit T on validation ``scores`` (N x K) and labels (class index N for multiclass, N x K 0/1
        for multilabel); returns self. Raises DataError on empty input or NaN scores."""
        z = self._logits(np.asarray(scores))
        yy = np.asarray(y, dtype=int)
        if len(z) == 0:
            raise DataError("temperature scaling needs validation cases (got none)")
        if self.task == "multilabel" and yy.ndim == 1:
            yy = yy[:, None]
        lo, hi = np.log(self.bounds[0]), np.log(self.bounds[1])
        res = minimize_scalar(
            lambda lt: self._nll(z, yy, float(np.exp(lt))), bounds=(lo, hi), method="bounded"
        )
        self.temperature_ = float(np.exp(res.x))
        self.nll_before_ = self._nll(z, yy, 1.0)
        self.nll_after_ = self._nll(z, yy, self.temperature_)
        return self

    def transform(self, scores: object) -> np.ndarray:
        """Calibrated probabilities (same shape as given). Raises AttributeError before :meth:`fit`."""
        arr = np.asarray(scores, dtype=float)
        z = self._logits(arr) / self.temperature_
        out = softmax(z, axis=1) if self.task == "multiclass" else expit(z)
        return out.reshape(arr.shape)
