"""Input checks shared by the metric functions.

User input that cannot be used at all (empty, NaN scores, lengths that differ, labels that are not 0/1)
raises :class:`~medclass.errors.DataError`; input that is usable but makes one number undefined (a single
class present) warns with :class:`MetricWarning` and the metric gives NaN.
"""

from __future__ import annotations

import warnings

import numpy as np

from medclass.errors import DataError


class MetricWarning(UserWarning):
    """A metric is undefined for this input (one class only, nothing predicted positive...)."""


def warn(message: str) -> None:
    """Emit a :class:`MetricWarning` pointing at the caller of the public metric."""
    warnings.warn(message, MetricWarning, stacklevel=3)


def binary_inputs(y_true: object, y_score: object, *, what: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Validate a binary problem; returns ``(y, s)`` as 1-D int and float arrays.

    Raises DataError when the inputs are empty, of different lengths, have NaN/inf scores or labels
    other than 0/1.
    """
    prefix = f"{what}: " if what else ""
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    if y.ndim != 1 or s.ndim != 1:
        raise DataError(f"{prefix}labels and scores must be 1-D (got shapes {y.shape} and {s.shape})")
    if len(y) != len(s):
        raise DataError(f"{prefix}{len(y)} labels but {len(s)} scores")
    if len(y) == 0:
        raise DataError(f"{prefix}no cases to evaluate (empty input)")
    bad = int(np.count_nonzero(~np.isfinite(s)))
    if bad:
        raise DataError(f"{prefix}{bad} of {len(s)} scores are NaN or infinite; fix the predictions first")
    if y.dtype == bool:
        y = y.astype(int)
    try:
        yf = y.astype(float)
    except (TypeError, ValueError):
        raise DataError(f"{prefix}labels must be 0/1 (got {sorted(set(y.tolist()))[:5]})") from None
    if not np.all((yf == 0) | (yf == 1)):
        raise DataError(f"{prefix}labels must be 0/1 (got {sorted(set(yf.tolist()))[:5]})")
    return yf.astype(int), s


def both_classes(y: np.ndarray, what: str, metric: str) -> bool:
    """True when ``y`` has positives and negatives; otherwise warns that ``metric`` is undefined."""
    n_pos = int(y.sum())
    if 0 < n_pos < len(y):
        return True
    only = "positive" if n_pos else "negative"
    prefix = f"{what}: " if what else ""
    warn(f"{prefix}{metric} is undefined: all {len(y)} cases are {only}; reporting NaN")
    return False
