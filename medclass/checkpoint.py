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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from medclass.errors import CheckpointError, MedclassError
from medclass.fileio import atomic_write_bytes, atomic_write_text
from medclass.model import ARCHITECTURE, model_from_state_dict, unwrap

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")
_REFUSE_PICKLE = "medclass checkpoints are .safetensors + .json; refusing to unpickle"
MAX_SIDECAR_BYTES = 16 << 20  # a real sidecar is a few KB
IMAGE_SIZE_RANGE = (75, 1024)  # Inception V3 needs >= 75 px
TASKS = ("multiclass", "multilabel")
_INPUT_KEYS = {"size", "mean", "std", "interpolation", "model_name"}
_SHA256_HEX = frozenset("0123456789abcdef")


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


def meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of ``meta``'s canonical JSON (sorted keys, no spaces) without its ``meta_sha256`` key."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_json_capped(
    path: Path, what: str, error: type[MedclassError] = CheckpointError, limit: int = MAX_SIDECAR_BYTES
) -> Any:
    """The parsed JSON of ``path``, refused (``error`` naming the file) when it is over ``limit`` bytes
    (checked before reading), not UTF-8, not JSON, or nested too deeply to parse."""
    size = path.stat().st_size
    if size > limit:
        raise error(f"{what} is {size} bytes, over the {limit >> 20} MiB a sidecar may be; refusing it", path)
    with path.open("rb") as fh:
        raw = fh.read(limit + 1)
    if len(raw) > limit:  # grew after the stat
        raise error(f"{what} is over the {limit >> 20} MiB a sidecar may be; refusing it", path)
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise error(f"{what} is not valid JSON (nested too deeply)", path) from None
    except ValueError as exc:  # UnicodeDecodeError is one
        raise error(f"{what} is not valid JSON ({exc})", path) from exc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _check_digest_fields(meta: dict[str, Any], json_path: Path) -> None:
    if not _is_int(meta.get("size")) or meta["size"] < 0:
        raise CheckpointError(f"sidecar key 'size' is {meta.get('size')!r}, not a byte count", json_path)
    sha = meta.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _SHA256_HEX):
        raise CheckpointError(f"sidecar key 'sha256' is {sha!r}, not a sha256 hex digest", json_path)


def _check_image_size(value: Any, key: str, json_path: Path) -> None:
    lo, hi = IMAGE_SIZE_RANGE
    if not _is_int(value) or not lo <= value <= hi:
        raise CheckpointError(f"sidecar key {key!r} is {value!r}, not an integer in [{lo}, {hi}]", json_path)


def _check_input(spec: Any, image_size: int, json_path: Path) -> None:
    if not isinstance(spec, dict):
        raise CheckpointError(f"sidecar key 'input' is {spec!r}, not an input spec object", json_path)
    missing, unknown = {"size"} - spec.keys(), spec.keys() - _INPUT_KEYS
    if missing or unknown:
        raise CheckpointError(
            f"sidecar key 'input' lacks {sorted(missing)} / has unknown {sorted(unknown)}", json_path
        )
    _check_image_size(spec["size"], "input.size", json_path)
    if spec["size"] != image_size:
        raise CheckpointError(
            f"sidecar key 'input.size' ({spec['size']}) differs from 'image_size' ({image_size})", json_path
        )
    for key in ("mean", "std"):
        v = spec.get(key, [1.0, 1.0, 1.0])
        if not (isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)):
            raise CheckpointError(f"sidecar key 'input.{key}' is {v!r}, not 3 numbers", json_path)
    if any(x <= 0 for x in spec.get("std", [1.0])):
        raise CheckpointError(f"sidecar key 'input.std' is {spec['std']!r}; all must be > 0", json_path)
    for key in ("interpolation", "model_name"):
        if key in spec and not (isinstance(spec[key], str) and spec[key]):
            raise CheckpointError(f"sidecar key 'input.{key}' is {spec[key]!r}, not a name", json_path)


def _validate(meta: dict[str, Any], json_path: Path) -> None:
    """Refuse a sidecar whose fields :func:`load` and scoring rely on have the wrong type or range."""
    num_classes: Any = meta.get("num_classes")
    if not _is_int(num_classes) or num_classes < 1:
        raise CheckpointError(f"sidecar key 'num_classes' is {num_classes!r}, not an integer >= 1", json_path)
    _check_image_size(meta.get("image_size"), "image_size", json_path)
    _check_digest_fields(meta, json_path)
    classes = meta.get("classes")
    if classes is not None:
        if not (isinstance(classes, list) and all(isinstance(c, str) and c.strip() for c in classes)):
            raise CheckpointError(f"sidecar key 'classes' is {classes!r}, not a list of names", json_path)
        if len(classes) != num_classes:
            raise CheckpointError(
                f"sidecar key 'classes' lists {len(classes)} names for num_classes {num_classes}", json_path
            )
        if len(set(classes)) != len(classes):
            raise CheckpointError(f"sidecar key 'classes' repeats a name: {classes!r}", json_path)
    if "task" in meta and meta["task"] not in TASKS:
        raise CheckpointError(f"sidecar key 'task' is {meta['task']!r}, not one of {list(TASKS)}", json_path)
    if "input" in meta:
        _check_input(meta["input"], meta["image_size"], json_path)


def _read_sidecar(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise CheckpointError(
            "sidecar .json is missing: the checkpoint is incomplete (interrupted save?) or not a medclass one",
            json_path,
        )
    meta = read_json_capped(json_path, "sidecar")
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
    # required from format_version 1 on (the first release); a later version that drops it must say so here
    recorded = meta.get("meta_sha256")
    if recorded is None:
        raise CheckpointError(
            "sidecar has no meta_sha256: not written by medclass checkpoint.save", json_path
        )
    if recorded != meta_digest(meta):
        raise CheckpointError(
            "sidecar was edited after saving (meta_sha256 mismatch); restore it or save the model again",
            json_path,
        )
    _validate(meta, json_path)
    return meta


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
    doc = read_json_capped(json_path, "training state")
    if not isinstance(doc, dict) or doc.get("format_version") not in SUPPORTED_FORMAT_VERSIONS:
        version = doc.get("format_version") if isinstance(doc, dict) else None
        raise CheckpointError(f"unknown format_version {version!r}", json_path)
    _check_digest_fields(doc, json_path)
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
