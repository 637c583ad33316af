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

For an exact resume, :func:`save_training_state` (in :mod:`medclass.checkpoint.state`, re-exported here)
writes the optimizer, scheduler, grad scaler and RNG states as ``<stem>.state.safetensors`` (tensors) +
``<stem>.state.json`` (everything else).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from medclass.checkpoint.sidecar import (
    FORMAT_VERSION,
    IMAGE_SIZE_RANGE,
    MAX_SIDECAR_BYTES,
    SUPPORTED_FORMAT_VERSIONS,
    TASKS,
    _is_int,
    _read_sidecar,
    _validate,
    meta_digest,
    read_json_capped,
)
from medclass.errors import CheckpointError
from medclass.fileio import atomic_write_bytes, atomic_write_text
from medclass.model import ARCHITECTURE, model_from_state_dict, unwrap

log = logging.getLogger(__name__)

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
    _validate(sidecar, _with_suffix(stem, ".json"))  # never write what load would refuse
    sidecar.pop("meta_sha256", None)
    sidecar["meta_sha256"] = meta_digest(sidecar)
    text = json.dumps(sidecar, indent=2) + "\n"
    json_path = _commit_pair(stem, "", data, text)
    log.info("saved checkpoint %s (%d classes, %.1f MB)", json_path, num_classes, len(data) / 1e6)
    return json_path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verified_bytes(st_path: Path, meta: dict[str, Any]) -> bytes:
    if not st_path.is_file():
        raise CheckpointError(
            "weights file is missing (the .json sidecar has no .safetensors beside it)", st_path
        )
    expected = meta.get("size")
    if not _is_int(expected):
        raise CheckpointError(f"the sidecar records no byte size ({expected!r})", st_path)
    actual = st_path.stat().st_size
    if actual != expected:  # refused from stat(), before reading anything
        raise CheckpointError(
            f"truncated or replaced: {actual} bytes, the sidecar recorded {expected}", st_path
        )
    with st_path.open("rb") as fh:
        data = fh.read(expected + 1)
    if len(data) != expected:
        raise CheckpointError(
            f"truncated or replaced while reading: {len(data)} bytes, the sidecar recorded {expected}",
            st_path,
        )
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(
            "sha256 mismatch: the weights file changed after saving (tampered, corrupt, or an interrupted save)",
            st_path,
        )
    return data


# --- the pair (weights + sidecar) as one unit ------------------------------------------------------------
def _pair(stem: Path, kind: str) -> tuple[Path, Path]:
    return _with_suffix(stem, f"{kind}.safetensors"), _with_suffix(stem, f"{kind}.json")


def _pair_is_consistent(data_path: Path, sidecar: Path, digest_key: str = "sha256") -> bool:
    try:
        doc = read_json_capped(sidecar, "sidecar")
        return isinstance(doc, dict) and file_sha256(data_path) == doc.get(digest_key)
    except (OSError, CheckpointError):
        return False


def commit_pair(
    data_path: Path,
    data: bytes,
    sidecar: Path,
    text: str,
    prev: tuple[Path, Path],
    *,
    digest_key: str = "sha256",
) -> None:
    """Replace ``data_path`` + its ``sidecar`` (whose ``digest_key`` holds the sha256 of ``data_path``) so that
    a crash at any moment leaves a complete pair: the new one, or the current one kept as ``prev``.

    The current pair, if consistent, is first hard-linked (copied where links are not supported) to
    ``prev = (prev_data, prev_sidecar)``; the data then the sidecar are replaced atomically; the backup is
    removed once both are in place. Used for checkpoints and for exports (:mod:`medclass.export`).
    """
    prev_data, prev_sidecar = prev
    if data_path.is_file() and sidecar.is_file() and _pair_is_consistent(data_path, sidecar, digest_key):
        for src, dst in ((data_path, prev_data), (sidecar, prev_sidecar)):
            tmp = dst.with_name(dst.name + ".tmp")
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:  # file systems without hard links
                shutil.copy2(src, tmp)
            os.replace(tmp, dst)
    atomic_write_bytes(data_path, data)
    atomic_write_text(sidecar, text)
    prev_sidecar.unlink(missing_ok=True)
    prev_data.unlink(missing_ok=True)


def _commit_pair(stem: Path, kind: str, data: bytes, text: str) -> Path:
    """:func:`commit_pair` for ``<stem><kind>.safetensors`` + ``.json``, backup ``<stem><kind>.prev.*``.
    Returns the sidecar path."""
    weights, sidecar = _pair(stem, kind)
    commit_pair(weights, data, sidecar, text, _pair(stem, f"{kind}.prev"))
    return sidecar


def _read_pair(
    stem: Path, kind: str, read_sidecar: Callable[[Path], dict[str, Any]]
) -> tuple[dict[str, Any], bytes, Path]:
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


# the training state for an exact resume (re-exported: same public names)
from medclass.checkpoint.state import TrainingState, load_training_state, save_training_state  # noqa: E402

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_SIZE_RANGE",
    "MAX_SIDECAR_BYTES",
    "SUPPORTED_FORMAT_VERSIONS",
    "TASKS",
    "Checkpoint",
    "TrainingState",
    "commit_pair",
    "file_sha256",
    "load",
    "load_training_state",
    "meta_digest",
    "read_json_capped",
    "read_state_dict",
    "save",
    "save_training_state",
    "stem_of",
]
