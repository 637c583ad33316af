"""The one predictor of evaluate, score and explain: preprocessed images in, class probabilities out.

A :class:`Predictor` is called on a batch ``x`` (N×3×S×S float32, numpy or torch, preprocessed as the
checkpoint says) and returns the main head's class probabilities (N×C float32 numpy: a softmax over classes
or a sigmoid per class, by the checkpoint's task). A backend overrides one method, :meth:`Predictor.logits`;
turning logits into probabilities is shared, so every backend and every command agree on it. A predictor
given a ``calibration`` (the checkpoint's, :func:`medclass.calibrate.from_meta`; None with
``--no-calibration``) returns calibrated probabilities; ``probabilities(logits, calibrated=False)`` gives the
raw ones as well (evaluate reports both):

- :class:`TorchPredictor`: the model behind :class:`~medclass.model.MainLogits` (the aux head is never
  computed), eval mode for the call only (the model's training flags are put back), moved once to its
  device in channels_last layout, ``torch.inference_mode``, bf16 autocast on request. Its pieces
  (:meth:`~TorchPredictor.prepare`, :attr:`~TorchPredictor.module`, :meth:`Predictor.probabilities`) are
  also what Grad-CAM runs through (:class:`medclass.explain.Explainer`), which needs gradients and so runs
  the forward itself.
- :class:`OnnxPredictor`: an ONNX file written by :mod:`medclass.export`, run by onnxruntime.

:data:`PREDICTORS` maps backend names to them; :func:`make_predictor` builds one by name. Training keeps
its own step code (:mod:`medclass.train.steps`) and shares the helpers it is made of (``MainLogits``,
:func:`~medclass.model.to_device`, :func:`~medclass.model.autocast_context`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medclass.calibrate import Calibration
from medclass.errors import ConfigError, look_up
from medclass.model import TASK_ACTIVATIONS, MainLogits, autocast_context, probabilities, to_device
from medclass.names import PRECISION_NAMES

__all__ = ["PREDICTORS", "OnnxPredictor", "Predictor", "TorchPredictor", "make_predictor"]


class Predictor:
    """Batches of preprocessed images → main-head class probabilities. Override :meth:`logits`.

    ``task`` (``multiclass``/``multilabel``) sets the activation; ``device`` and ``precision`` (``fp32``,
    ``bf16``) say where and how the backend runs; ``calibration`` (None: raw) maps logits to calibrated
    probabilities. Raises :class:`ConfigError` for an unknown task or a calibration fitted for another task.
    """

    name = "base"

    def __init__(
        self,
        task: str,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        calibration: Calibration | None = None,
    ) -> None:
        look_up(TASK_ACTIVATIONS, task, "task")
        if calibration is not None and calibration.task != task:
            raise ConfigError(f"the calibration was fitted for a {calibration.task} task, not {task}")
        self.task = task
        self.device = device
        self.precision = precision
        self.calibration = calibration

    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The main head's logits (N×C, on any device, any float dtype) for ``x`` (N×3×S×S)."""
        raise NotImplementedError

    def logits_and_features(self, x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The main logits and the pooled penultimate features of one forward pass (None when the backend
        has none: the input gate then checks headers and layout only). Override where features exist."""
        return self.logits(x), None

    def predict(self, x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (N×C, as :meth:`__call__`) and pooled features (N×D float32, or None) of ``x``."""
        logits, features = self.logits_and_features(x)
        feats = None if features is None else features.detach().float().cpu().numpy()
        return self.probabilities(logits), feats

    def probabilities(self, logits: torch.Tensor, *, calibrated: bool = True) -> np.ndarray:
        """Logits (N×C) → probabilities (N×C float32 numpy on the CPU), by :attr:`task`, through
        :attr:`calibration` when there is one and ``calibrated`` is True."""
        if calibrated and self.calibration is not None:
            z = logits.detach().float().cpu().numpy()  # N×C
            return self.calibration.probabilities(z).astype(np.float32)
        return probabilities(logits.detach(), self.task).cpu().numpy().astype(np.float32, copy=False)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:  # N×3×S×S → N×C
        return self.probabilities(self.logits(x))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; every module's training flag is put back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class TorchPredictor(Predictor):
    """``model`` (any Inception V3, wrapped or not) on ``device`` at ``precision``.

    ``channels_last`` (default) converts the model's parameters in place once and every batch on the way
    in. The model's training flags are only changed for the duration of a call. Raises
    :class:`ConfigError` for an unknown precision.
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        task: str,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
        calibration: Calibration | None = None,
    ) -> None:
        look_up(PRECISION_NAMES, precision, "precision")
        super().__init__(task, device=device, precision=precision, calibration=calibration)
        self.channels_last = channels_last
        self.module = MainLogits(model)
        to_device(self.module, device, channels_last=channels_last)

    def prepare(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``x`` as a float32 tensor on the predictor's device (pinned, non-blocking copy to a GPU), in
        channels_last layout when the predictor uses it."""
        t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x, dtype=torch.float32)
        if torch.device(self.device).type != "cpu":
            t = (t.pin_memory() if t.device.type == "cpu" else t).to(self.device, non_blocking=True)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:  # N×3×S×S → N×C
        with torch.inference_mode(), eval_mode(self.module):
            t = self.prepare(x)
            with autocast_context(self.device, self.precision):
                return self.module(t)

    def logits_and_features(self, x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.inference_mode(), eval_mode(self.module):
            t = self.prepare(x)
            with autocast_context(self.device, self.precision):
                return self.module.logits_and_features(t)  # N×C, N×2048


class OnnxPredictor(Predictor):
    """An ONNX file from :func:`medclass.export.export_onnx` run by onnxruntime (CPU, or CUDA when asked).

    ``threads`` > 0 sets onnxruntime's intra-op threads. Raises :class:`ConfigError` when onnxruntime is
    not installed, the file is missing or cannot be loaded, or CUDA is asked of a CPU-only onnxruntime.
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        task: str,
        *,
        device: str = "cpu",
        threads: int = 0,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(task, device=device, precision="fp32", calibration=calibration)
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError(
                "--backend onnxruntime needs onnxruntime; install it with: pip install 'medclass[onnx]'"
            ) from None
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

    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:  # N×3×S×S → N×C
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(array, dtype=np.float32)})[0]
        return torch.from_numpy(np.asarray(out))


class OpenVinoPredictor(Predictor):
    """An ONNX file from :func:`medclass.export.export_onnx` (fp32 or int8) run by OpenVINO on the CPU.

    ``precision`` sets OpenVINO's inference precision for the layers that are not int8: ``fp32`` (f32,
    faithful to the export) or ``bf16`` (OpenVINO's own default on CPUs with bf16 support, which it would
    otherwise pick silently). ``threads`` > 0 sets its inference threads. Raises :class:`ConfigError` when
    openvino is not installed, the file is missing or cannot be compiled, or a GPU is asked for.
    """

    name = "openvino"

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        task: str,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int = 0,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(task, device=device, precision=precision, calibration=calibration)
        try:
            import openvino as ov
        except ImportError:
            raise ConfigError(
                "--backend openvino needs openvino; install it with: pip install 'medclass[onnx]'"
            ) from None
        if device.startswith("cuda"):
            raise ConfigError(
                "--backend openvino runs on the CPU here; use --device cpu (or --backend torch)"
            )
        path = Path(onnx_path)
        if not path.is_file():
            raise ConfigError("ONNX model not found (make one with: medclass export --format onnx)", path)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:
            raise ConfigError(
                f"openvino cannot compile this model ({type(exc).__name__}: {exc})", path
            ) from exc

    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:  # N×3×S×S → N×C
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        out = self.compiled(np.ascontiguousarray(array, dtype=np.float32))[0]
        return torch.from_numpy(np.array(out, dtype=np.float32))


#: backend name → predictor class (see :func:`make_predictor`)
PREDICTORS: dict[str, type[Predictor]] = {
    "torch": TorchPredictor,
    "onnxruntime": OnnxPredictor,
    "openvino": OpenVinoPredictor,
}


def make_predictor(
    name: str,
    *,
    task: str,
    model: Any = None,
    onnx_path: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    threads: int = 0,
    calibration: Calibration | None = None,
) -> Predictor:
    """The predictor ``name`` (see :data:`PREDICTORS`), applying ``calibration`` when given. Raises
    :class:`ConfigError` for an unknown name, a missing model or ONNX path, or bf16 asked of onnxruntime.
    """
    look_up(PREDICTORS, name, "backend")
    if name == "torch":
        if model is None:
            raise ConfigError("the torch backend needs --checkpoint")
        return TorchPredictor(model, task, device=device, precision=precision, calibration=calibration)
    if onnx_path is None:
        raise ConfigError(f"--backend {name} needs --onnx MODEL.onnx (make one with medclass export)")
    if name == "openvino":
        return OpenVinoPredictor(
            onnx_path, task, device=device, precision=precision, threads=threads, calibration=calibration
        )
    if precision != "fp32":
        raise ConfigError("--backend onnxruntime runs the exported graph as it is; use --precision fp32")
    return OnnxPredictor(onnx_path, task, device=device, threads=threads, calibration=calibration)
