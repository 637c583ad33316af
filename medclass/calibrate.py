"""Calibration of a checkpoint's probabilities: fitted on validation logits, stored in the sidecar, applied
by the one predictor (:mod:`medclass.model.predictor`).

A :class:`Calibration` maps the main head's logits (N×C) to probabilities (N×C):

- ``temperature`` (every task): ``softmax(z / T)`` for a multiclass task; ``sigmoid(z / T)`` with **one
  shared** ``T`` for every output of a multilabel task (one parameter stays stable on the small validation
  sets this is meant for; per-output temperatures would each be fitted on a handful of positives);
- ``platt`` (binary tasks): ``sigmoid(a·s + b)`` on the positive class's log-odds ``s`` (``z₁ − z₀`` for two
  softmax classes, the logit of a one-output sigmoid), fitted with Platt's smoothed targets
  ``(N₊+1)/(N₊+2)`` and ``1/(N₋+2)``, so a perfectly separated validation set gives a finite slope;
- ``isotonic`` (binary tasks): a non-decreasing step function of ``s`` (scikit-learn's isotonic regression,
  linear between its breakpoints, clamped outside), its outputs kept in ``[ε, 1−ε]`` with
  ``ε = 0.5 / (n + 1)``: n validation cases cannot justify a probability of exactly 0 or 1;
- ``none``: the raw probabilities.

``method="auto"`` chooses by measurement: K-fold **cross-fitting** on the validation set (K ≤ 5, stratified,
at least 2 cases of every class per fold set): each candidate (``none``, ``temperature`` and, for a binary
task, ``platt`` and ``isotonic``) is fitted on K−1 folds and scored on the held-out fold; the candidate with
the lowest held-out NLL wins (ties go to the simpler one, in that order), then it is refitted on the whole
validation set. The record (:meth:`Calibration.to_dict`, the sidecar's ``calibration``) keeps the choice,
every candidate's held-out NLL/ECE/Brier, n, the folds, and the raw versus calibrated NLL/ECE/Brier on the
validation set (in-sample for the calibrated numbers: evaluate's test split gives the honest ones).
ECE is :func:`medclass.metrics.calibration.calibration`'s (10 equal-width bins; top-label for more than two
exclusive classes; the mean over outputs for multilabel). Brier is the mean over classes of the one-vs-rest
Brier score.

Light on import (numpy only); scipy and scikit-learn are imported when fitting.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medclass.errors import ConfigError, DataError, look_up
from medclass.names import CALIBRATION_METHODS, TASKS

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "Calibration", "check", "fit_calibration", "from_meta", "scale", "scores"]

FORMAT = 1  # the sidecar's calibration.format
MAX_FOLDS = 5
_CLIP = 1e-7  # probabilities are clipped to [_CLIP, 1 - _CLIP] inside the NLL
_PARAMS = {
    "none": (),
    "temperature": ("temperature",),
    "platt": ("slope", "intercept"),
    "isotonic": ("x", "y"),
}
_BINARY_ONLY = ("platt", "isotonic")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def is_binary(task: str, n_classes: int) -> bool:
    """Two exclusive classes, or a one-output sigmoid: the tasks Platt and isotonic apply to."""
    return (task == "multiclass" and n_classes == 2) or (task == "multilabel" and n_classes == 1)


def positive_log_odds(logits: np.ndarray, task: str, positive: int) -> np.ndarray:
    """The positive class's log-odds (N) of a binary task's logits (N×C)."""
    if task == "multilabel":
        return logits[:, 0]
    return logits[:, positive] - logits[:, 1 - positive]


def _binary_probabilities(p: np.ndarray, task: str, positive: int) -> np.ndarray:
    if task == "multilabel":
        return p[:, None]
    out = np.empty((len(p), 2))
    out[:, positive], out[:, 1 - positive] = p, 1.0 - p
    return out


@dataclass
class Calibration:
    """A fitted map from logits (N×C) to probabilities (N×C); see the module docstring.

    ``params``: ``{"temperature": T}``, ``{"slope": a, "intercept": b}``, ``{"x": [...], "y": [...]}`` or ``{}``;
    ``positive``: index of the positive class of a binary task; ``record``: how it was chosen and measured.
    """

    method: str
    task: str
    n_classes: int
    params: dict[str, Any] = field(default_factory=dict)
    positive: int = 1
    record: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N×C float64) of ``logits`` (N×C)."""
        z = np.asarray(logits, dtype=np.float64)
        if self.method in _BINARY_ONLY:
            s = positive_log_odds(z, self.task, self.positive)
            if self.method == "platt":
                p = _sigmoid(self.params["slope"] * s + self.params["intercept"])
            else:
                p = np.interp(s, self.params["x"], self.params["y"])
            return _binary_probabilities(p, self.task, self.positive)
        if self.method == "temperature":
            z = z / self.params["temperature"]
        return _softmax(z) if self.task == "multiclass" else _sigmoid(z)

    def describe(self) -> str:
        """One line: the method and its parameter (for logs and reports)."""
        if self.method == "temperature":
            return f"temperature scaling (T = {self.params['temperature']:.4g})"
        if self.method == "platt":
            return (
                f"Platt scaling (slope {self.params['slope']:.4g}, intercept {self.params['intercept']:.4g})"
            )
        if self.method == "isotonic":
            return f"isotonic regression ({len(self.params['x'])} breakpoints)"
        return "none (raw probabilities)"

    def to_dict(self) -> dict[str, Any]:
        """The sidecar's ``calibration`` object (JSON-ready)."""
        params = {k: (list(map(float, v)) if isinstance(v, list | np.ndarray) else float(v))
                  for k, v in self.params.items()}  # fmt: skip
        return {"format": FORMAT, "method": self.method, "task": self.task, "n_classes": self.n_classes,
                "positive_index": self.positive, "params": params, **self.record}  # fmt: skip

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Calibration:
        """The calibration a sidecar's ``calibration`` object describes. Raises :class:`DataError` when
        :func:`check` refuses it."""
        problem = check(doc)
        if problem:
            raise DataError(f"calibration: {problem}")
        known = {"format", "method", "task", "n_classes", "positive_index", "params"}
        return cls(str(doc["method"]), str(doc["task"]), int(doc["n_classes"]), dict(doc["params"]),
                   int(doc.get("positive_index", 1)), {k: v for k, v in doc.items() if k not in known})  # fmt: skip


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check(doc: Any, n_classes: int | None = None, task: str | None = None) -> str | None:
    """What is wrong with a sidecar's ``calibration`` object (None when it is usable): an unknown method or
    format, missing or out-of-range parameters, or a task/class count other than the checkpoint's."""
    if not isinstance(doc, Mapping):
        return f"{doc!r} is not an object"
    if doc.get("format") != FORMAT:
        return f"format {doc.get('format')!r} is not {FORMAT} (upgrade medclass or run medclass calibrate)"
    method, params = doc.get("method"), doc.get("params")
    if method not in _PARAMS or not isinstance(params, Mapping) or set(params) != set(_PARAMS[method]):
        return f"method {method!r} with params {params!r} is not one of {sorted(_PARAMS)} with its parameters"
    if doc.get("task") not in TASKS or not (isinstance(doc.get("n_classes"), int) and doc["n_classes"] >= 1):
        return f"task {doc.get('task')!r} / n_classes {doc.get('n_classes')!r} are not a task and a count"
    if (task is not None and doc["task"] != task) or (
        n_classes is not None and doc["n_classes"] != n_classes
    ):
        return f"fitted for {doc['task']} with {doc['n_classes']} classes, not this model's {task} with {n_classes}"
    if method in _BINARY_ONLY and not is_binary(doc["task"], doc["n_classes"]):
        return f"{method} applies to binary tasks only"
    if doc.get("positive_index", 1) not in range(doc["n_classes"] if doc["task"] == "multiclass" else 1):
        return f"positive_index {doc.get('positive_index')!r} is not a class index"
    if method == "temperature" and not (_number(params["temperature"]) and params["temperature"] > 0):
        return f"temperature {params['temperature']!r} is not a positive number"
    if method == "platt" and not (_number(params["slope"]) and _number(params["intercept"])):
        return f"Platt parameters {dict(params)!r} are not numbers"
    if method == "isotonic":
        x, y = params["x"], params["y"]
        ok = isinstance(x, list) and isinstance(y, list) and 1 <= len(x) == len(y)
        if not (ok and all(map(_number, x + y)) and all(0 <= v <= 1 for v in y)):
            return "isotonic breakpoints are not two equally long lists of numbers (y in [0, 1])"
        if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            return "isotonic breakpoints are not non-decreasing"
    return None


