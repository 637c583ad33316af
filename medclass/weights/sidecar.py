"""The checkpoint sidecar (``<stem>.json``): its canonical digest, size-capped reading and validation.

Every field :func:`medclass.checkpoint.load` relies on is type- and range-checked here; ``meta_sha256``
(the sha256 of the sidecar's canonical JSON without that key) catches hand edits. :func:`read_sidecar` is
the one place a checkpoint's sidecar is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from medclass.errors import CheckpointError, MedclassError
from medclass.names import ARCHITECTURE, TASKS

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
MAX_SIDECAR_BYTES = 16 << 20  # a real sidecar is a few KB
IMAGE_SIZE_RANGE = (75, 1024)  # Inception V3 needs >= 75 px
_INPUT_KEYS = {"size", "mean", "std", "interpolation", "model_name"}
_SHA256_HEX = frozenset("0123456789abcdef")


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


def is_int(value: Any) -> bool:
    """True for an ``int`` that is not a ``bool`` (JSON integers)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def check_digest_fields(meta: dict[str, Any], json_path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``meta`` records a byte ``size`` and a ``sha256`` hex digest."""
    if not is_int(meta.get("size")) or meta["size"] < 0:
        raise CheckpointError(f"sidecar key 'size' is {meta.get('size')!r}, not a byte count", json_path)
    sha = meta.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _SHA256_HEX):
        raise CheckpointError(f"sidecar key 'sha256' is {sha!r}, not a sha256 hex digest", json_path)


def _check_image_size(value: Any, key: str, json_path: Path) -> None:
    lo, hi = IMAGE_SIZE_RANGE
    if not is_int(value) or not lo <= value <= hi:
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


def validate(meta: dict[str, Any], json_path: Path) -> None:
    """Refuse a sidecar whose fields :func:`load` and scoring rely on have the wrong type or range."""
    num_classes: Any = meta.get("num_classes")
    if not is_int(num_classes) or num_classes < 1:
        raise CheckpointError(f"sidecar key 'num_classes' is {num_classes!r}, not an integer >= 1", json_path)
    _check_image_size(meta.get("image_size"), "image_size", json_path)
    check_digest_fields(meta, json_path)
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
    positive = meta.get("positive_class")
    if positive is not None and not (isinstance(classes, list) and positive in classes):
        raise CheckpointError(
            f"sidecar key 'positive_class' is {positive!r}, not one of the classes", json_path
        )
    if "task" in meta and meta["task"] not in TASKS:
        raise CheckpointError(f"sidecar key 'task' is {meta['task']!r}, not one of {list(TASKS)}", json_path)
    if "input" in meta:
        _check_input(meta["input"], meta["image_size"], json_path)
    if "calibration" in meta:  # optional: checkpoints from before calibration have none
        from medclass.calibrate import check

        problem = check(meta["calibration"], num_classes, str(meta.get("task", "multiclass")))
        if problem:
            raise CheckpointError(f"sidecar key 'calibration': {problem}", json_path)
    gate = meta.get("gate_profile")  # the input gate's training-data profile (medclass.gate); optional
    if gate is not None and not (isinstance(gate, dict) and is_int(gate.get("version"))):
        raise CheckpointError("sidecar key 'gate_profile' is not a versioned profile object", json_path)


def read_sidecar(json_path: Path) -> dict[str, Any]:
    """The validated sidecar at ``json_path``.

    Raises :class:`CheckpointError` naming the file when it is missing, over :data:`MAX_SIDECAR_BYTES`, not
    a JSON object, of an unknown ``format_version`` or architecture, edited after saving (``meta_sha256``),
    or when a field fails :func:`validate`.
    """
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
    validate(meta, json_path)
    return meta
