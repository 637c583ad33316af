"""int8 quantization of an exported ONNX graph, calibrated on real images, with an accuracy guard.

:func:`calibration_inputs` preprocesses a manifest split exactly as scoring does (the checkpoint's own
:class:`~medclass.preprocess.Preprocessor`); :func:`quantize_int8` quantizes with NNCF or onnxruntime's
static quantizer calibrated on them (a QDQ graph that onnxruntime runs);
:func:`guard` runs the fp32 and the int8 graph on the same images and measures what a user would see
change: the AUC (the positive class for a binary model, the macro one-vs-rest mean otherwise, the mean over
findings for multilabel) and the largest change of any probability (after the checkpoint's calibration,
as scoring applies it). :mod:`medclass.export` refuses the int8 model when the AUC drops by more than
:data:`MAX_AUC_DROP` or a probability moves by more than :data:`MAX_PROB_DIFF` (unless forced) and records
the figures in the sidecar's ``quantization``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from medclass.errors import ConfigError, DataError, look_up

log = logging.getLogger(__name__)

MAX_AUC_DROP = 0.002  # largest AUC drop (fp32 − int8) on the calibration images export accepts
MAX_PROB_DIFF = 0.05  # largest |Δprob| (any image, any class) export accepts
DEFAULT_IMAGES = 256  # calibration images used at most (the first of the split, in manifest order)
BATCH = 16  # images per onnxruntime call while calibrating and comparing


def calibration_inputs(
    checkpoint: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    split: str = "val",
    data_root: str | os.PathLike[str] | None = None,
    *,
    limit: int = DEFAULT_IMAGES,
    allow_outside_root: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(x N×3×S×S float32, y N)``: the first ``limit`` decodable images of ``split`` preprocessed as the
    checkpoint's scoring does, and their targets (class index; N×F 0/1 for multilabel). Raises what
    :func:`medclass.evaluate.predict.load_checked` raises, and DataError when no image of the split
    decodes."""
    from medclass.evaluate.predict import load_checked
    from medclass.preprocess import Preprocessor
    from medclass.preprocess.dataset import CachedDataset

    ckpt, loaded = load_checked(checkpoint, manifest, (split,), data_root, allow_outside_root)
    ds = CachedDataset(loaded, split, Preprocessor.from_meta(ckpt.meta), cache="none").load()
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for i in range(len(ds)):
        if len(xs) >= limit:
            break
        try:
            x, y = ds[i]
        except DataError as exc:
            log.warning("calibration image left out: %s", exc)
            continue
        xs.append(np.asarray(x, dtype=np.float32))
        ys.append(np.asarray(y))
    if not xs:
        raise DataError(f"no decodable images in split {split!r} to calibrate the int8 model on", manifest)
    return np.stack(xs), np.stack(ys)


def _nncf(fp32: bytes, x: np.ndarray) -> bytes:
    """NNCF post-training quantization: int8 weights per output channel, int8 activations, fast bias
    correction; a QDQ graph onnxruntime runs."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # nncf imports it: CUDA notice
    import nncf
    import onnx

    nncf.set_log_level(logging.ERROR)
    model = onnx.load_from_string(fp32)
    name = model.graph.input[0].name
    batches = [{name: x[i : i + BATCH]} for i in range(0, len(x), BATCH)]
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    return bytes(quantized.SerializeToString())


def _onnxruntime(fp32: bytes, x: np.ndarray) -> bytes:
    """onnxruntime's static quantizer: QDQ, int8 weights per output channel, uint8 activations, min-max
    ranges (after its recommended pre-processing: shape inference and graph folding)."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = _input_name(fp32)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(x), BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.starts, None)
            return None if start is None else {name: x[start : start + BATCH]}

    with tempfile.TemporaryDirectory(prefix="medclass-int8-") as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32)
        quant_pre_process(str(src), str(pre))
        quantize_static(
            str(pre), str(dst), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
        return dst.read_bytes()


#: quantizer name → function (fp32 ONNX bytes, calibration images N×3×S×S) → int8 QDQ ONNX bytes
QUANTIZERS = {"nncf": _nncf, "onnxruntime": _onnxruntime}
#: what each does, for the sidecar
METHODS = {
    "nncf": "NNCF post-training quantization (QDQ): int8 weights per channel, int8 activations, fast bias "
    "correction",
    "onnxruntime": "onnxruntime static quantization (QDQ): int8 weights per channel, uint8 activations, "
    "min-max ranges",
}


def quantize_int8(fp32: bytes, x: np.ndarray, quantizer: str = "nncf") -> bytes:
    """The int8 (QDQ) version of the fp32 ONNX graph ``fp32``, its ranges calibrated on ``x`` (N×3×S×S
    float32), by ``quantizer`` (:data:`QUANTIZERS`). Raises ConfigError for an unknown name or a missing
    library.

    Neither is better everywhere (measured: the PneumoniaMNIST model at 128 px, 256 val images
    calibrating, test split: NNCF mean |Δprob| 0.007 and AUC drop 0.0006, onnxruntime 0.05 and 0.002; a
    3-epoch 75 px model on 16 images: the other way round), so export tries both and keeps the one its
    guard prefers (:func:`better`).
    """
    look_up(QUANTIZERS, quantizer, "quantizer")
    try:
        return QUANTIZERS[quantizer](fp32, x)
    except ImportError as exc:
        raise ConfigError(
            f"int8 export with {quantizer} needs {exc.name}: pip install 'medclass[onnx]'"
        ) from None


def better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether guard record ``a`` is better than ``b``: passing first, then the smaller largest |Δprob|,
    then the smaller AUC drop."""

    def key(g: dict[str, Any]) -> tuple[bool, float, float]:
        drop = g["auc_drop"] if g["auc_drop"] is not None else 0.0
        return (not g["passed"], g["max_abs_prob_diff"], drop)

    return key(a) < key(b)


def _input_name(model: bytes) -> str:
    """The graph's (only) input: read from the model, so this module needs nothing from the exporter."""
    import onnx

    return str(onnx.load_from_string(model).graph.input[0].name)


def _logits(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: x[i : i + BATCH]})[0] for i in range(0, len(x), BATCH)]
    )  # N×C


