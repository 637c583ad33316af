"""What one scoring run is: its settings (:class:`ScoreConfig`), the model it scores with (:func:`load_meta`,
:func:`build_backend`, :func:`make_preprocessor`) and what an engine is handed (:class:`ScoreJob`).

Both engines build from here: the local loop (:mod:`~medclass.score.runner`) and the Ray actors and tasks
(:mod:`~medclass.score.ray_engine`), so a checkpoint is read, and its preprocessing and backend made, one
way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medclass.errors import CheckpointError, ConfigError
from medclass.names import ONNX_BACKENDS
from medclass.score.decide import DecisionRule
from medclass.score.inputs import WorkItem
from medclass.score.writer import ScoreOutput

log = logging.getLogger(__name__)

META_KEYS = ("classes", "task", "input", "window", "fit")


@dataclass
class ScoreConfig:
    """Everything a scoring run needs (the CLI's flags)."""

    paths: Sequence[str | os.PathLike[str]]
    out: Path
    checkpoint: Path | None = None
    format: str | None = None  # None: from the suffix of ``out`` (csv when unknown)
    workers: int | None = None  # None: default_workers()
    batch_size: int = 32
    resume: bool = False
    overwrite: bool = False
    backend: str = "torch"
    onnx: Path | None = None
    precision: str = "fp32"
    device: str = "auto"
    slice_policy: str = "all"
    data_root: Path | None = None
    allow_outside_root: bool = False  # manifests among paths may point outside data_root
    aggregate: str = "mean"
    threads: int | None = None  # torch intra-op threads in this process; None: see _threads()
    # JPEG inputs decoded at 1/2..1/8 scale in the DCT domain (sides kept ≥ 2 × the model input): ~2× less
    # decode + resize work per radiograph, probabilities within ~0.02 of the exact path (not identical to
    # what `evaluate` computes, hence opt-in)
    fast_decode: bool = False
    engine: str = "local"  # see ENGINES
    ray_address: str | None = None  # None: a Ray cluster on this machine, started for the run
    actors: int | None = None  # model replicas on the Ray engine; None: one per GPU, else one
    calibrated: bool = True  # apply the checkpoint's calibration (False: --no-calibration, raw scores)
    gate: str = "flag"  # the input gate (medclass.gate): flag | refuse | off


@dataclass
class ScoreJob:
    """What an engine is handed: the items still to score and everything needed to score them.

    An engine writes every item's row through ``output`` (the row log, or the idempotent
    :meth:`~medclass.score.writer.ScoreOutput.sink`), calls ``progress(n)`` as rows are committed and
    returns the :class:`Counts` of this run plus the settings it used (for the log and the report).
    """

    config: ScoreConfig
    meta: dict[str, Any]
    model: Any  # the torch model (torch backend), else None
    rule: DecisionRule
    todo: list[WorkItem]
    output: ScoreOutput
    progress: Callable[[int], None] | None = None
    preprocessor: Any = None  # image → 3×S×S array; None: the checkpoint's (make_preprocessor(meta))
    gate: Any = None  # the input gate (medclass.gate.Gate); None: make_gate(meta, config.gate)

    def __post_init__(self) -> None:
        if self.preprocessor is None:
            self.preprocessor = make_preprocessor(self.meta)
        if self.gate is None:
            self.gate = make_gate(self.meta, self.config.gate)

    @property
    def model_sha256(self) -> str:
        return str(self.meta.get("sha256", ""))

    def min_size(self) -> int | None:
        return decode_min_size(self.config.fast_decode, int(self.meta["input"]["size"]))


def output_format(out: Path, given: str | None) -> str:
    if given:
        return given
    suffix = out.suffix.lower().lstrip(".")
    return suffix if suffix in ("csv", "jsonl", "parquet") else "csv"


def load_meta(config: ScoreConfig) -> tuple[dict[str, Any], Any]:
    """The model's meta and, for the torch backend, the model. Raises :class:`CheckpointError` /
    :class:`ConfigError` for a missing checkpoint, an ONNX file exported from other weights, or neither.
    """
    from medclass import checkpoint as checkpoints

    onnx_meta = None
    if config.backend in ONNX_BACKENDS and config.onnx is not None:
        from medclass.export import read_sidecar

        onnx_meta = read_sidecar(config.onnx)
        if "quantization" in onnx_meta:
            from medclass.quantize import describe

            log.info("%s: %s", config.onnx, describe(onnx_meta["quantization"]))
    if config.checkpoint is None:
        if onnx_meta is None:
            raise ConfigError(
                "--checkpoint is required (or --backend onnxruntime|openvino --onnx MODEL.onnx)"
            )
        return onnx_meta, None
    if config.backend == "torch":
        ckpt = checkpoints.load(config.checkpoint)
        meta, model = dict(ckpt.meta), ckpt.model
    else:
        from medclass.weights import read_meta

        meta, model = read_meta(config.checkpoint), None
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise CheckpointError(
            f"checkpoint meta lacks {', '.join(missing)}; it cannot be scored", config.checkpoint
        )
    if onnx_meta is not None and onnx_meta.get("sha256") != meta.get("sha256"):
        raise ConfigError(
            f"was exported from other weights (sha256 {str(onnx_meta.get('sha256'))[:12]}…) than "
            f"--checkpoint ({str(meta.get('sha256'))[:12]}…); export it again",
            config.onnx,
        )
    if onnx_meta is not None and "quantization" in onnx_meta:
        meta["quantization"] = onnx_meta["quantization"]
    return meta, model


def make_preprocessor(meta: dict[str, Any]) -> Any:
    from medclass.preprocess import Preprocessor

    return Preprocessor.from_meta(meta)


def make_gate(meta: dict[str, Any], mode: str) -> Any:
    """The input gate of a checkpoint's ``meta`` in ``mode`` (:meth:`medclass.gate.Gate.from_meta`)."""
    from medclass.gate import Gate

    return Gate.from_meta(meta, mode)


def decode_min_size(fast_decode: bool, input_size: int) -> int | None:
    """The reader's ``min_size`` hint for ``--fast-decode``: 2× the model input (at 1× the drift from the
    exact path was 5× larger on the Kermany radiographs: max |Δprob| 0.082 against 0.016); None without."""
    return 2 * input_size if fast_decode else None


def build_backend(config: ScoreConfig, meta: dict[str, Any], model: Any, device: str, threads: int) -> Any:
    """The inference backend of ``config`` (see :func:`~medclass.score.backends.make_backend`) for the model
    ``meta`` describes, applying its calibration unless ``config.calibrated`` is False; loads the
    checkpoint's model when ``model`` is None and the backend is torch (a Ray actor does that)."""
    from medclass.calibrate import from_meta
    from medclass.score.backends import make_backend

    if model is None and config.backend == "torch":
        model = load_meta(config)[1]
    return make_backend(
        config.backend, task=str(meta.get("task", "multiclass")), model=model, onnx_path=config.onnx,
        device=device, precision=config.precision, threads=threads,
        calibration=from_meta(meta, enabled=config.calibrated),
    )  # fmt: skip