def from_meta(meta: Mapping[str, Any], *, enabled: bool = True) -> Calibration | None:
    """The calibration stored in a checkpoint's (or export's) sidecar, or None: when ``enabled`` is False
    (``--no-calibration``), when it holds none (a checkpoint from before calibration: one info line says so),
    or when its method is ``none``. Raises :class:`DataError` for a malformed one."""
    doc = meta.get("calibration")
    if not enabled:
        return None
    if doc is None:
        log.info("the checkpoint holds no calibration: raw probabilities (add one with: medclass calibrate)")
        return None
    cal = Calibration.from_dict(doc)
    return None if cal.method == "none" else cal


def scale(meta: Mapping[str, Any], *, enabled: bool = True) -> str:
    """``"calibrated"`` when probabilities of this checkpoint are calibrated (it holds a calibration other
    than ``none`` and ``enabled``), else ``"raw"``: the scale an operating point's thresholds must be on."""
    doc = meta.get("calibration")
    return "calibrated" if enabled and isinstance(doc, Mapping) and doc.get("method") != "none" else "raw"


# --- measuring ----------------------------------------------------------------------------------------
def _targets(y: np.ndarray, task: str, n_classes: int) -> np.ndarray:  # → N×C 0/1
    return np.eye(n_classes)[y] if task == "multiclass" else y.reshape(len(y), n_classes).astype(float)


