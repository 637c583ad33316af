"""One manifest row → one model input: decoded, preprocessed and checked, in this process or a worker.

:func:`decode_row` is what :class:`~medclass.preprocess.dataset.CachedDataset` runs for every row (in a
process pool the first time: the worker functions here are module-level so that they pickle);
:func:`cache_key` names a row's entry in the disk cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclass.errors import DataError, short_message


@dataclass(frozen=True)
class DecodeFailure:
    """A row that was skipped: its file and the one-line error."""

    path: str
    frame: int | None
    error: str


def default_workers() -> int:
    """Decoding processes for the first pass: ``min(2, cpus)``."""
    return max(1, min(2, os.cpu_count() or 1))


def preprocess_fingerprint(preprocessor: Any) -> dict[str, Any]:
    """The settings of ``preprocessor`` that change its output, as plain JSON-able data."""
    out: dict[str, Any] = {"type": type(preprocessor).__qualname__}
    for name in ("spec", "window", "fit"):
        if hasattr(preprocessor, name):
            out[name] = _plain(getattr(preprocessor, name))
    if len(out) == 1:  # unknown callable: fall back on its attributes
        out["attrs"] = _plain(getattr(preprocessor, "__dict__", repr(preprocessor)))
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)


def cache_key(path: Path, frame: int | None, fingerprint: dict[str, Any], dtype: str) -> str:
    """sha256 of (absolute path, mtime, size, frame, preprocessing settings, storage dtype).

    Raises ``OSError`` when the file cannot be stat'ed.
    """
    st = path.stat()
    doc = {
        "path": str(path.resolve()),
        "mtime_ns": st.st_mtime_ns,
        "size": st.st_size,
        "frame": frame,
        "prep": fingerprint,
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# --- decoding (runs in worker processes too: module-level, picklable) --------------------------------
_WORKER_PREPROCESSOR: Any = None


def init_worker(preprocessor: Any) -> None:
    """Process-pool initializer: keep ``preprocessor`` for :func:`decode_in_worker`, one torch thread."""
    global _WORKER_PREPROCESSOR
    _WORKER_PREPROCESSOR = preprocessor
    torch.set_num_threads(1)


def decode_row(path: str | Path, frame: int | None, preprocessor: Callable[[Any], Any]) -> np.ndarray:
    """Read one image (one frame when ``frame`` is set) and preprocess it → ``3×S×S`` float32 array.

    Raises whatever :mod:`medclass.ingest` or the preprocessor raise.
    """
    from medclass import ingest

    if frame is None:
        image = ingest.read(Path(path), slice_policy="middle")[0]
    else:
        image = ingest.read_frame(Path(path), frame)
    prepared = preprocessor(image)
    array = getattr(prepared, "array", prepared)
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] != 3:
        raise DataError(f"preprocessing gave shape {array.shape}, expected 3×S×S", path)
    if not np.isfinite(array).all():
        raise DataError("preprocessed image holds NaN or Inf values", path)
    return array


def decode_in_worker(path: str, frame: int | None) -> tuple[bool, Any]:
    """``(True, array)`` or ``(False, one-line error)`` for one row, with the worker's preprocessor."""
    try:
        return True, decode_row(path, frame, _WORKER_PREPROCESSOR)
    except Exception as exc:  # reported as a skipped row, never crashes the run
        return False, short_message(exc, None, typed=True)
