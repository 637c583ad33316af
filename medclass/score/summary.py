"""The study-level summary of a scores file, aggregated the way ``medclass evaluate`` aggregates patients.

Scored rows (those without an error, and not refused by the input gate under ``--gate refuse``) are grouped by study (the Study Instance UID; a file without one,
such as a JPEG, is its own study) and their probabilities combined by
:func:`medclass.metrics.aggregate` (``mean`` by default, or ``max``); the study's label is decided from the
combined probabilities by the same :class:`~medclass.score.decide.DecisionRule` as the image rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medclass.fileio import write_csv
from medclass.names import REFUSED
from medclass.score.decide import DecisionRule
from medclass.score.rows import PROB_PREFIX


def summary_path(out: Path | str) -> Path:
    """``scores.csv`` → ``scores.studies.csv`` (any suffix is replaced)."""
    out = Path(out)
    return out.with_name(f"{out.stem if out.suffix else out.name}.studies.csv")


def summary_columns(classes: Sequence[str]) -> list[str]:
    return [
        "study",
        "patient",
        "n_images",
        *(f"{PROB_PREFIX}{c}" for c in classes),
        "predicted",
        "decision",
        "aggregation",
        "model_sha256",
    ]


def study_rows(
    rows: Sequence[dict[str, Any]], rule: DecisionRule, method: str = "mean"
) -> list[dict[str, Any]]:
    """One row per study (sorted by study id) from image rows; [] when no row was scored.

    Raises :class:`~medclass.errors.ConfigError` for an unknown ``method``.
    """
    from medclass.metrics import aggregate

    ok = [r for r in rows if not r.get("error") and r.get("decision") != REFUSED]
    if not ok:
        aggregate(["x"], [0], [0.0], method)  # still reject an unknown method
        return []
    ids = [str(r.get("study_uid") or r.get("path")) for r in ok]
    scores = np.array([[float(r[PROB_PREFIX + c]) for c in rule.classes] for r in ok])  # N×C
    agg = aggregate(ids, np.zeros_like(scores, dtype=int), scores, method)
    first: dict[str, dict[str, Any]] = {}
    for gid, r in zip(ids, ok, strict=True):
        first.setdefault(gid, r)
    labels = rule.predict(agg.scores)
    out = []
    for gid, s, n, label in zip(agg.group_ids, agg.scores, agg.n_images, labels, strict=True):
        row = {"study": gid, "patient": first[gid].get("patient", ""), "n_images": int(n)}
        row |= {f"{PROB_PREFIX}{c}": round(float(v), 7) for c, v in zip(rule.classes, s, strict=True)}
        row |= {
            "predicted": label,
            "decision": rule.name,
            "aggregation": agg.method,
            "model_sha256": first[gid].get("model_sha256", ""),
        }
        out.append(row)
    return out


def write_summary(
    out: Path | str, rows: Sequence[dict[str, Any]], rule: DecisionRule, method: str = "mean"
) -> tuple[Path, int]:
    """Write ``<out stem>.studies.csv`` atomically; returns its path and the number of studies."""
    path = summary_path(out)
    studies = study_rows(rows, rule, method)
    write_csv(path, studies, summary_columns(rule.classes))
    return path, len(studies)
