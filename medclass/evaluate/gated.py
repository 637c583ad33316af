"""The input gate's part of an evaluation, on predictions rows that carry ``in_scope``/``gate_reason``.

:func:`gate_summary` counts the out-of-scope rows of each split (and the reasons on test) and, for
``refuse``, keeps the in-scope rows only; :func:`in_scope_metrics` measures the in-scope rows alone (the
same :func:`~medclass.evaluate.evaluate_predictions`), for ``metrics.json``'s ``in_scope`` block.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from medclass.errors import MedclassError
from medclass.evaluate.core import evaluate_predictions
from medclass.evaluate.serialize import to_dict
from medclass.names import GATE_REASON_COLUMN, IN_SCOPE_COLUMN

__all__ = ["gate_summary", "in_scope_metrics", "out_of_scope"]

Rows = Sequence[Mapping[str, Any]]


def out_of_scope(row: Mapping[str, Any]) -> bool:
    """Whether the input gate put a predictions row out of scope (``in_scope`` false; its CSV text too)."""
    return str(row.get(IN_SCOPE_COLUMN, "")).lower() == "false"


def _in_scope(rows: Rows) -> list[Mapping[str, Any]]:
    return [r for r in rows if not out_of_scope(r)]


def gate_summary(
    val: Rows, test: Rows, mode: str
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]], dict[str, Any] | None]:
    """``(val, test, summary)``: ``summary`` = ``{mode, out_of_scope{validation, test}, images{...},
    test_reasons{reason: count}}``, None when the rows were not gated (``off``, or no ``in_scope``
    column); under ``refuse`` the returned rows are the in-scope ones only."""
    if mode == "off" or not any(IN_SCOPE_COLUMN in r for r in [*val, *test]):
        return list(val), list(test), None
    out_val, out_test = [r for r in val if out_of_scope(r)], [r for r in test if out_of_scope(r)]
    reasons = Counter(
        part.split(" (")[0]
        for r in out_test
        for part in str(r.get(GATE_REASON_COLUMN, "")).split("; ")
        if part
    )
    summary = {
        "mode": mode,
        "out_of_scope": {"validation": len(out_val), "test": len(out_test)},
        "images": {"validation": len(val), "test": len(test)},
        "test_reasons": dict(reasons.most_common(10)),
    }
    if mode == "refuse":
        return _in_scope(val), _in_scope(test), summary
    return list(val), list(test), summary


def in_scope_metrics(val: Rows, test: Rows, config: Any) -> dict[str, Any]:
    """The ``metrics.json`` content of the in-scope rows alone (``{"note": why not}`` when they cannot be
    measured, e.g. one class only)."""
    try:
        return to_dict(evaluate_predictions(_in_scope(val), _in_scope(test), config=config))
    except MedclassError as exc:
        return {"note": f"not measurable on the in-scope images alone: {exc}"}
