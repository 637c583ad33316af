"""Score rows on disk, exactly once: append-only row logs committed batch by batch, resumable after a kill.

Why an append log and not numbered part files: the output is one file the user can watch grow, a commit
costs one ``write`` + ``fsync`` per batch whatever the run's length, and resuming needs only the keys of
the rows already there. Every row is one line (cells are cleaned of CR/LF), written whole batches at a
time, flushed and fsynced; so after a SIGKILL at any moment the file holds complete rows plus at most one
torn last line (no trailing newline). :meth:`~medclass.score.rows.RowLog.read` with ``repair`` truncates that torn tail; the
rows before it are done and their keys (``path#frame``) are skipped on ``--resume``. Rows of a batch are
independent, so a batch cut half-way leaves its first rows done and the rest to score: never twice.

Files (see :class:`ScoreOutput`): the local engine appends to the output itself (``csv``/``jsonl``);
``parquet`` (not appendable) is logged as ``<out>.partial.jsonl`` and converted at the end. An engine that
retries work (Ray: at-least-once) writes through a :class:`PartSink` instead: one file per input block,
``<out>.parts/part-<block id>.jsonl``, written atomically under a name that depends only on the block's
keys, so a retried block replaces its own part and never adds a second copy. :meth:`ScoreOutput.finalize`
merges the output and every part into ``<out>`` atomically, in input order, keeps one row per key, checks
that every input has its row, then removes the parts. Resume reads the output and every part, so a run
may be resumed with the other engine. A second writer on the same file is refused (``flock``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medclass.errors import ConfigError, EngineError, look_up
from medclass.fileio import atomic_write_text
from medclass.score.rows import (
    FORMATS,
    LEADING_COLUMNS,
    LOGS,
    PROB_PREFIX,
    SCALE_COLUMN,
    TRAILING_COLUMNS,
    CsvLog,
    JsonlLog,
    RowLog,
    read_scores,
    row_key,
    score_columns,
    write_parquet,
)

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "LEADING_COLUMNS",
    "LOGS",
    "PROB_PREFIX",
    "TRAILING_COLUMNS",
    "CsvLog",
    "JsonlLog",
    "PartSink",
    "RowLog",
    "ScoreOutput",
    "block_id",
    "read_scores",
    "row_key",
    "score_columns",
]

PARTS_SUFFIX = ".parts"


def block_id(keys: Sequence[str]) -> str:
    """The name of the input block holding ``keys`` (in order): the same keys give the same name in every
    run and every retry, other keys another name (sha256, 20 hex digits)."""
    digest = hashlib.sha256("\n".join(keys).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:20]


class PartSink:
    """The idempotent sink of an at-least-once engine: :meth:`write` puts one block's rows into
    ``<out>.parts/part-<block>.jsonl`` atomically (temporary file, fsync, rename), so writing a block twice
    (a retried task) leaves one copy. Picklable: it is sent to the workers that write the parts.
    """

    def __init__(self, out: Path | str, columns: list[str]) -> None:
        self.folder = Path(out).with_name(Path(out).name + PARTS_SUFFIX)
        self.columns = columns

    def path(self, block: str) -> Path:
        return self.folder / f"part-{block}.jsonl"

    def write(self, block: str, rows: Iterable[dict[str, Any]]) -> Path:
        """Commit ``rows`` as the part of ``block``; returns its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        encode = JsonlLog(self.path(block), self.columns).encode
        target = self.path(block)
        atomic_write_text(target, "".join(encode(r) for r in rows))
        return target


