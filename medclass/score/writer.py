"""Score rows on disk, exactly once: append-only row logs committed batch by batch, resumable after a kill.

Why an append log and not numbered part files: the output is one file the user can watch grow, a commit
costs one ``write`` + ``fsync`` per batch whatever the run's length, and resuming needs only the keys of
the rows already there. Every row is one line (cells are cleaned of CR/LF), written whole batches at a
time, flushed and fsynced; so after a SIGKILL at any moment the file holds complete rows plus at most one
torn last line (no trailing newline). :meth:`RowLog.read` with ``repair`` truncates that torn tail; the
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
import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from medclass.errors import ConfigError, DataError, EngineError
from medclass.fileio import atomic_write, atomic_write_text, restore_cell, safe_cell
from medclass.score.inputs import clean_text, item_key

log = logging.getLogger(__name__)

LEADING_COLUMNS = ["path", "frame", "patient", "study_uid", "series_uid"]
TRAILING_COLUMNS = ["predicted", "decision", "model_sha256", "error"]
PROB_PREFIX = "prob:"


def score_columns(classes: Sequence[str]) -> list[str]:
    """The columns of a scores file for ``classes``, in order."""
    return [*LEADING_COLUMNS, *(f"{PROB_PREFIX}{c}" for c in classes), *TRAILING_COLUMNS]


def row_key(row: dict[str, Any]) -> str:
    """The stable key of a written row (``path#frame``)."""
    return item_key(str(row.get("path", "")), row.get("frame"))


class RowLog:
    """An append-only file of score rows (override :meth:`encode`/:meth:`decode`, and :meth:`header`)."""

    format = ""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = Path(path)
        self.columns = columns
        self._fh: IO[str] | None = None

    # --- the format ------------------------------------------------------------------------------
    def header(self) -> str:
        return ""

    def encode(self, row: dict[str, Any]) -> str:
        raise NotImplementedError

    def decode(self, line: str) -> dict[str, Any]:
        raise NotImplementedError

    def _check_header(self, line: str) -> None:
        pass

    # --- reading ---------------------------------------------------------------------------------
    def read(self, *, repair: bool = False) -> list[dict[str, Any]]:
        """The complete rows in the file ([] when it does not exist).

        A torn last line (no newline: the writer was killed mid-write) is ignored, and with ``repair``
        cut off the file. Raises :class:`ConfigError` when the file has other columns than this run
        would write, and :class:`DataError` for a complete line that does not parse.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning(
                "%s: dropping a torn last line (%d bytes) left by an interrupted run",
                self.path,
                len(data) - end,
            )
            if repair:
                with open(self.path, "r+b") as fh:
                    fh.truncate(end)
                    fh.flush()
                    os.fsync(fh.fileno())
        lines = data[:end].decode("utf-8").splitlines()
        if self.header():
            if not lines:
                return []
            self._check_header(lines[0])
            lines = lines[1:]
        rows = []
        for n, line in enumerate(lines, start=2 if self.header() else 1):
            try:
                rows.append(self.decode(line))
            except (ValueError, TypeError) as exc:
                raise DataError(
                    f"line {n} is not a valid {self.format} row ({exc}); move the file away", self.path
                ) from exc
        return rows

    # --- writing ---------------------------------------------------------------------------------
    def open(self) -> None:
        """Open for appending (creating it with its header); refuse a file another process is writing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (kept open across batches)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ConfigError(
                "another medclass score is writing this file; wait for it or use another --out", self.path
            ) from None
        self._fh = fh
        if fh.tell() == 0 and self.header():
            self._commit(self.header())

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append ``rows`` as one write, flush and fsync (the batch is committed when this returns)."""
        text = "".join(self.encode(r) for r in rows)
        if text:
            self._commit(text)

    def _commit(self, text: str) -> None:
        assert self._fh is not None, "RowLog.open() first"
        self._fh.write(text)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class CsvLog(RowLog):
    """CSV with a header line; cells are formula-safe (:func:`~medclass.fileio.safe_cell`) and one-line."""

    format = "csv"

    def _line(self, values: Iterable[Any]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue()

    def header(self) -> str:
        return self._line(self.columns)

    def _check_header(self, line: str) -> None:
        found = next(csv.reader([line]))
        if found != self.columns:
            raise ConfigError(
                f"has columns {','.join(found)} but this checkpoint writes {','.join(self.columns)}; "
                "use another --out (or --overwrite)",
                self.path,
            )

    def encode(self, row: dict[str, Any]) -> str:
        cells = []
        for c in self.columns:
            v = row.get(c, "")
            v = "" if v is None else v
            cells.append(safe_cell(clean_text(v)) if isinstance(v, str) else v)
        return self._line(cells)

    def decode(self, line: str) -> dict[str, Any]:
        values = next(csv.reader([line]))
        if len(values) != len(self.columns):
            raise ValueError(f"{len(values)} cells for {len(self.columns)} columns")
        return {c: restore_cell(v) for c, v in zip(self.columns, values, strict=True)}


class JsonlLog(RowLog):
    """One JSON object per line (numbers stay numbers, ``frame`` null for an unopenable file)."""

    format = "jsonl"

    def encode(self, row: dict[str, Any]) -> str:
        clean = {
            c: (clean_text(v) if isinstance(v, str) else v)
            for c, v in ((c, row.get(c)) for c in self.columns)
        }
        return json.dumps(clean, ensure_ascii=False, allow_nan=True) + "\n"

    def decode(self, line: str) -> dict[str, Any]:
        row = json.loads(line)
        if not isinstance(row, dict):
            raise ValueError("not a JSON object")
        return row


LOGS: dict[str, type[RowLog]] = {"csv": CsvLog, "jsonl": JsonlLog}
FORMATS = ("csv", "jsonl", "parquet")


def _write_parquet(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def typed(c: str) -> Any:
        if c.startswith(PROB_PREFIX):
            return pa.array([_float_or_none(r.get(c)) for r in rows], type=pa.float32())
        if c == "frame":
            return pa.array([None if r.get(c) in (None, "") else int(r[c]) for r in rows], type=pa.int64())
        return pa.array(["" if r.get(c) is None else str(r.get(c)) for r in rows], type=pa.string())

    table = pa.table({c: typed(c) for c in columns})
    with atomic_write(path, "wb") as fh:
        pq.write_table(table, fh)


def _float_or_none(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def read_scores(path: Path | str, fmt: str | None = None) -> list[dict[str, Any]]:
    """The rows of a finished scores file (``csv``, ``jsonl`` or ``parquet``, from the suffix by default).

    CSV cells come back as strings. Raises :class:`ConfigError` for an unknown format.
    """
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as fh:
            return [{k: restore_cell(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    if fmt == "jsonl":
        return JsonlLog(path, []).read()
    raise ConfigError(f"unknown scores format {fmt!r}; valid: {', '.join(FORMATS)}", path)


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
        if fmt not in FORMATS:
            raise ConfigError(f"unknown output format {fmt!r}; valid: {', '.join(FORMATS)}")
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

    def done_rows(self, model_sha256: str | None = None) -> dict[str, dict[str, Any]]:
        """Rows already written (output + every part), by key; a torn tail of the row log is cut off.

        Raises :class:`ConfigError` when they were scored by another model than ``model_sha256``.
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
            _write_parquet(self.out, rows, self.columns)
            return
        fmt_log = LOGS[self.format](self.out, self.columns)
        atomic_write_text(self.out, fmt_log.header() + "".join(fmt_log.encode(r) for r in rows))
