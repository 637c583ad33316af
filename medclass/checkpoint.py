"""The checkpoint stage: models and training state on disk, pickle-free and verified.

A checkpoint is two files beside each other: ``<stem>.safetensors`` (the model's state dict) and
``<stem>.json`` (the sidecar: what the model is, what it was trained on, and the sha256 and size of the
weights file). Both are written atomically, the JSON last, so a checkpoint only counts once its sidecar
exists. Replacing a checkpoint first keeps the current, verified pair as ``<stem>.prev.*`` (hard links) until
the new pair is complete, so a crash between the two renames still leaves a loadable checkpoint: the
previous one, which :func:`load` falls back to with a warning. :func:`load` never unpickles and refuses a
file whose checksum does not match.

For an exact resume, :func:`save_training_state` writes the optimizer, scheduler, grad scaler and RNG
states as ``<stem>.state.safetensors`` (tensors) + ``<stem>.state.json`` (everything else).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from medclass.errors import CheckpointError
from medclass.fileio import atomic_write_bytes, atomic_write_text
from medclass.model import ARCHITECTURE, model_from_state_dict, unwrap

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")
_REFUSE_PICKLE = "medclass checkpoints are .safetensors + .json; refusing to unpickle"


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``model`` (eval mode, CPU), ``meta`` (the sidecar's content) and its ``path`` stem."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    @property
    def task(self) -> str:
        return str(self.meta.get("task", "multiclass"))


def _with_suffix(stem: Path, suffix: str) -> Path:
    return stem.parent / (stem.name + suffix)


def stem_of(path: Path | str) -> Path:
    """The checkpoint stem for a stem, ``.json`` or ``.safetensors`` path.

    Raises :class:`CheckpointError` for pickle-style files (``.pt``, ``.pth``, ``.ckpt``...).
    """
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        return path.with_suffix("")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(_REFUSE_PICKLE, path)
    if path.is_file():  # a bare file that is not ours: a pickle/zip in disguise or something else
        with path.open("rb") as fh:
            head = fh.read(2)
        if head[:1] == b"\x80" or head == b"PK":
            raise CheckpointError(_REFUSE_PICKLE, path)
        raise CheckpointError("not a medclass checkpoint (expected <stem>.safetensors + <stem>.json)", path)
    return path


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's JSON sidecar")


def _image_size(model: nn.Module, meta: dict[str, Any]) -> int:
    spec = meta.get("input")
    size = spec.get("size") if isinstance(spec, dict) else getattr(spec, "size", None)
    if size:
        return int(size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, 299, 299))[-1])


def save(stem: Path | str, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``<stem>.safetensors`` (state dict) then ``<stem>.json`` (``meta`` + what load checks), atomically.

    ``model`` may be wrapped (MainLogits, DDP, torch.compile). The sidecar adds ``format_version``,
    ``architecture``, ``num_classes``, ``aux_logits``, ``image_size`` (from ``meta["input"]["size"]`` or the
    model's config), and the weights file's ``sha256`` and ``size``. Returns the sidecar's path. Raises
    :class:`CheckpointError` when ``meta`` cannot be stored as JSON or its ``classes`` disagree with the model;
    on any error the previous checkpoint at ``stem`` is left as it was.
    """
    stem = stem_of(stem)
    inner = unwrap(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in inner.state_dict().items()}
    fc = state.get("fc.weight")
    if fc is None:
        raise CheckpointError("model has no fc layer; only Inception V3 models are saved", stem)
    num_classes = int(fc.shape[0])
    classes = meta.get("classes")
    if classes is not None and len(classes) != num_classes:
        raise CheckpointError(
            f"meta lists {len(classes)} classes but the model has {num_classes} outputs", stem
        )
    data = st_save(state, metadata={"format": "pt"})
    sidecar = {
        **meta,
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "num_classes": num_classes,
        "aux_logits": any(k.startswith("AuxLogits.") for k in state),
        "image_size": _image_size(inner, meta),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    try:
        text = json.dumps(sidecar, indent=2, default=_jsonable) + "\n"
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"meta cannot be written as JSON ({exc})", stem) from exc
    json_path = _commit_pair(stem, "", data, text)
    log.info("saved checkpoint %s (%d classes, %.1f MB)", json_path, num_classes, len(data) / 1e6)
    return json_path


def _read_sidecar(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise CheckpointError(
            "sidecar .json is missing: the checkpoint is incomplete (interrupted save?) or not a medclass one",
            json_path,
        )
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"sidecar is not valid JSON ({exc})", json_path) from exc
    if not isinstance(meta, dict):
        raise CheckpointError("sidecar is not a JSON object", json_path)
    version = meta.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise CheckpointError(
            f"unknown format_version {version!r} (this medclass reads {SUPPORTED_FORMAT_VERSIONS}); "
            "upgrade medclass",
            json_path,
        )
    if meta.get("architecture") != ARCHITECTURE:
        raise CheckpointError(
            f"architecture {meta.get('architecture')!r} is not {ARCHITECTURE!r}; medclass cannot load it",
            json_path,
        )
    return meta