class ScoreOutput:
    """The files of one scoring run writing ``out`` as ``fmt``.

    Use: :meth:`check` (refuse to clobber), :meth:`clear` (``--overwrite``), :meth:`done_rows` (what is
    already scored; repairs the row log), then :meth:`open` / :meth:`append` / :meth:`close` (the local
    engine) or the parts of :meth:`sink` (an engine that retries), then :meth:`finalize`.
    """

    def __init__(self, out: Path | str, fmt: str, columns: list[str]) -> None:
        look_up(FORMATS, fmt, "output format")
        if fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "--format parquet needs pyarrow: pip install pyarrow (or use csv/jsonl)"
                ) from None
        self.out = Path(out)
        self.format = fmt
        self.columns = columns
        log_fmt = fmt if fmt in LOGS else "jsonl"
        log_path = self.out if fmt in LOGS else self.out.with_name(f"{self.out.name}.partial.jsonl")
        self.log = LOGS[log_fmt](log_path, columns)

    def sink(self) -> PartSink:
        """The idempotent block sink for an engine that may run a block twice (see :class:`PartSink`)."""
        return PartSink(self.out, self.columns)

    # --- the files -----------------------------------------------------------------------------------
    def part_paths(self) -> list[Path]:
        """Row files of this output other than the output itself (the parquet staging log, block parts)."""
        staging = self.out.with_name(self.out.name + ".partial.jsonl")
        parts = self.sink().folder
        found = [staging] if staging.is_file() else []
        if parts.is_dir():
            found.extend(sorted(p for p in parts.iterdir() if p.name.endswith(".jsonl")))
        return found

    def _part_log(self, path: Path) -> RowLog:
        return JsonlLog(path, self.columns)

    def existing(self) -> list[Path]:
        """The output and its part files that exist now."""
        return ([self.out] if self.out.exists() else []) + self.part_paths()

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse to silently overwrite: raise :class:`ConfigError` when files exist and neither flag is set."""
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pick one")
        found = self.existing()
        if found and not (resume or overwrite):
            raise ConfigError(
                f"exists ({len(found)} file(s)); pass --resume to continue it or --overwrite to start over",
                found[0],
            )

    def clear(self) -> None:
        """Remove the output and its parts (``--overwrite``)."""
        for p in self.existing():
            p.unlink()
        self._remove_parts_folder()

    def _remove_parts_folder(self) -> None:
        folder = self.sink().folder
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    # --- resume --------------------------------------------------------------------------------------
    def _read(self, path: Path) -> list[dict[str, Any]]:
        if path == self.log.path:
            return self.log.read(repair=True)
        if path == self.out:
            return read_scores(path, self.format)
        return self._part_log(path).read(repair=False)

    def done_rows(
        self, model_sha256: str | None = None, scale: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Rows already written (output + every part), by key; a torn tail of the row log is cut off.

        Raises :class:`ConfigError` when they were scored by another model than ``model_sha256`` or on
        another probability scale than ``scale`` (calibrated vs raw: one file never mixes the two; rows
        written before the column existed carry none and are accepted).
        """
        done: dict[str, dict[str, Any]] = {}
        for path in [
            *self.existing(),
            *([self.log.path] if self.log.path.exists() and self.log.path not in self.existing() else []),
        ]:
            for row in self._read(path):
                done.setdefault(row_key(row), row)
        if model_sha256:
            other = {str(r.get("model_sha256")) for r in done.values()} - {model_sha256, ""}
            if other:
                raise ConfigError(
                    f"was scored with another model (weights sha256 {sorted(other)[0][:12]}…, this one "
                    f"{model_sha256[:12]}…); use another --out or --overwrite",
                    self.out,
                )
        if scale:
            scales = {str(r.get(SCALE_COLUMN) or "") for r in done.values()} - {scale, "", "None"}
            if scales:
                raise ConfigError(
                    f"holds {sorted(scales)[0]} probabilities and this run gives {scale} ones "
                    f"({'--no-calibration given' if scale == 'raw' else 'without --no-calibration'}); "
                    "resume with the same setting, or use another --out or --overwrite",
                    self.out,
                )
        return done

    # --- writing -------------------------------------------------------------------------------------
    def open(self) -> None:
        self.log.open()

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        self.log.append(rows)

    def close(self) -> None:
        self.log.close()

    def finalize(self, order: Sequence[str]) -> list[dict[str, Any]]:
        """Merge parts into the output (atomically, rows in the order of the keys ``order``, each key once),
        check that every key of ``order`` has its row, remove the parts, and return the output's rows.
        The local engine writing csv/jsonl has nothing to merge unless parts of an earlier run are there.

        Raises :class:`~medclass.errors.EngineError` (parts kept, nothing replaced) when an input has no row.
        """
        parts = self.part_paths()
        if self.log.path == self.out and not parts:
            rows = read_scores(self.out, self.format) if self.out.exists() else []
            self._check_complete(order, {row_key(r) for r in rows})
            return rows
        rows = []
        if self.out.exists():
            rows.extend(read_scores(self.out, self.format))
        for p in parts:
            rows.extend(self._part_log(p).read(repair=False))
        position = {k: i for i, k in enumerate(order)}
        merged: dict[str, dict[str, Any]] = {}
        for row in rows:
            merged.setdefault(row_key(row), row)
        if len(merged) != len(rows):
            log.warning(
                "%s: %d duplicate row(s) dropped while merging parts", self.out, len(rows) - len(merged)
            )
        self._check_complete(order, set(merged))
        ordered = sorted(merged.values(), key=lambda r: position.get(row_key(r), len(position)))
        self._write_final(ordered)
        for p in parts:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self._remove_parts_folder()
        return ordered

    def _check_complete(self, order: Sequence[str], have: set[str]) -> None:
        missing = [k for k in order if k not in have]
        if missing:
            raise EngineError(
                f"{len(missing)} of {len(order)} inputs have no row after the merge (first: {missing[0]}); "
                "the parts are kept: run the same command again with --resume",
                self.out,
            )

    def _write_final(self, rows: list[dict[str, Any]]) -> None:
        if self.format == "parquet":
            write_parquet(self.out, rows, self.columns)
            return
        fmt_log = LOGS[self.format](self.out, self.columns)
        atomic_write_text(self.out, fmt_log.header() + "".join(fmt_log.encode(r) for r in rows))
