"""Writing files so that a crash never leaves a half-written file where a good one was.

Every file medclass writes goes through :func:`atomic_write` (temporary file in the same folder, fsync,
rename) or, for row streams, :class:`AppendLog` (append a whole batch, flush, fsync: a torn last line
is detected and dropped on the next open).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def current_umask() -> int:
    """The process's umask (read from /proc on Linux; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", *, private: bool = False, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    The file gets the permissions a plain ``open`` would (0666 minus the umask); ``private`` files (those
    that may carry PHI: DICOM outputs, ``--include-phi`` reports) stay 0600, owner only.
    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # an overwrite: a killed earlier writer may have left its temporary here
        _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        if not private:  # mkstemp creates 0600
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _remove_stale_temps(path: Path) -> None:
    """Remove temporary files of ``path`` left by writers that were killed (their process is gone).

    Temporary names carry the writer's pid (``.NAME.PID.XXXX.tmp``); one whose pid is alive, or that
    cannot be parsed, is left alone.
    """
    prefix = f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid_text = name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        except OSError:  # alive under another user, or not ours to judge
            continue


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, private: bool = False) -> None:
    with atomic_write(path, "wb", private=private) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, private: bool = False) -> None:
    with atomic_write(path, "w", private=private, encoding="utf-8", newline="") as fh:
        fh.write(text)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def safe_cell(value: Any) -> Any:
    """Neutralise a CSV cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``).

    Numbers are left alone (``-0.5`` is a number, not a formula); strings get a leading apostrophe.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def restore_cell(value: str) -> str:
    """Undo :func:`safe_cell` on a cell read back from a CSV medclass wrote (``"'=x"`` → ``"=x"``).

    Only an apostrophe followed by a formula character is removed, so a value that really starts with
    an apostrophe and a letter is kept as it is.
    """
    if len(value) > 1 and value[0] == "'" and value[1:].startswith(_FORMULA_START):
        return value[1:]
    return value


def write_csv(
    path: str | os.PathLike[str], rows: list[dict[str, Any]], fieldnames: list[str], *, private: bool = False
) -> None:
    """Write ``rows`` atomically as CSV with formula-injection-safe cells (the header line too); ``private``
    as in :func:`atomic_write`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="ignore", lineterminator="\n")
    writer.writerow({k: safe_cell(k) for k in fieldnames})
    for row in rows:
        writer.writerow({k: safe_cell(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue(), private=private)
