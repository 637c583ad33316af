"""``medclass inspect PATH...``: what is in these files and folders, and what will fail to load."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from medclass.cli import ExitCode

log = logging.getLogger(__name__)

HELP = "list images found in files/folders with modality, size, value range and window; report failures"
DESCRIPTION = """\
Walk files and folders (recursively; DICOM is recognised by content, extension or not), group
single-frame CT/MR/PT slices of one series into a volume, decode every frame and print one line per
file or series: path, modality, photometric interpretation, frame shape, frames, value range (after the
modality LUT, before windowing, padding excluded) and the window preprocessing would use for the
middle frame with --window (default auto: the VOI LUT, else the header's first Window Center/Width,
else the 0.5-99.5 percentiles of the real pixels), with its source.

Files that fail are listed with the reason (on stderr; in --json mode as rows with a non-empty "error")
and the command carries on. Exit status: 0 all fine,
3 some failed, 1 all failed (or nothing found).

Examples:
  medclass inspect scans/
  medclass inspect scans/ --json > inventory.jsonl
  medclass inspect scans/ other.dcm --errors-csv failures.csv
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    parser.add_argument("--errors-csv", type=Path, metavar="FILE", help="also write failed files to FILE")
    parser.add_argument(
        "--no-group", action="store_true", help="list DICOM slices one by one instead of as series"
    )
    parser.add_argument(
        "--max-gib",
        type=float,
        default=None,
        help="refuse files whose header declares more pixel data than this (default 1 GiB)",
    )
    parser.add_argument(
        "--window",
        default="auto",
        metavar="POLICY",
        help="window policy to report, as preprocessing would apply it (auto: VOI LUT, else the "
        "header window, else percentiles; or header, percentile, lung, 'C/W'...)",
    )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def _text_line(row: Any) -> str:
    if row.error:
        return f"{row.path}\tFAILED {row.error_kind}: {row.error}"
    series = f" ({row.files} files)" if row.files > 1 else ""
    if row.window_center is None:
        window = row.window_source
    else:
        window = f"{_fmt(row.window_center)}/{_fmt(row.window_width)} [{row.window_source}]"
    return (
        f"{row.path}{series}\t{row.format} {row.modality or '-'} {row.photometric} {row.shape} "
        f"frames={row.frames} range=[{_fmt(row.value_min)}, {_fmt(row.value_max)}]"
        f"{f' padded={row.padded}' if row.padded else ''} window={window}"
    )


def _window_of(name: str) -> Any:
    """A ``window_of`` callable giving the window preprocessing would use (policy ``name``).

    Without :mod:`medclass.preprocess` (a partial install) it falls back to the header window.
    Raises :class:`~medclass.errors.ConfigError` for an unknown policy.
    """
    try:
        from medclass.preprocess.pipeline import Windowing
    except ImportError:
        log.warning("medclass.preprocess is not available: reporting header windows only")
        return None
    windowing = Windowing(name)
    return lambda image: windowing.transform_for(image).window


def run(args: argparse.Namespace) -> ExitCode:
    from medclass.errors import short_message
    from medclass.fileio import write_csv
    from medclass.ingest import discover
    from medclass.ingest.summary import header_window, summarize_rows

    sources = discover(args.paths, group=not args.no_group)
    if not sources:
        print(f"medclass inspect: no images found under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return ExitCode.ERROR
    window_of = _window_of(args.window) or header_window
    max_bytes = int(args.max_gib * 2**30) if args.max_gib else None
    rows = []
    for src in sources:
        try:
            found = summarize_rows(src, max_bytes=max_bytes, window_of=window_of)
        except Exception as exc:  # a bug: carry on with the other files unless asked for the traceback
            if args.traceback:
                raise
            from medclass.ingest.summary import SourceSummary

            found = [
                SourceSummary(
                    path=src.path,
                    format=src.format,
                    error_kind="internal",
                    error=short_message(exc, None, typed=True),
                )
            ]
        for row in found:  # a series with a corrupt slice: the series, then the bad file on its own row
            rows.append(row)
            if args.json:
                print(json.dumps(row.as_dict()), flush=True)
            elif row.error:  # failures on stderr (they survive `> listing.txt`), one line each
                print(_text_line(row), file=sys.stderr, flush=True)
            else:
                print(_text_line(row), flush=True)
    failed = [r for r in rows if r.error]
    n_ok = len(rows) - len(failed)
    if args.errors_csv:
        write_csv(
            args.errors_csv,
            [r.as_dict() for r in failed],
            ["path", "format", "error_kind", "error"],
        )
    print(f"{n_ok} ok, {len(failed)} failed", file=sys.stderr if args.json else sys.stdout)
    if not failed:
        return ExitCode.OK
    return ExitCode.ERROR if n_ok == 0 else ExitCode.PARTIAL
