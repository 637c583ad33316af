"""Training state for an exact resume, without pickle: ``<stem>.state.safetensors`` + ``<stem>.state.json``.

:func:`save_training_state` stores the optimizer, scheduler and grad-scaler ``state_dict()`` (tensors in
the safetensors file, everything else as JSON with references to them) and the torch/CUDA/numpy/python
RNG states; :func:`load_training_state` verifies the pair like a model checkpoint and restores them.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from medclass.errors import CheckpointError, short_message
from medclass.weights.pair import commit_stem_pair, read_pair, stem_of
from medclass.weights.sidecar import (
    FORMAT_VERSION,
    SUPPORTED_FORMAT_VERSIONS,
    check_digest_fields,
    read_json_capped,
)


@dataclass
class TrainingState:
    """What :func:`load_training_state` gives back besides restoring the objects it was handed."""

    epoch: int
    extra: dict[str, Any] = field(default_factory=dict)


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of ``obj``; tensors go into ``tensors`` under ``key`` and leave a reference."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"{key}: cannot store a {type(obj).__name__} without pickling")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__items__"]}
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_stem(stem: Path | str) -> Path:
    stem = stem_of(Path(str(stem).removesuffix(".json").removesuffix(".safetensors")))
    return stem.with_suffix("") if stem.suffix == ".state" else stem


def save_training_state(
    stem: Path | str,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    scaler: Any = None,
    *,
    epoch: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write what an exact resume needs, without pickle: ``<stem>.state.safetensors`` + ``<stem>.state.json``.

    Stores the optimizer, scheduler and grad-scaler ``state_dict()`` (tensors keyed like
    ``optimizer.state.<param_idx>.<name>``, the rest as JSON), the torch/CUDA/numpy/python RNG states,
    ``epoch`` and ``extra`` (JSON-able: best metric, step count...). Returns the JSON path. Raises
    :class:`CheckpointError` when a state holds something that cannot be stored without pickling.
    """
    stem = _state_stem(stem)
    tensors: dict[str, torch.Tensor] = {}
    try:
        doc = {
            "format_version": FORMAT_VERSION,
            "epoch": int(epoch),
            "extra": _encode(extra or {}, "extra", tensors),
            "optimizer": _encode(optimizer.state_dict(), "optimizer", tensors),
            "scheduler": None if scheduler is None else _encode(scheduler.state_dict(), "scheduler", tensors),
            "scaler": None if scaler is None else _encode(scaler.state_dict(), "scaler", tensors),
            "rng": _encode(_rng_state(), "rng", tensors),
        }
    except TypeError as exc:
        raise CheckpointError(f"training state cannot be stored ({exc})", stem) from exc
    data = st_save(tensors, metadata={"format": "pt"})
    doc["sha256"] = hashlib.sha256(data).hexdigest()
    doc["size"] = len(data)
    return commit_stem_pair(stem, ".state", data, json.dumps(doc) + "\n")


def _read_state_doc(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise CheckpointError("training state .state.json is missing; cannot resume", json_path)
    doc = read_json_capped(json_path, "training state")
    if not isinstance(doc, dict) or doc.get("format_version") not in SUPPORTED_FORMAT_VERSIONS:
        version = doc.get("format_version") if isinstance(doc, dict) else None
        raise CheckpointError(f"unknown format_version {version!r}", json_path)
    check_digest_fields(doc, json_path)
    return doc


def load_training_state(
    stem: Path | str,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    scaler: Any = None,
    *,
    restore_rng: bool = True,
) -> TrainingState:
    """Restore what :func:`save_training_state` wrote into ``optimizer``, ``scheduler``, ``scaler`` and the RNGs.

    Returns the saved ``epoch`` and ``extra``. Raises :class:`CheckpointError` (naming the file) when the
    files are missing, corrupt, tampered with, or do not fit the optimizer handed in.
    """
    stem = _state_stem(stem)
    doc, data, st_path = read_pair(stem, ".state", _read_state_doc)
    try:
        tensors = st_load(data)
        optimizer.load_state_dict(_decode(doc["optimizer"], tensors))
        if scheduler is not None and doc.get("scheduler") is not None:
            scheduler.load_state_dict(_decode(doc["scheduler"], tensors))
        if scaler is not None and doc.get("scaler") is not None:
            scaler.load_state_dict(_decode(doc["scaler"], tensors))
        if restore_rng:
            _restore_rng(_decode(doc["rng"], tensors))
        extra = _decode(doc.get("extra", {}), tensors)
    except CheckpointError:
        raise
    except (SafetensorError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"training state does not fit ({short_message(exc, typed=True)})", st_path
        ) from exc
    return TrainingState(epoch=int(doc["epoch"]), extra=extra)
