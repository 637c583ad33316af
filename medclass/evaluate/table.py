"""The predictions table: one row per image with its truth and one probability per class.

Columns (``predictions.csv``): ``image_id``, ``patient_id`` (pseudonymised), ``split``; the truth as
``label`` (single-label class name) or ``finding:<name>`` (multi-label 0/1); ``prob:<class>`` for every
class (or finding); any other manifest columns (sex, view, site...) are kept for subgroup analysis.
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medclass.errors import DataError, UnreadableFileError, look_up
from medclass.fileio import write_csv
from medclass.names import FINDING_PREFIX, PROB_PREFIX, TASKS

PROB, FINDING = PROB_PREFIX, FINDING_PREFIX


@dataclass(frozen=True)
class PredictionTable:
    """Validated predictions: ``y`` (N x K 0/1), ``scores`` (N x K) in ``classes`` order, and the rows."""

    rows: tuple[Mapping[str, Any], ...]
    classes: tuple[str, ...]
    task: str
    y: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def y_index(self) -> np.ndarray:
        """Class index per row (single-label tasks)."""
        return self.y.argmax(axis=1)

    def column(self, name: str) -> list[str]:
        """The values of one column as strings (``""`` where missing)."""
        return [_text(r.get(name)) for r in self.rows]

    def subset(self, mask: np.ndarray) -> PredictionTable:
        """The rows where ``mask`` is true (same classes and task)."""
        idx = np.flatnonzero(mask)
        return PredictionTable(
            tuple(self.rows[i] for i in idx), self.classes, self.task, self.y[idx], self.scores[idx]
        )

    def with_scores(self, scores: np.ndarray) -> PredictionTable:
        """The same rows with other scores (e.g. after temperature scaling)."""
        return PredictionTable(self.rows, self.classes, self.task, self.y, np.asarray(scores, dtype=float))


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def infer_classes(fieldnames: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """``(classes, task)`` from the column names: ``prob:<class>`` columns, ``finding:`` -> multilabel.

    Raises DataError when there are no ``prob:`` columns or neither ``label`` nor ``finding:`` columns.
    """
    classes = tuple(f[len(PROB) :] for f in fieldnames if f.startswith(PROB))
    if not classes:
        raise DataError("no prob:<class> columns: not a medclass predictions table")
    if any(f.startswith(FINDING) for f in fieldnames):
        return classes, "multilabel"
    if "label" in fieldnames:
        return classes, "multiclass"
    raise DataError("no 'label' or 'finding:<name>' columns: the table has no ground truth to evaluate")


def prediction_table(
    rows: Sequence[Mapping[str, Any]],
    classes: Sequence[str] | None = None,
    task: str | None = None,
    *,
    what: str = "predictions",
) -> PredictionTable:
    """Validate rows into a :class:`PredictionTable`; classes and task are inferred when not given.

    Raises DataError (naming ``what``) when there are no rows, a ``prob:`` column is missing, labels are
    unknown or missing, finding values are not 0/1, or probabilities are missing/NaN (with the count).
    """
    if not rows:
        raise DataError(f"{what}: no rows (empty split?)")
    if classes is None or task is None:
        inferred, inferred_task = infer_classes(list(rows[0].keys()))
        classes = classes or inferred
        task = task or inferred_task
    look_up(TASKS, task, "task", error=DataError, path=what)
    classes = tuple(classes)
    missing = [f"{PROB}{c}" for c in classes if f"{PROB}{c}" not in rows[0]]
    if missing:
        raise DataError(f"{what}: missing column(s) {', '.join(missing)}")
    n, k = len(rows), len(classes)
    scores = np.full((n, k), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(classes):
            with contextlib.suppress(ValueError):
                scores[i, j] = float(_text(r.get(f"{PROB}{c}")) or "nan")
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        first = _text(rows[int(np.argmax(bad))].get("image_id")) or f"row {int(np.argmax(bad)) + 1}"
        raise DataError(
            f"{what}: {int(bad.sum())} of {n} rows have missing, non-numeric or NaN probabilities (first: {first})"
        )
    y = np.zeros((n, k), dtype=int)
    if task == "multiclass":
        index = {c: j for j, c in enumerate(classes)}
        labels = [_text(r.get("label")) for r in rows]
        unknown = sorted({lab for lab in labels if lab not in index})
        if unknown:
            count = sum(lab not in index for lab in labels)
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise DataError(
                f"{what}: {count} rows have a label that is not a class ({shown}); classes: {', '.join(classes)}"
            )
        y[np.arange(n), [index[lab] for lab in labels]] = 1
    else:
        for j, c in enumerate(classes):
            col = f"{FINDING}{c}"
            values = [_text(r.get(col)) for r in rows]
            wrong = [v for v in values if v not in ("0", "1", "0.0", "1.0")]
            if wrong:
                raise DataError(
                    f"{what}: column {col}: {len(wrong)} values are not 0/1 (first: {wrong[0]!r})"
                )
            y[:, j] = [int(float(v)) for v in values]
    return PredictionTable(tuple(rows), classes, task, y, scores)


def read_predictions(path: str | Path) -> list[dict[str, str]]:
    """Rows of a predictions CSV. Raises UnreadableFileError if missing/unreadable, DataError if empty."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise UnreadableFileError(
            f"cannot read predictions: {getattr(exc, 'strerror', None) or exc}", path
        ) from None
    if not rows:
        raise DataError("no rows in the predictions file", path)
    if "image_id" not in rows[0]:
        raise DataError("no image_id column: not a medclass predictions table", path)
    return rows


def predictions_fieldnames(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Column order: ids, split, truth, probabilities, then every other column in first-seen order."""
    seen: dict[str, None] = {}
    for r in rows:
        for key in r:
            seen.setdefault(key, None)
    keys = list(seen)
    head = [c for c in ("image_id", "patient_id", "study_id", "split") if c in seen]
    truth = [c for c in keys if c == "label" or c.startswith(FINDING)]
    probs = [c for c in keys if c.startswith(PROB)]
    rest = [c for c in keys if c not in head and c not in truth and c not in probs]
    return head + truth + probs + rest


def write_predictions(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows as ``predictions.csv`` (atomic, formula-safe cells); returns the path."""
    write_csv(path, [dict(r) for r in rows], predictions_fieldnames(rows))
    return Path(path)


def split_rows(rows: Sequence[Mapping[str, Any]], split: str) -> list[Mapping[str, Any]]:
    """The rows whose ``split`` column equals ``split``."""
    return [r for r in rows if _text(r.get("split")) == split]