def _auc(y: np.ndarray, probs: np.ndarray, task: str, positive: int) -> float | None:
    """The AUC :mod:`medclass.quantize` guards (None when the images hold one class only)."""
    from sklearn.metrics import roc_auc_score

    if task == "multilabel":
        aucs = [
            roc_auc_score(y[:, j], probs[:, j]) for j in range(probs.shape[1]) if len(np.unique(y[:, j])) == 2
        ]
        return float(np.mean(aucs)) if aucs else None
    if len(np.unique(y)) < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(y == positive, probs[:, positive]))
    present = np.unique(y)
    return float(
        np.mean([roc_auc_score(y == c, probs[:, c]) for c in present])
    )  # macro one-vs-rest over the classes present


def guard(
    fp32: bytes,
    int8: bytes,
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    positive: int = 1,
    calibration: Any = None,
    max_auc_drop: float = MAX_AUC_DROP,
    max_prob_diff: float = MAX_PROB_DIFF,
) -> dict[str, Any]:
    """int8 against fp32 on ``x`` (targets ``y``): the sidecar's ``quantization.guard`` record —
    ``images``, ``auc_fp32``, ``auc_int8``, ``auc_drop`` (None when ``y`` holds one class only),
    ``max_abs_prob_diff``, ``mean_abs_prob_diff``, the limits and ``passed``."""
    from medclass.model.predictor import Predictor

    head = Predictor(task, calibration=calibration)  # the probabilities scoring would report
    import torch

    p32 = head.probabilities(torch.from_numpy(_logits(fp32, x)))
    p8 = head.probabilities(torch.from_numpy(_logits(int8, x)))
    diff = np.abs(p8 - p32)
    auc32, auc8 = _auc(y, p32, task, positive), _auc(y, p8, task, positive)
    drop = None if auc32 is None or auc8 is None else auc32 - auc8
    max_diff = float(diff.max())
    passed = bool(max_diff <= max_prob_diff and (drop is None or drop <= max_auc_drop))
    return {
        "images": len(x),
        "auc_fp32": auc32,
        "auc_int8": auc8,
        "auc_drop": drop,
        "max_abs_prob_diff": max_diff,
        "mean_abs_prob_diff": float(diff.mean()),
        "max_auc_drop_allowed": max_auc_drop,
        "max_abs_prob_diff_allowed": max_prob_diff,
        "passed": passed,
    }


def describe(record: dict[str, Any]) -> str:
    """One line for a sidecar's ``quantization`` record (export and score print it)."""
    g = record.get("guard") or {}
    auc = (
        "AUC not measured (one class only)"
        if g.get("auc_drop") is None
        else f"AUC {g['auc_fp32']:.4f} → {g['auc_int8']:.4f} (drop {g['auc_drop']:+.4f}, limit {g['max_auc_drop_allowed']})"
    )
    forced = "; accepted with --force" if record.get("forced") else ""
    return (
        f"int8 vs fp32 on {g.get('images')} calibration images ({record.get('calibration_split')} split, "
        f"quantizer {record.get('quantizer')}): "
        f"{auc}; max |Δprob| {g.get('max_abs_prob_diff', float('nan')):.4f} (limit "
        f"{g.get('max_abs_prob_diff_allowed')}){forced}"
    )


def positive_index(meta: dict[str, Any], classes: Sequence[str]) -> int:
    """The index of the checkpoint's positive class (1 when it names none)."""
    positive = meta.get("positive_class")
    return list(classes).index(positive) if isinstance(positive, str) and positive in classes else 1