def scores(y: np.ndarray, probs: np.ndarray, task: str, positive: int = 1) -> dict[str, float]:
    """``{"nll", "ece", "brier"}`` of probabilities (N×C) against labels (class index N, or N×C 0/1)."""
    from medclass.metrics.calibration import calibration, top_label_calibration

    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    t = _targets(np.asarray(y), task, p.shape[1])
    q = np.clip(p, _CLIP, 1 - _CLIP)
    if task == "multiclass":
        nll = float(-np.log(q[t.astype(bool)]).mean())
        if p.shape[1] == 2:
            ece = calibration(t[:, positive], p[:, positive]).ece
        else:
            ece = top_label_calibration(np.asarray(y), p).ece
    else:
        nll = float(-(t * np.log(q) + (1 - t) * np.log(1 - q)).mean())
        ece = float(np.mean([calibration(t[:, k], p[:, k]).ece for k in range(p.shape[1])]))
    brier = float(((p - t) ** 2).mean())
    return {"nll": nll, "ece": float(ece), "brier": brier}


# --- fitting ------------------------------------------------------------------------------------------
def _fit_temperature(z: np.ndarray, y: np.ndarray, task: str, positive: int) -> dict[str, Any]:
    from medclass.metrics.calibration import TemperatureScaling

    ts = TemperatureScaling(task, from_probabilities=False, bounds=(1e-2, 1e5)).fit(z, y)
    return {"temperature": ts.temperature_}


