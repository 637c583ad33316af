"""Where scoring runs: the device, and the predictor (backend) that turns batches into probabilities.

A backend is a :class:`medclass.model.predictor.Predictor`: called on ``x`` (an N×3×S×S float32 array) it
returns ``probs`` (N×C float32: softmax or sigmoid, by the checkpoint's task) of the main head, the same
predictor ``medclass evaluate`` and ``medclass explain`` use, so scoring reproduces evaluate exactly.
Chosen by name (:data:`medclass.names.BACKEND_NAMES`):

- ``torch``: the checkpoint's model in eval mode, ``torch.inference_mode``, channels_last, bf16 autocast on
  request; CUDA when asked for;
- ``onnxruntime``: an ONNX file written by :mod:`medclass.export` (main logits, dynamic batch axis);
- ``openvino``: the same file compiled by OpenVINO for the CPU (fp32 or bf16 for the non-int8 layers).

This module stays light (torch and the model are imported when a backend is made), so that the decoding
workers that import :mod:`medclass.score` do not load them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from medclass.errors import ConfigError, look_up
from medclass.names import DEVICE_NAMES

log = logging.getLogger(__name__)

Backend = Callable[[np.ndarray], np.ndarray]


def pick_device(preference: str = "auto", local_rank: int = 0) -> str:
    """``auto`` → ``cuda:<local_rank>`` when a GPU is present, else ``cpu``.

    Raises :class:`ConfigError` for ``cuda`` without a GPU or an unknown name.
    """
    import torch

    look_up(DEVICE_NAMES, preference, "device")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for but no CUDA GPU is available; use --device auto or cpu")
    if preference != "cpu" and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu"


def make_backend(name: str, **options: Any) -> Backend:
    """The predictor ``name`` with ``options`` (``task``, ``model``, ``onnx_path``, ``device``, ``precision``,
    ``threads``): :func:`medclass.model.predictor.make_predictor`, imported only now. Raises
    :class:`ConfigError` for an unknown name, a missing model or ONNX path, or bf16 asked of onnxruntime.
    """
    from medclass.model.predictor import make_predictor

    return make_predictor(name, **options)
