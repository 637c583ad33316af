"""Names that several stages and the command line share, each said once here (light: no torch, no timm).

The command line builds its ``choices=`` from these without importing the heavy stages, the stages check
settings against them with :func:`medclass.errors.look_up`, and the tables that give the names their
behaviour (``medclass.model.TRANSFER_MODES``, ``medclass.model.PRECISIONS``,
``medclass.model.TASK_ACTIVATIONS``) are keyed by them; ``tests/test_layering.py`` checks that they agree.
"""

from __future__ import annotations

#: the timm model medclass builds, reads its input spec from, and records in checkpoints
ARCHITECTURE = "inception_v3"

#: classification tasks: one label per image (softmax) or independent findings (a sigmoid per class)
TASKS = ("multiclass", "multilabel")

#: transfer-learning modes of ``medclass train --mode`` (what each freezes: :mod:`medclass.model.transfer`)
TRANSFER_MODE_NAMES = ("linear", "partial", "full")

#: numeric precisions of the model's forward that train and score offer (bf16: autocast)
PRECISION_NAMES = ("fp32", "bf16")

#: inference backends of ``medclass score --backend`` (:data:`medclass.model.predictor.PREDICTORS`)
BACKEND_NAMES = ("torch", "onnxruntime", "openvino")
ONNX_BACKENDS = ("onnxruntime", "openvino")  # the backends that run an exported ONNX file (--onnx)
QUANTIZE_NAMES = ("int8",)  # medclass export --quantize

#: scoring engines of ``medclass score --engine`` (:data:`medclass.score.runner.ENGINES`)
ENGINE_NAMES = ("local", "ray")

#: where the model runs: ``auto`` picks CUDA when present
DEVICE_NAMES = ("auto", "cpu", "cuda")

#: where decoded training/evaluation inputs are kept, and in which dtype (:mod:`medclass.preprocess.dataset`)
CACHE_MODES = ("memory", "disk", "none")
CACHE_DTYPES = ("float32", "float16", "bfloat16")

#: how a patient's or study's images combine into one score (evaluate --aggregate, score --aggregate)
AGGREGATIONS = ("mean", "max")

#: scores file formats of ``medclass score`` (:mod:`medclass.score.rows`)
SCORE_FORMATS = ("csv", "jsonl", "parquet")

#: column prefixes of the tables medclass reads and writes: a manifest's multi-label truth
#: (``finding:<name>``) and a prediction's class scores (``prob:<class>``: evaluate, explain, score)
FINDING_PREFIX = "finding:"
PROB_PREFIX = "prob:"

#: how a checkpoint's probabilities are calibrated (:mod:`medclass.calibrate`; ``auto``: chosen by
#: cross-fitted NLL on validation), and the prefix of the uncalibrated probabilities evaluate also writes
CALIBRATION_METHODS = ("auto", "none", "temperature", "platt", "isotonic")
RAW_PROB_PREFIX = "raw:"

#: what ``--gate`` does with an out-of-scope image (:mod:`medclass.gate`): flag it and still give
#: probabilities, refuse it (a row without probabilities, decision ``refused``), or not gate at all
GATE_MODES = ("flag", "refuse", "off")
#: the ``decision`` of a row the gate refused (``--gate refuse``)
REFUSED = "refused"
#: the gate's columns in score rows, evaluate predictions and explain rows: in scope (true/false; empty
#: when not gated), why not, and the feature distance over its validation threshold (> 1: out of scope)
IN_SCOPE_COLUMN = "in_scope"
GATE_REASON_COLUMN = "gate_reason"
OOD_SCORE_COLUMN = "ood_score"
GATE_COLUMNS = (IN_SCOPE_COLUMN, GATE_REASON_COLUMN, OOD_SCORE_COLUMN)

__all__ = [
    "AGGREGATIONS",
    "ARCHITECTURE",
    "BACKEND_NAMES",
    "CACHE_DTYPES",
    "CACHE_MODES",
    "CALIBRATION_METHODS",
    "DEVICE_NAMES",
    "ENGINE_NAMES",
    "FINDING_PREFIX",
    "GATE_COLUMNS",
    "GATE_MODES",
    "GATE_REASON_COLUMN",
    "IN_SCOPE_COLUMN",
    "ONNX_BACKENDS",
    "OOD_SCORE_COLUMN",
    "PRECISION_NAMES",
    "PROB_PREFIX",
    "QUANTIZE_NAMES",
    "RAW_PROB_PREFIX",
    "REFUSED",
    "SCORE_FORMATS",
    "TASKS",
    "TRANSFER_MODE_NAMES",
]
