"""Manifest rows → model inputs, decoded once and cached.

:class:`CachedDataset` turns the rows of one manifest split into ``(tensor 3×S×S float32, target)``
pairs. Every file is decoded and preprocessed exactly once (in parallel the first time), kept in memory
and, with ``cache="disk"``, also written as one ``.npy`` per row to a cache folder so that the next run
does not decode again. The disk key is the sha256 of (file path, mtime, size, frame, preprocessing
settings, storage dtype): a changed file or setting is simply a cache miss.

A row whose file cannot be decoded is skipped with a warning naming the file and the error and is listed
in :attr:`CachedDataset.errors`; only when *every* row fails is a :class:`~medclass.errors.DataError`
raised. A row whose path leaves the data root is not a bad file but a bad manifest: every row's path is
checked before anything is decoded, and :class:`~medclass.errors.UnsafePathError` refuses the whole
manifest (unless it was loaded with ``allow_outside_root``). Augmentation is not done here: it runs on
batches of cached tensors (``medclass.train.augment``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medclass.errors import ConfigError, DataError, UnsafePathError, look_up, short_message
from medclass.fileio import atomic_write
from medclass.names import CACHE_DTYPES, CACHE_MODES
from medclass.preprocess.rows import (
    DecodeFailure,
    cache_key,
    decode_in_worker,
    decode_row,
    default_workers,
    init_worker,
    preprocess_fingerprint,
)

log = logging.getLogger(__name__)

_TORCH_DTYPES = {name: getattr(torch, name) for name in CACHE_DTYPES}
# Below this many rows to decode, a process pool costs more (start-up, imports) than it saves.
_POOL_MIN_ROWS = 32


class CachedDataset(Dataset):
    """``(x, target)`` pairs for manifest rows: ``x`` is ``3×S×S`` float32, ``target`` a class index
    (``int64`` scalar, multiclass) or a float32 0/1 vector of findings (multilabel).

    ``manifest``: a :class:`medclass.manifest.Manifest`; ``split``: ``train``/``val``/``test`` or None for
    every row (or pass ``rows`` explicitly). ``preprocessor``: ``image -> Prepared`` (a
    :class:`medclass.preprocess.Preprocessor`). ``cache``: ``memory`` (decode once, keep in RAM),
    ``disk`` (the same, plus ``.npy`` files in ``cache_dir`` reused by later runs) or ``none`` (decode on
    every access; a failing file then raises :class:`DataError`). ``dtype``: storage dtype of the cache
    (``float16``/``bfloat16`` halve its memory; items are always returned as float32). ``workers``:
    decoding processes for the first pass (default ``min(2, cpus)``; 0 or 1 decodes in this process).

    Decoding happens in :meth:`load` (called on first use if you do not call it).
    """

    def __init__(
        self,
        manifest: Any,
        split: str | None,
        preprocessor: Callable[[Any], Any],
        *,
        rows: Sequence[Any] | None = None,
        cache: str = "memory",
        cache_dir: str | Path | None = None,
        dtype: str = "float32",
        workers: int | None = None,
        progress: bool = False,
    ) -> None:
        look_up(CACHE_MODES, cache, "cache")
        look_up(_TORCH_DTYPES, dtype, "cache dtype")
        if cache == "disk" and cache_dir is None:
            raise ConfigError("cache='disk' needs a cache_dir")
        self.manifest = manifest
        self.split = split
        self.preprocessor = preprocessor
        self.rows = (
            list(rows) if rows is not None else list(manifest.split(split) if split else manifest.rows)
        )
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.dtype = dtype
        self.workers = default_workers() if workers is None else workers
        self.progress = progress
        self.errors: list[DecodeFailure] = []
        self._store: torch.Tensor | None = None  # N×3×S×S in the storage dtype
        self._valid: list[int] = []  # positions in self.rows that decoded
        self._targets: list[Any] = [manifest.target(r) for r in self.rows]
        self._loaded = False
        self.decoded_ = 0  # files decoded by load() (the rest came from the disk cache)

    # --- public ------------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return str(self.manifest.task)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    def load(self) -> CachedDataset:
        """Decode (or read from the disk cache) every row once; returns ``self``.

        Raises :class:`UnsafePathError` (naming the manifest line) before decoding anything if a row's
        path leaves the data root, and :class:`DataError` if every row failed (the message names the first
        failure).
        """
        if self._loaded:
            return self
        if not self.rows:
            raise DataError(f"split {self.split!r} of the manifest has no rows", self.manifest.path)
        paths = self._resolve_rows()
        if self.cache == "none":
            self._valid = [pos for pos, path in enumerate(paths) if path is not None]
        else:
            self._fill(paths)
        self._loaded = True
        return self

    def __len__(self) -> int:
        self.load()
        return len(self._valid)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.load()
        pos = self._valid[i]
        if self._store is None:  # cache="none"
            row = self.rows[pos]
            x = torch.from_numpy(decode_row(self.manifest.resolve(row), row.frame, self.preprocessor))
        else:
            x = self._store[pos].float()
        return x, self._target_tensor(self._targets[pos])  # 3×S×S, () or (F,)

    def targets(self) -> torch.Tensor:
        """Targets of the kept rows: ``(N,)`` int64 (multiclass) or ``(N, F)`` float32 (multilabel)."""
        self.load()
        return torch.stack([self._target_tensor(self._targets[p]) for p in self._valid])

    def image_ids(self) -> list[str]:
        """``image_id`` of each kept row (``path`` or ``path#frame``)."""
        self.load()
        return [self.rows[p].image_id or self.rows[p].path for p in self._valid]

    def nbytes(self) -> int:
        """Memory held by the cache."""
        return 0 if self._store is None else self._store.numel() * self._store.element_size()

    # --- internals ---------------------------------------------------------------------------------
    def _target_tensor(self, target: Any) -> torch.Tensor:
        if self.task == "multilabel":
            return torch.tensor(target, dtype=torch.float32)
        return torch.tensor(int(target), dtype=torch.int64)

    def _resolve_rows(self) -> list[Path | None]:
        """Every row's file (None for a row skipped as unreadable). Raises :class:`UnsafePathError`."""
        paths: list[Path | None] = []
        for row in self.rows:
            try:
                paths.append(self.manifest.resolve(row))
            except UnsafePathError:
                raise  # a bad manifest, not a bad file: refuse it rather than train on without the row
            except Exception as exc:  # e.g. a symlink loop: skip this row like an unreadable file
                paths.append(None)
                self._fail(row.path, row.frame, short_message(exc, None, typed=True))
        return paths

    def _fill(self, paths: list[Path | None]) -> None:
        fingerprint = preprocess_fingerprint(self.preprocessor)
        keys: dict[int, str] = {}
        todo: list[int] = []
        for pos, (row, path) in enumerate(zip(self.rows, paths, strict=True)):
            if path is None:
                continue
            if self.cache == "disk":
                try:
                    keys[pos] = cache_key(path, row.frame, fingerprint, self.dtype)
                except OSError as exc:
                    self._fail(str(path), row.frame, f"{type(exc).__name__}: {exc.strerror or exc}")
                    continue
                if self._load_cached(pos, keys[pos]):
                    continue
            todo.append(pos)
        hits = len(keys) - len(todo) if self.cache == "disk" else 0
        if hits:
            log.info(
                "%d of %d %s images read from the disk cache %s",
                hits,
                len(self.rows),
                self.split or "",
                self.cache_dir,
            )
        for pos, ok, value in self._decode_all([(pos, str(paths[pos])) for pos in todo]):
            row = self.rows[pos]
            if not ok:
                self._fail(str(paths[pos]), row.frame, value)
                continue
            self.decoded_ += 1
            self._put(pos, value)
            if self.cache == "disk":
                self._save_cached(keys[pos], value)
        self._valid = sorted(self._valid)
        if not self._valid:
            first = self.errors[0] if self.errors else None
            detail = f"; first: {first.path}: {first.error}" if first else ""
            raise DataError(
                f"all {len(self.rows)} images of split {self.split!r} failed to decode{detail}",
                self.manifest.path,
            )
        if self.errors:
            log.warning(
                "%d of %d %s images skipped (unreadable); see the warnings above",
                len(self.errors),
                len(self.rows),
                self.split or "",
            )

    def _fail(self, path: str, frame: int | None, error: str) -> None:
        where = path if frame is None else f"{path} (frame {frame})"
        log.warning("%s: skipped: %s", where, error)
        self.errors.append(DecodeFailure(path, frame, error))

    def _put(self, pos: int, array: np.ndarray) -> None:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self._store is None:
            shape = (len(self.rows), *tensor.shape)
            self._store = torch.empty(shape, dtype=_TORCH_DTYPES[self.dtype])
        if tuple(tensor.shape) != tuple(self._store.shape[1:]):
            row = self.rows[pos]
            self._fail(
                row.path,
                row.frame,
                f"shape {tuple(tensor.shape)} differs from {tuple(self._store.shape[1:])}",
            )
            return
        self._store[pos] = tensor.to(self._store.dtype)
        self._valid.append(pos)

    def _decode_all(self, jobs: list[tuple[int, str]]):
        """Yield ``(pos, ok, array-or-error)`` for every job, with a progress bar when asked."""
        if not jobs:
            return
        bar = _progress(len(jobs), f"decoding {self.split or 'images'}", self.progress)
        try:
            if self.workers <= 1 or len(jobs) < _POOL_MIN_ROWS:
                _init_here = self.preprocessor
                for pos, path in jobs:
                    try:
                        yield pos, True, decode_row(path, self.rows[pos].frame, _init_here)
                    except Exception as exc:
                        yield pos, False, short_message(exc, None, typed=True)
                    bar.update(1)
                return
            ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
            with ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=ctx,
                initializer=init_worker,
                initargs=(self.preprocessor,),
            ) as pool:
                chunk = max(1, min(16, len(jobs) // (4 * self.workers)))
                frames = [self.rows[pos].frame for pos, _ in jobs]
                results = pool.map(decode_in_worker, [p for _, p in jobs], frames, chunksize=chunk)
                for (pos, _), (ok, value) in zip(jobs, results, strict=True):
                    yield pos, ok, value
                    bar.update(1)
        finally:
            bar.close()

    def _npy_path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / key[:2] / f"{key}.npy"

    def _load_cached(self, pos: int, key: str) -> bool:
        path = self._npy_path(key)
        if not path.is_file():
            return False
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable cache entry, decoding again (%s)", path, exc)
            return False
        if self.dtype == "bfloat16":
            array = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).float().numpy()
        self._put(pos, array)
        return True

    def _save_cached(self, key: str, array: np.ndarray) -> None:
        if self.dtype == "bfloat16":
            stored = torch.from_numpy(array).to(torch.bfloat16).view(torch.int16).numpy()
        else:
            stored = array.astype(self.dtype, copy=False)
        try:
            with atomic_write(self._npy_path(key), "wb") as fh:
                np.save(fh, stored, allow_pickle=False)
        except OSError as exc:  # a full disk must not stop training: the memory copy is there
            log.warning("%s: cannot write cache entry (%s)", self._npy_path(key), exc.strerror or exc)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)
