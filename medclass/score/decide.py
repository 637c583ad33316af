"""From probabilities to predicted labels, at the checkpoint's operating point when it has one.

Rules (the ``decision`` column of the scores names the one used):

- ``operating_point``: ``meta["operating_point"]`` holds a threshold per class (``{class: t}``, or
  ``{"thresholds": {...}}``, or ``{class: {"threshold": t}}``). Multilabel: every class with
  ``p >= t`` (classes without a threshold use 0.5). Multiclass: among classes with a threshold that
  ``p >= t``, the most probable; if none passes, the most probable class without a threshold (for a
  binary model with a threshold on the positive class only: the negative class), else the argmax.
- ``argmax`` (multiclass without an operating point) and ``threshold:0.5`` (multilabel without one).

A threshold is only used on the probability scale it was chosen on: evaluate records ``scale``
(``calibrated`` or ``raw``; none recorded: ``raw``) with each, and a threshold on the other scale than the
one scored (``--no-calibration`` on a calibrated checkpoint) is left out with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medclass.calibrate import scale as probability_scale
from medclass.errors import CheckpointError, look_up
from medclass.names import TASKS

log = logging.getLogger(__name__)

DEFAULT_MULTILABEL_THRESHOLD = 0.5
LABEL_SEPARATOR = ";"


def _thresholds(op: Any, classes: Sequence[str], scale: str = "raw") -> dict[str, float]:
    if isinstance(op, Mapping) and isinstance(op.get("thresholds"), Mapping):
        op = op["thresholds"]
    if not isinstance(op, Mapping):
        raise CheckpointError(f"operating_point must map class names to thresholds, got {type(op).__name__}")
    out: dict[str, float] = {}
    for name, value in op.items():
        if name not in classes:
            continue  # e.g. "rule", "chosen_on" next to the thresholds
        if isinstance(value, Mapping):
            if value.get("scale", "raw") != scale:
                log.warning(
                    "operating point of %s was chosen on %s probabilities, these are %s: not used "
                    "(run evaluate with the same calibration setting)",
                    name, value.get("scale", "raw"), scale,
                )  # fmt: skip
                continue
            value = value.get("threshold")
        elif scale != "raw":
            continue  # a bare threshold: from before calibration, so on the raw scale
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[str(name)] = float(value)
    return out


@dataclass(frozen=True)
class DecisionRule:
    """Turns an N×C probability array into predicted labels; ``name`` says which rule."""

    classes: tuple[str, ...]
    task: str
    thresholds: dict[str, float]
    name: str
    scale: str = "raw"  # the probabilities' scale: "calibrated" or "raw" (medclass.calibrate.scale)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], *, calibrated: bool = True) -> DecisionRule:
        """The rule for a checkpoint's ``meta``, scoring calibrated probabilities when the checkpoint has a
        calibration and ``calibrated`` (``--no-calibration``: False). Raises :class:`CheckpointError` for a
        malformed operating point and :class:`ConfigError` for an unknown task.
        """
        classes = tuple(str(c) for c in meta.get("classes") or ())
        task = str(meta.get("task", "multiclass"))
        look_up(TASKS, task, "task")
        op = meta.get("operating_point")
        scale = probability_scale(meta, enabled=calibrated)
        thresholds = _thresholds(op, classes, scale) if op else {}
        if thresholds:
            name = "operating_point"
        else:
            name = "argmax" if task == "multiclass" else f"threshold:{DEFAULT_MULTILABEL_THRESHOLD:g}"
        return cls(classes, task, thresholds, name, scale)

    def describe(self, positive: str | None = None) -> str:
        """One line for people: the rule, its thresholds and the positive class of a two-class model."""
        head = f"positive class {positive}; " if positive else ""
        if self.name == "operating_point":
            cuts = ", ".join(f"{c} ≥ {t:.3f}" for c, t in self.thresholds.items())
            return f"{head}decision: the checkpoint's operating point ({cuts})"
        if self.name == "argmax":
            return (
                f"{head}decision: argmax (the checkpoint has no operating point; run evaluate to store one)"
            )
        return (
            f"{head}decision: {self.name} (the checkpoint has no operating point; run evaluate to store one)"
        )

    def predict(self, probs: np.ndarray) -> list[str]:
        """The predicted label of each row (multilabel: the positive classes joined by ``;``, maybe empty)."""
        probs = np.atleast_2d(np.asarray(probs, dtype=float))  # N×C
        t = np.array([self.thresholds.get(c, np.nan) for c in self.classes], dtype=float)  # C, NaN where none
        if self.task == "multilabel":
            cut = np.where(np.isnan(t), DEFAULT_MULTILABEL_THRESHOLD, t)
            return [
                LABEL_SEPARATOR.join(c for c, on in zip(self.classes, row >= cut, strict=True) if on)
                for row in probs
            ]
        out = []
        has = ~np.isnan(t)
        for row in probs:
            passing = has & (row >= np.where(has, t, np.inf))
            if passing.any():
                k = int(np.argmax(np.where(passing, row, -np.inf)))
            elif has.any() and not has.all():
                k = int(np.argmax(np.where(has, -np.inf, row)))
            else:
                k = int(np.argmax(row))
            out.append(self.classes[k])
        return out
