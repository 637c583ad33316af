"""Inference backends for scoring: a batch of preprocessed images in, class probabilities out.

A backend is a callable ``backend(x) -> probs`` with ``x`` an N×3×S×S float32 array and ``probs`` an N×C
float32 array (softmax or sigmoid, by the checkpoint's task), chosen by name from :data:`BACKENDS`:

- ``torch``: the checkpoint's model wrapped in :class:`~medclass.model.MainLogits` (only the main head),
  eval mode, ``torch.inference_mode``, channels_last, bf16 autocast on request; CUDA when asked for;
- ``onnxruntime``: an ONNX file written by :mod:`medclass.export` (main logits, dynamic batch axis).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medclass.errors import ConfigError

log = logging.getLogger(__name__)

PRECISION_NAMES = ("fp32", "bf16")


def pick_device(preference: str = "auto", local_rank: int = 0) -> str:
    """``auto`` → ``cuda:<local_rank>`` when a GPU is present, else ``cpu``.

    Raises :class:`ConfigError` for ``cuda`` without a GPU or an unknown name.
    """
    import torch

    if preference not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {preference!r}; valid: auto, cpu, cuda")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for but no CUDA GPU is available; use --device auto or cpu")
    if preference != "cpu" and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu"


class TorchBackend:
    """The checkpoint's model on ``device`` at ``precision`` (``fp32`` or ``bf16`` autocast).

    The model is put in eval mode (scoring owns the model it is given) and in channels_last layout.
    """

    name = "torch"

    def __init__(
        self,
        model: Any,
        task: str,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
    ) -> None:
        import torch

        from medclass.model import MainLogits, to_device

        if precision not in PRECISION_NAMES:
            raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISION_NAMES)}")
        self.task = task
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.model = MainLogits(model).eval()
        to_device(self.model, device, channels_last=channels_last)
        self._torch = torch

    def __call__(self, x: np.ndarray) -> np.ndarray:  # N×3×S×S → N×C
        from medclass.model import autocast_context, probabilities

        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            if self.device != "cpu":
                t = t.pin_memory().to(self.device, non_blocking=True)
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            with autocast_context(self.device, self.precision):
                logits = self.model(t)  # N×C
            return probabilities(logits, self.task).cpu().numpy().astype(np.float32)


class OnnxBackend:
    """An ONNX file from :func:`medclass.export.export_onnx` run by onnxruntime (CPU, or CUDA when asked).

    Raises :class:`ConfigError` when onnxruntime is not installed or the file cannot be loaded.
    """

    name = "onnxruntime"

    def __init__(
        self, onnx_path: str | os.PathLike[str], task: str, *, device: str = "cpu", threads: int = 0
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError(
                "--backend onnxruntime needs onnxruntime; install it with: pip install 'medclass[onnx]'"
            ) from None
        from medclass.model import TASK_ACTIVATIONS

        if task not in TASK_ACTIVATIONS:
            raise ConfigError(f"unknown task {task!r}; valid: {', '.join(TASK_ACTIVATIONS)}")
        path = Path(onnx_path)
        if not path.is_file():
            raise ConfigError("ONNX model not found (make one with: medclass export --format onnx)", path)
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(
                    "onnxruntime here has no CUDA provider; install onnxruntime-gpu or use --device cpu"
                )
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            raise ConfigError(
                f"onnxruntime cannot load this model ({type(exc).__name__}: {exc})", path
            ) from exc
        self.input_name = self.session.get_inputs()[0].name
        self.task = task
        self.device = device
        self.precision = "fp32"

    def __call__(self, x: np.ndarray) -> np.ndarray:  # N×3×S×S → N×C
        import torch

        from medclass.model import probabilities

        logits = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return probabilities(torch.from_numpy(np.asarray(logits)), self.task).numpy().astype(np.float32)


Backend = Callable[[np.ndarray], np.ndarray]

#: name → what builds it (see :func:`make_backend`)
BACKENDS: dict[str, type] = {"torch": TorchBackend, "onnxruntime": OnnxBackend}


def make_backend(
    name: str,
    *,
    task: str,
    model: Any = None,
    onnx_path: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    threads: int = 0,
) -> Backend:
    """The backend ``name`` (see :data:`BACKENDS`). Raises :class:`ConfigError` for an unknown name,
    a missing ONNX path, or bf16 asked of onnxruntime.
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    if name == "torch":
        if model is None:
            raise ConfigError("the torch backend needs --checkpoint")
        return TorchBackend(model, task, device=device, precision=precision)
    if onnx_path is None:
        raise ConfigError("--backend onnxruntime needs --onnx MODEL.onnx (make one with medclass export)")
    if precision != "fp32":
        raise ConfigError("--backend onnxruntime runs the exported fp32 graph; use --precision fp32")
    return OnnxBackend(onnx_path, task, device=device, threads=threads)
