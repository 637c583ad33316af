"""The checkpoint stage: models and training state on disk, pickle-free and verified.

A checkpoint is two files beside each other: ``<stem>.safetensors`` (the model's state dict) and
``<stem>.json`` (the sidecar: what the model is, what it was trained on, and the sha256 and size of the
weights file). Both are written atomically, the JSON last, so a checkpoint only counts once its sidecar
exists. Replacing a checkpoint first keeps the current, verified pair as ``<stem>.prev.*`` (hard links) until
the new pair is complete, so a crash between the two renames still leaves a loadable checkpoint: the
previous one, which :func:`load` falls back to with a warning. :func:`load` never unpickles and refuses a
file whose checksum does not match.

The sidecar also carries ``meta_sha256``, the sha256 of its own canonical JSON (sorted keys, no spaces,
without that key), so a hand-edited sidecar (classes reordered, a bad merge) is refused instead of loading
with silently wrong labels. It catches accidents, not a deliberate attacker, who can recompute it along
with the weights' checksum. Every field :func:`load` relies on is type- and range-checked, and a sidecar
over :data:`MAX_SIDECAR_BYTES` is refused before it is read.

Reading lives one stage lower, in :mod:`medclass.weights` (the sidecar format, the crash-safe pair of
files, :func:`read_state_dict`), so :mod:`medclass.model` can load weights without importing this package.
For an exact resume, :func:`save_training_state` (in :mod:`medclass.checkpoint.state`, re-exported here)
writes the optimizer, scheduler, grad scaler and RNG states as ``<stem>.state.safetensors`` (tensors) +
``<stem>.state.json`` (everything else).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save
from torch import nn

from medclass.checkpoint.state import TrainingState, load_training_state, save_training_state
from medclass.errors import CheckpointError
from medclass.fileio import atomic_write_text
from medclass.model import model_from_state_dict, unwrap
from medclass.names import ARCHITECTURE
from medclass.preprocess.spec import input_spec
from medclass.weights import (
    FORMAT_VERSION,
    IMAGE_SIZE_RANGE,
    MAX_SIDECAR_BYTES,
    SUPPORTED_FORMAT_VERSIONS,
    TASKS,
    checkpoints_in,
    commit_pair,
    commit_stem_pair,
    file_sha256,
    meta_digest,
    read_json_capped,
    read_meta,
    resolve,
    stem_of,
    with_suffix,
)
from medclass.weights import read_checkpoint as read_state_dict
from medclass.weights.sidecar import validate

log = logging.getLogger(__name__)


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
    return int(cfg["input_size"][-1]) if "input_size" in cfg else input_spec(ARCHITECTURE).size


def save(stem: Path | str, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``<stem>.safetensors`` (state dict) then ``<stem>.json`` (``meta`` + what load checks), atomically.

    ``model`` may be wrapped (MainLogits, DDP, torch.compile). The sidecar adds ``format_version``,
    ``architecture``, ``num_classes``, ``aux_logits``, ``image_size`` (from ``meta["input"]["size"]`` or the
    model's config), and the weights file's ``sha256`` and ``size``. Returns the sidecar's path. Raises
    :class:`CheckpointError` when ``meta`` cannot be stored as JSON, its ``classes`` disagree with the model,
    or a field :func:`load` checks is invalid (``classes`` not distinct names, unknown ``task``, an
    ``input`` spec or image size out of range); ``meta_sha256`` seals the result. On any error the previous checkpoint at ``stem`` is left as it was.
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
        sidecar = json.loads(json.dumps(sidecar, default=_jsonable))  # what load will see
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"meta cannot be written as JSON ({exc})", stem) from exc
    validate(sidecar, with_suffix(stem, ".json"))  # never write what load would refuse
    sidecar.pop("meta_sha256", None)
    sidecar["meta_sha256"] = meta_digest(sidecar)
    text = json.dumps(sidecar, indent=2) + "\n"
    json_path = commit_stem_pair(stem, "", data, text)
    log.info("saved checkpoint %s (%d classes, %.1f MB)", json_path, num_classes, len(data) / 1e6)
    return json_path


def load(path: Path | str) -> Checkpoint:
    """Load a checkpoint (its stem, ``.json`` or ``.safetensors`` path) into a model in eval mode on the CPU.

    Returns a :class:`Checkpoint`. Raises :class:`CheckpointError` (one line naming the file) for everything
    :func:`read_state_dict` refuses and for weights whose class count or layers disagree with the sidecar.
    Never executes pickled code.
    """
    stem = resolve(path)
    state, meta = read_state_dict(stem)
    st_path = with_suffix(stem, ".safetensors")
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
    model = model_from_state_dict(state, image_size=int(meta["image_size"]), source=st_path)
    model.eval()
    return Checkpoint(model=model, meta=meta, path=stem)


def update_meta(path: Path | str, updates: dict[str, Any], *, drop: tuple[str, ...] = ()) -> Path:
    """Merge ``updates`` into a checkpoint's sidecar (e.g. ``operating_point`` from evaluate, ``calibration``
    from train or ``medclass calibrate``), remove the keys in ``drop``, and seal it again; the weights are not
    touched. The weights are verified against the sidecar first, the result is
    validated like :func:`save`'s, and the sidecar is replaced atomically.

    Returns the sidecar's path. Raises :class:`CheckpointError` for a checkpoint :func:`load` would refuse
    or updates that cannot be stored, and refuses to change what describes the weights (``sha256``,
    ``size``, ``num_classes``, ``classes``, ``architecture``, ``format_version``).
    """
    fixed = {"sha256", "size", "num_classes", "classes", "architecture", "format_version", "meta_sha256"}
    touched = sorted(fixed & (set(updates) | set(drop)))
    if touched:
        raise CheckpointError(f"refusing to change {', '.join(touched)} of a saved checkpoint", path)
    stem = resolve(path)
    weights, json_path = with_suffix(stem, ".safetensors"), with_suffix(stem, ".json")
    meta = read_meta(stem)
    if not weights.is_file() or file_sha256(weights) != meta.get("sha256"):
        raise CheckpointError(
            "sha256 mismatch: the weights file changed after saving; not updating its sidecar", weights
        )
    try:
        kept = {k: v for k, v in meta.items() if k not in drop}
        merged = json.loads(json.dumps({**kept, **updates}, default=_jsonable))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"meta cannot be written as JSON ({exc})", stem) from exc
    merged.pop("meta_sha256", None)
    validate(merged, json_path)
    merged["meta_sha256"] = meta_digest(merged)
    atomic_write_text(json_path, json.dumps(merged, indent=2) + "\n")
    log.info("updated %s (%s)", json_path, ", ".join(sorted(updates)))
    return json_path


__all__ = [
    "FORMAT_VERSION",
    "IMAGE_SIZE_RANGE",
    "MAX_SIDECAR_BYTES",
    "SUPPORTED_FORMAT_VERSIONS",
    "TASKS",
    "Checkpoint",
    "TrainingState",
    "checkpoints_in",
    "commit_pair",
    "file_sha256",
    "load",
    "load_training_state",
    "meta_digest",
    "read_json_capped",
    "read_state_dict",
    "resolve",
    "save",
    "save_training_state",
    "stem_of",
    "update_meta",
]
