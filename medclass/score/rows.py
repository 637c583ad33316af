"""Score rows on disk: the columns, the row key, and the formats (append-only CSV/JSONL logs, parquet).

:class:`RowLog` is one append-only file of rows (override :meth:`RowLog.encode`/:meth:`RowLog.decode` and
:meth:`RowLog.header`): whole batches written at once, flushed and fsynced, a torn last line cut off on
read. :func:`read_scores` reads a finished scores file. How runs use them (resume, parts, the merge):
:mod:`~medclass.score.writer`.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from medclass.errors import ConfigError, DataError, look_up
from medclass.fileio import atomic_write, restore_cell, safe_cell
from medclass.names import GATE_COLUMNS, IN_SCOPE_COLUMN, OOD_SCORE_COLUMN, PROB_PREFIX, SCORE_FORMATS
from medclass.score.inputs import clean_text, item_key

log = logging.getLogger(__name__)

LEADING_COLUMNS = ["path", "frame", "patient", "study_uid", "series_uid"]
SCALE_COLUMN = "probability_scale"  # "calibrated" or "raw" (--no-calibration, or no calibration stored)
TRAILING_COLUMNS = ["predicted", "decision", *GATE_COLUMNS, SCALE_COLUMN, "model_sha256", "error"]


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
FORMATS = SCORE_FORMATS


def write_parquet(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """``rows`` as a parquet file (atomically): prob columns and ``ood_score`` float32, ``frame`` int64,
    ``in_scope`` boolean, the rest strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def typed(c: str) -> Any:
        if c == IN_SCOPE_COLUMN:
            return pa.array([_bool_or_none(r.get(c)) for r in rows], type=pa.bool_())
        if c.startswith(PROB_PREFIX) or c == OOD_SCORE_COLUMN:
            return pa.array([_float_or_none(r.get(c)) for r in rows], type=pa.float32())
        if c == "frame":
            return pa.array([None if r.get(c) in (None, "") else int(r[c]) for r in rows], type=pa.int64())
        return pa.array(["" if r.get(c) is None else str(r.get(c)) for r in rows], type=pa.string())

    table = pa.table({c: typed(c) for c in columns})
    with atomic_write(path, "wb") as fh:
        pq.write_table(table, fh)


def _float_or_none(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def _bool_or_none(value: Any) -> bool | None:
    """``in_scope`` as read back from any log: a bool, or its CSV text ``True``/``False``."""
    if value in (None, ""):
        return None
    return value if isinstance(value, bool) else str(value).lower() == "true"


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
    look_up(FORMATS, fmt, "scores format", path=path)
    raise AssertionError(f"format {fmt!r} is listed in FORMATS but has no reader")