def _verified_bytes(st_path: Path, meta: dict[str, Any]) -> bytes:
    if not st_path.is_file():
        raise CheckpointError(
            "weights file is missing (the .json sidecar has no .safetensors beside it)", st_path
        )
    data = st_path.read_bytes()
    expected = meta.get("size")
    if isinstance(expected, int) and len(data) != expected:
        raise CheckpointError(
            f"truncated or replaced: {len(data)} bytes, the sidecar recorded {expected}", st_path
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.get("sha256"):
        raise CheckpointError(
            "sha256 mismatch: the weights file changed after saving (tampered, corrupt, or an interrupted save)",
            st_path,
        )
    return data


# --- the pair (weights + sidecar) as one unit ------------------------------------------------------------
def _pair(stem: Path, kind: str) -> tuple[Path, Path]:
    return _with_suffix(stem, f"{kind}.safetensors"), _with_suffix(stem, f"{kind}.json")


def _pair_is_consistent(weights: Path, sidecar: Path) -> bool:
    try:
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
        return isinstance(doc, dict) and hashlib.sha256(weights.read_bytes()).hexdigest() == doc.get("sha256")
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _commit_pair(stem: Path, kind: str, data: bytes, text: str) -> Path:
    """Replace ``<stem><kind>.safetensors`` + ``.json`` so that a crash at any moment leaves a loadable pair.

    The current pair, if consistent, is first hard-linked to ``<stem><kind>.prev.*``; the weights then the
    sidecar are replaced atomically; the backup is removed once both are in place. Returns the sidecar path.
    """
    weights, sidecar = _pair(stem, kind)
    prev_w, prev_j = _pair(stem, f"{kind}.prev")
    if weights.is_file() and sidecar.is_file() and _pair_is_consistent(weights, sidecar):
        for src, dst in ((weights, prev_w), (sidecar, prev_j)):
            tmp = dst.with_name(dst.name + ".tmp")
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:  # file systems without hard links
                shutil.copy2(src, tmp)
            os.replace(tmp, dst)
    atomic_write_bytes(weights, data)
    atomic_write_text(sidecar, text)
    prev_j.unlink(missing_ok=True)
    prev_w.unlink(missing_ok=True)
    return sidecar


def _read_pair(stem: Path, kind: str, read_sidecar: Any) -> tuple[dict[str, Any], bytes, Path]:
    """The verified ``(sidecar, weights bytes, weights path)`` of a pair, falling back to the ``.prev`` pair
    an interrupted save left behind. Raises :class:`CheckpointError` when neither verifies."""
    weights, sidecar = _pair(stem, kind)
    meta = read_sidecar(sidecar)
    try:
        return meta, _verified_bytes(weights, meta), weights
    except CheckpointError as exc:
        prev_w, prev_j = _pair(stem, f"{kind}.prev")
        if not (prev_w.is_file() and prev_j.is_file()):
            raise
        prev_meta = read_sidecar(prev_j)
        data = _verified_bytes(prev_w, prev_meta)
        log.warning("%s (an interrupted save); loading the previous checkpoint %s instead", exc, prev_j)
        return prev_meta, data, prev_w


def read_state_dict(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified state dict and sidecar of a checkpoint (stem, ``.json`` or ``.safetensors`` path).

    Returns ``(state_dict, meta)``. Raises :class:`CheckpointError` naming the file for a pickle file, a
    missing or invalid sidecar, an unknown ``format_version`` or architecture, a size or sha256 mismatch,
    or an unreadable safetensors file.
    """
    stem = stem_of(path)
    meta, data, st_path = _read_pair(stem, "", _read_sidecar)
    try:
        state = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt safetensors file ({exc})", st_path) from exc
    return state, meta


def load(path: Path | str) -> Checkpoint:
    """Load a checkpoint (its stem, ``.json`` or ``.safetensors`` path) into a model in eval mode on the CPU.

    Returns a :class:`Checkpoint`. Raises :class:`CheckpointError` (one line naming the file) for everything
    :func:`read_state_dict` refuses and for weights whose class count or layers disagree with the sidecar.
    Never executes pickled code.
    """
    stem = stem_of(path)
    state, meta = read_state_dict(stem)
    st_path = _with_suffix(stem, ".safetensors")
    num_classes = meta.get("num_classes")
    fc = state.get("fc.weight")
    if not isinstance(num_classes, int) or fc is None or fc.shape[0] != num_classes:
        found = None if fc is None else int(fc.shape[0])
        raise CheckpointError(
            f"class-count mismatch: sidecar says {num_classes}, weights have {found} outputs", st_path
        )
    classes = meta.get("classes")
    if classes is not None and len(classes) != num_classes:
        raise CheckpointError(f"sidecar lists {len(classes)} classes for {num_classes} outputs", st_path)
    model = model_from_state_dict(state, image_size=int(meta.get("image_size", 299)), source=st_path)
    model.eval()
    return Checkpoint(model=model, meta=meta, path=stem)


# --- training state for exact resume -----------------------------------------------------------------
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
    return _commit_pair(stem, ".state", data, json.dumps(doc) + "\n")


def _read_state_doc(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise CheckpointError("training state .state.json is missing; cannot resume", json_path)
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"training state is not valid JSON ({exc})", json_path) from exc
    if not isinstance(doc, dict) or doc.get("format_version") not in SUPPORTED_FORMAT_VERSIONS:
        version = doc.get("format_version") if isinstance(doc, dict) else None
        raise CheckpointError(f"unknown format_version {version!r}", json_path)
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
    doc, data, st_path = _read_pair(stem, ".state", _read_state_doc)
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
        raise CheckpointError(f"training state does not fit ({type(exc).__name__}: {exc})", st_path) from exc
    return TrainingState(epoch=int(doc["epoch"]), extra=extra)
