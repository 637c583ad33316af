"""Patient- (or study-) level aggregation of image-level predictions.

Scores of one group's images are combined by a named rule (``AGGREGATORS``: ``mean`` or ``max`` of the
probabilities); the group's label for each class is the maximum over its images (a patient is positive
for a finding when any of their images is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from medclass.errors import DataError, look_up


def _mean(values: np.ndarray, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    sums = np.zeros((n_groups, values.shape[1]))
    np.add.at(sums, inverse, values)
    return sums / np.bincount(inverse, minlength=n_groups)[:, None]


def _max(values: np.ndarray, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.full((n_groups, values.shape[1]), -np.inf)
    np.maximum.at(out, inverse, values)
    return out


AGGREGATORS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {"mean": _mean, "max": _max}


@dataclass(frozen=True)
class Aggregated:
    """One row per group (sorted by id): labels N x K (max), scores N x K (the rule), image counts."""

    group_ids: tuple[str, ...]
    y: np.ndarray
    scores: np.ndarray
    n_images: np.ndarray
    method: str


def aggregate(group_ids: Sequence[str], y_true: object, y_score: object, method: str = "mean") -> Aggregated:
    """Combine image rows into group rows (``y_true``/``y_score`` are N x K or N).

    Raises ConfigError for an unknown method and DataError when ids are missing or lengths differ.
    """
    look_up(AGGREGATORS, method, "aggregation")
    ids = np.asarray([str(g) for g in group_ids])
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    y2, s2 = (y[:, None], s[:, None]) if y.ndim == 1 else (y, s)
    if not (len(ids) == len(y2) == len(s2)):
        raise DataError(f"{len(ids)} group ids for {len(y2)} labels and {len(s2)} scores")
    if len(ids) == 0:
        raise DataError("no rows to aggregate")
    missing = int(np.sum(np.char.strip(ids) == ""))
    if missing:
        raise DataError(f"{missing} of {len(ids)} rows have no patient/study id; cannot aggregate by patient")
    unique, inverse = np.unique(ids, return_inverse=True)
    yy = _max(y2.astype(float), inverse, len(unique)).astype(int)
    ss = AGGREGATORS[method](s2, inverse, len(unique))
    if y.ndim == 1:
        yy, ss = yy[:, 0], ss[:, 0]
    return Aggregated(tuple(unique.tolist()), yy, ss, np.bincount(inverse), method)