def _fit_platt(z: np.ndarray, y: np.ndarray, task: str, positive: int) -> dict[str, Any]:
    from scipy.optimize import minimize

    s, t = positive_log_odds(z, task, positive), _binary_targets(y, task, positive)
    n_pos, n_neg = t.sum(), len(t) - t.sum()
    target = np.where(t == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    scale = max(1.0, float(np.abs(s).max()))  # saturated logits (|s| ≈ 1e4) would stall the optimiser

    def nll(ab: np.ndarray) -> tuple[float, np.ndarray]:
        u = ab[0] * s / scale + ab[1]
        p = np.clip(_sigmoid(u), 1e-12, 1 - 1e-12)
        g = p - target
        value = -(target * np.log(p) + (1 - target) * np.log(1 - p)).mean()
        return float(value), np.array([(g * s / scale).mean(), g.mean()])

    res = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")  # start: slope 1/scale
    return {"slope": float(res.x[0] / scale), "intercept": float(res.x[1])}


def _fit_isotonic(z: np.ndarray, y: np.ndarray, task: str, positive: int) -> dict[str, Any]:
    from sklearn.isotonic import IsotonicRegression

    s, t = positive_log_odds(z, task, positive), _binary_targets(y, task, positive)
    eps = 0.5 / (len(s) + 1)
    iso = IsotonicRegression(y_min=eps, y_max=1 - eps, out_of_bounds="clip").fit(s, t)
    return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


def _binary_targets(y: np.ndarray, task: str, positive: int) -> np.ndarray:
    return (y.reshape(len(y), -1)[:, 0] if task == "multilabel" else (y == positive)).astype(float)


_FITTERS: dict[str, Callable[[np.ndarray, np.ndarray, str, int], dict[str, Any]]] = {
    "none": lambda z, y, task, positive: {},
    "temperature": _fit_temperature,
    "platt": _fit_platt,
    "isotonic": _fit_isotonic,
}


def _folds(y: np.ndarray, task: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds (by class, or by the first output of a multilabel task); [] when a class has fewer
    than 2 cases (nothing honest to cross-fit)."""
    from sklearn.model_selection import StratifiedKFold

    strata = y if task == "multiclass" else y.reshape(len(y), -1)[:, 0]
    counts = np.unique(strata, return_counts=True)[1]
    k = min(MAX_FOLDS, int(counts.min())) if len(counts) > 1 else 0
    if k < 2:
        return []
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=0).split(np.zeros(len(y)), strata))


def fit_calibration(
    logits: np.ndarray,
    y: np.ndarray,
    task: str,
    *,
    method: str = "auto",
    positive: int = 1,
    split: str = "val",
) -> Calibration:
    """Fit a calibration on validation ``logits`` (N×C) and labels ``y`` (class index N for multiclass,
    N×C 0/1 for multilabel); ``method`` one of :data:`~medclass.names.CALIBRATION_METHODS`.

    ``auto`` cross-fits the candidates and keeps the lowest held-out NLL; when no class has 2 cases to hold
    out it keeps ``none`` (recorded with the reason). Returns the :class:`Calibration` with its record.
    Raises :class:`ConfigError` for an unknown method, or platt/isotonic asked of a non-binary task, and
    :class:`DataError` for empty or non-finite input, or a method that needs both classes where one is
    missing.
    """
    look_up(dict.fromkeys(CALIBRATION_METHODS), method, "calibration method")
    z = np.asarray(logits, dtype=np.float64)
    yy = np.asarray(y).astype(int)
    if z.ndim != 2 or len(z) == 0 or len(z) != len(yy):
        raise DataError(f"calibration needs N×C logits and N labels (got {z.shape} and {yy.shape})")
    if not np.isfinite(z).all():
        raise DataError(f"{int((~np.isfinite(z)).any(axis=1).sum())} validation cases have NaN/inf logits")
    n_classes, binary = z.shape[1], is_binary(task, z.shape[1])
    positive = positive if task == "multiclass" and 0 <= positive < n_classes else 0  # multilabel: output 0
    if method in _BINARY_ONLY and not binary:
        raise ConfigError(f"--method {method} applies to binary tasks only; use temperature (or auto)")
    labels = _binary_targets(yy, task, positive) if binary else yy
    if method != "none" and binary and len(np.unique(labels)) < 2:
        raise DataError(f"the {split} split has one class only: nothing to calibrate against")
    candidates = ["none", "temperature", *(_BINARY_ONLY if binary else ())]
    folds = _folds(yy, task) if method == "auto" else []
    held_out: dict[str, dict[str, float]] = {}
    for name in candidates if folds else ():
        oof = np.zeros((len(z), n_classes))
        for fit_idx, test_idx in folds:
            part = Calibration(name, task, n_classes, _FITTERS[name](z[fit_idx], yy[fit_idx], task, positive),
                               positive)  # fmt: skip
            oof[test_idx] = part.probabilities(z[test_idx])
        held_out[name] = scores(yy, oof, task, positive)
    chosen = method
    if method == "auto":
        chosen = min(held_out, key=lambda m: held_out[m]["nll"]) if held_out else "none"
    cal = Calibration(chosen, task, n_classes, _FITTERS[chosen](z, yy, task, positive), positive)
    raw = Calibration("none", task, n_classes, {}, positive)
    counts = np.bincount(yy, minlength=n_classes) if task == "multiclass" else yy.reshape(len(yy), -1).sum(0)
    cal.record = {
        "split": split,
        "n": len(z),
        "class_counts": [int(c) for c in counts],  # cases per class (multilabel: positives per output)
        "selection": {
            "requested": method,
            "criterion": "lowest cross-fitted (held-out) NLL" if method == "auto" else "given",
            "folds": len(folds),
            "candidates": held_out,
        },
        "validation": {
            "raw": scores(yy, raw.probabilities(z), task, positive),
            "calibrated": scores(yy, cal.probabilities(z), task, positive),
        },
    }
    if method == "auto" and not folds:
        cal.record["selection"]["reason"] = "too few cases of a class to cross-fit: kept raw"
    log.info(
        "calibration on %s (n=%d): %s; NLL %.4f → %.4f, ECE %.4f → %.4f (in-sample)",
        split, len(z), cal.describe(), cal.record["validation"]["raw"]["nll"],
        cal.record["validation"]["calibrated"]["nll"], cal.record["validation"]["raw"]["ece"],
        cal.record["validation"]["calibrated"]["ece"],
    )  # fmt: skip
    return cal
