"""A checkpoint's two files as one unit: ``<stem><kind>.safetensors`` + ``<stem><kind>.json``.

:func:`commit_pair` replaces a pair so that a crash at any moment leaves a complete one (the new pair, or
the previous one kept as ``<stem><kind>.prev.*``); :func:`read_pair` returns a verified pair, falling back
to the ``.prev`` pair an interrupted save left behind. Used for model checkpoints, training state
(:mod:`medclass.checkpoint.state`) and ONNX exports (:mod:`medclass.export`). Nothing here knows the model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medclass.errors import CheckpointError
from medclass.fileio import atomic_write_bytes, atomic_write_text
from medclass.weights.sidecar import is_int, read_json_capped

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")
_REFUSE_PICKLE = "medclass checkpoints are .safetensors + .json; refusing to unpickle"


def with_suffix(stem: Path, suffix: str) -> Path:
    """``stem`` with ``suffix`` appended to its name (``best`` → ``best.json``; dots in the name are kept)."""
    return stem.parent / (stem.name + suffix)


def stem_of(path: Path | str) -> Path:
    """The checkpoint stem for a stem, ``.json`` or ``.safetensors`` path.

    Raises :class:`CheckpointError` for pickle-style files (``.pt``, ``.pth``, ``.ckpt``...).
    """
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        return path.with_suffix("")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(_REFUSE_PICKLE, path)
    if path.is_file():  # a bare file that is not ours: a pickle/zip in disguise or something else
        with path.open("rb") as fh:
            head = fh.read(2)
        if head[:1] == b"\x80" or head == b"PK":
            raise CheckpointError(_REFUSE_PICKLE, path)
        raise CheckpointError("not a medclass checkpoint (expected <stem>.safetensors + <stem>.json)", path)
    return path


def checkpoints_in(folder: Path) -> list[str]:
    """The checkpoint stems in ``folder`` (names with both ``.safetensors`` and ``.json``; backups and
    training states left out), ``best`` and ``last`` first."""
    if not folder.is_dir():
        return []
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return []
    stems = {
        n.removesuffix(".json")
        for n in names
        if n.endswith(".json") and n.removesuffix(".json") + ".safetensors" in names
    }
    stems = {s for s in stems if not s.endswith((".prev", ".state", ".state.prev"))}
    return sorted(stems, key=lambda s: (s not in ("best", "last"), s != "best", s))


def _nothing_at(path: Path, folder: Path) -> CheckpointError:
    found = checkpoints_in(folder)
    if found:
        there = f"{folder} has: {', '.join(found)}"
    elif folder.is_dir():
        there = f"{folder} holds no checkpoint (<stem>.safetensors + <stem>.json)"
    else:
        there = f"folder {folder} does not exist"
    return CheckpointError(f"no checkpoint at {path}; {there}")


def resolve(path: Path | str) -> Path:
    """The stem of an existing checkpoint named by ``path``: a stem, its ``.json`` or ``.safetensors``, or a
    run folder (taken as ``RUN/best``, logged).

    Raises :class:`CheckpointError` "no checkpoint at X" listing the checkpoints beside it (``best``,
    ``last``...) when nothing is there, and refuses pickle files as :func:`stem_of` does.
    """
    path = Path(path)
    if path.is_dir() and path.suffix != ".safetensors":
        best = path / "best"
        if with_suffix(best, ".json").is_file() or with_suffix(best, ".safetensors").exists():
            log.info("%s is a run folder; using its checkpoint %s", path, best)
            return best
        raise _nothing_at(path, path)
    if path.suffix.lower() in PICKLE_SUFFIXES and not path.exists():
        raise _nothing_at(path, path.parent)
    stem = stem_of(path)
    if not (with_suffix(stem, ".json").exists() or with_suffix(stem, ".safetensors").exists()):
        raise _nothing_at(path, stem.parent)
    return stem


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
    if not is_int(expected):
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
def pair_paths(stem: Path, kind: str) -> tuple[Path, Path]:
    """``(<stem><kind>.safetensors, <stem><kind>.json)``."""
    return with_suffix(stem, f"{kind}.safetensors"), with_suffix(stem, f"{kind}.json")


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


def commit_stem_pair(stem: Path, kind: str, data: bytes, text: str) -> Path:
    """:func:`commit_pair` for ``<stem><kind>.safetensors`` + ``.json``, backup ``<stem><kind>.prev.*``.
    Returns the sidecar path."""
    weights, sidecar = pair_paths(stem, kind)
    commit_pair(weights, data, sidecar, text, pair_paths(stem, f"{kind}.prev"))
    return sidecar


def read_pair(
    stem: Path, kind: str, read_sidecar: Callable[[Path], dict[str, Any]]
) -> tuple[dict[str, Any], bytes, Path]:
    """The verified ``(sidecar, weights bytes, weights path)`` of a pair, falling back to the ``.prev`` pair
    an interrupted save left behind. Raises :class:`CheckpointError` when neither verifies."""
    weights, sidecar = pair_paths(stem, kind)
    meta = read_sidecar(sidecar)
    try:
        return meta, _verified_bytes(weights, meta), weights
    except CheckpointError as exc:
        prev_w, prev_j = pair_paths(stem, f"{kind}.prev")
        if not (prev_w.is_file() and prev_j.is_file()):
            raise
        prev_meta = read_sidecar(prev_j)
        data = _verified_bytes(prev_w, prev_meta)
        log.warning("%s (an interrupted save); loading the previous checkpoint %s instead", exc, prev_j)
        return prev_meta, data, prev_w
