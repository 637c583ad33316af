"""Pairing two predictions tables of the same images for a paired (DeLong) comparison of two models."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medclass.errors import DataError
from medclass.evaluate.table import PredictionTable, prediction_table
from medclass.manifest.meta import positive_class  # the rule evaluate uses too
from medclass.metrics import DeLongComparison, compare


def _ids(rows: Sequence[Mapping[str, Any]], name: str) -> list[str]:
    ids = [str(r.get("image_id") or "").strip() for r in rows]
    if any(not i for i in ids):
        raise DataError(f"{name}: {sum(not i for i in ids)} rows have no image_id")
    dup = [i for i, n in Counter(ids).items() if n > 1]
    if dup:
        raise DataError(f"{name}: {len(dup)} image ids occur more than once (first: {dup[0]!r})")
    return ids


def _listing(ids: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(i) for i in sorted(ids)[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def join_predictions(
    rows_a: Sequence[Mapping[str, Any]],
    rows_b: Sequence[Mapping[str, Any]],
    names: tuple[str, str] = ("A", "B"),
) -> tuple[PredictionTable, PredictionTable]:
    """Validate both tables and order B's rows like A's by ``image_id``.

    Raises DataError when either is empty or malformed, image ids are missing/duplicated, the two sets
    of ids differ (naming how many and the first few on each side), the classes or task differ, or the
    labels of some image disagree (naming how many and the first one).
    """
    na, nb = names
    if not rows_a or not rows_b:
        raise DataError(f"{na if not rows_a else nb}: no rows to compare")
    ids_a, ids_b = _ids(rows_a, na), _ids(rows_b, nb)
    only_a = set(ids_a) - set(ids_b)
    only_b = set(ids_b) - set(ids_a)
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} image ids only in {na} ({_listing(list(only_a))})")
        if only_b:
            parts.append(f"{len(only_b)} only in {nb} ({_listing(list(only_b))})")
        raise DataError("the two predictions do not cover the same images: " + "; ".join(parts))
    ta = prediction_table(rows_a, what=na)
    position = {i: k for k, i in enumerate(ids_b)}
    tb = prediction_table([rows_b[position[i]] for i in ids_a], what=nb)
    if ta.classes != tb.classes or ta.task != tb.task:
        raise DataError(
            f"{na} has {ta.task} classes {list(ta.classes)} but {nb} has {tb.task} classes {list(tb.classes)}"
        )
    differ = np.flatnonzero((ta.y != tb.y).any(axis=1))
    if differ.size:
        raise DataError(
            f"labels disagree for {differ.size} of {len(ta)} images (first: {ids_a[differ[0]]!r}); "
            "were both made from the same manifest?"
        )
    return ta, tb


def compare_tables(
    a: PredictionTable, b: PredictionTable, classes: Sequence[str] | None = None, *, alpha: float = 0.05
) -> dict[str, DeLongComparison]:
    """Paired DeLong comparison per class (one-vs-rest) of two joined tables (see :func:`join_predictions`).

    ``classes`` defaults to the positive class of a binary task (the class not named like a negative;
    :class:`ConfigError` when the names do not tell), otherwise every class. Raises DataError
    for a class that is not in the tables.
    """
    if classes is None:
        chosen = positive_class(a.classes, task=a.task)
        classes = a.classes if chosen is None else (chosen,)
    out = {}
    for c in classes:
        if c not in a.classes:
            raise DataError(f"no class {c!r}; classes: {', '.join(a.classes)}")
        k = a.classes.index(c)
        out[c] = compare(a.y[:, k], a.scores[:, k], b.scores[:, k], alpha=alpha, what=c)
    return out
