"""The ``medclass`` command line: parses, sets up logging, calls a command, turns errors into exit codes.

Each command lives in its own module under ``medclass.cli`` and exposes::

    HELP: str                                   # one line for ``medclass --help``
    DESCRIPTION: str                            # longer text with examples for ``medclass CMD --help``
    def add_arguments(parser) -> None
    def run(args) -> ExitCode | int

Command modules import heavy libraries (torch, timm, monai) inside ``run`` so that ``--help`` stays fast.
This module is the only error boundary: a :class:`~medclass.errors.MedclassError` becomes one line on
stderr and a non-zero exit code; ``--traceback`` shows the real traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import IntEnum
from typing import TextIO

from medclass import __version__
from medclass.errors import MedclassError

log = logging.getLogger("medclass")


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # nothing useful was done
    USAGE = 2  # bad command line (argparse's own code)
    PARTIAL = 3  # some inputs failed, the rest were processed
    INTERRUPTED = 130


# name -> module (relative to medclass.cli). Order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "inspect": "inspect",
    "preview": "preview",
    "manifest": "manifest",
    "train": "train",
    "calibrate": "calibrate",
    "evaluate": "evaluate",
    "compare": "compare",
    "cv": "cv",
    "explain": "explain",
    "score": "score",
    "watch": "watch",
    "export": "export",
    "profile": "profile",
    "demo": "demo",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' line breaks and shows defaults, but not a default of None (an option that is
    off unless given; its help says what happens without it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _load(name: str):
    return importlib.import_module(f"medclass.cli.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medclass",
        formatter_class=HelpFormatter,
        description=(
            "Fine-tune Inception V3 on your own medical images (DICOM, NIfTI, PNG/JPEG), evaluate it "
            "honestly, explain it to clinicians and score new studies in bulk.\n\n"
            "Typical flow:\n"
            "  medclass inspect scans/                       # what is in a folder, and what will fail\n"
            "  medclass manifest build --from-folders data/ --out data_manifests/mine.csv\n"
            "  medclass train --manifest data_manifests/mine.csv --data-root data/ --out runs/r1\n"
            "  medclass evaluate --checkpoint runs/r1/best --manifest data_manifests/mine.csv --out reports/r1\n"
            "  medclass explain --checkpoint runs/r1/best scans/case1.dcm --out reports/r1/saliency\n"
            "  medclass score --checkpoint runs/r1/best scans/ --out scores.csv\n\n"
            "Try it all offline on generated DICOM:  medclass demo"
        ),
    )
    parser.add_argument("--version", action="version", version=f"medclass {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:  # a command not built yet
            if exc.name != f"medclass.cli.{COMMANDS[name]}":
                raise
            continue
        p = sub.add_parser(
            name, help=module.HELP, description=module.DESCRIPTION, formatter_class=HelpFormatter
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


class RepeatFilter(logging.Filter):
    """Let through the first ``first`` records of each message template (per logger and level), count the
    rest; :meth:`summary` says how many were held back. Long runs of per-file warnings become a few lines
    and a count instead of hundreds."""

    def __init__(self, first: int = 5) -> None:
        super().__init__()
        self.first = first
        self.held: dict[tuple[str, int, str], int] = {}
        self.seen: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        return self.admit((record.name, record.levelno, str(record.msg)))

    def admit(self, key: tuple[str, int, str]) -> bool:
        """Whether the record (or warning) called ``key`` is shown; counts it either way."""
        n = self.seen[key] = self.seen.get(key, 0) + 1
        if n <= self.first:
            return True
        self.held[key] = self.held.get(key, 0) + 1
        return False

    def summary(self) -> list[str]:
        """One line per template that had records held back."""
        return [
            f"{logging.getLevelName(level)} {name}: {n} more"
            + (f" like {msg!r}" if msg else "")
            + " not shown (-vv shows all)"
            for (name, level, msg), n in self.held.items()
        ]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream it was when ``main``
    ran: a caller that redirects stderr around ``main`` (tests, notebooks) never leaves the package logging
    into a closed stream afterwards."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _setup_logging(verbose: int, quiet: bool) -> RepeatFilter:
    level = logging.WARNING if quiet else (logging.INFO if verbose <= 1 else logging.DEBUG)
    if verbose == 0 and not quiet:
        level = logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    repeats = RepeatFilter(first=5 if verbose < 2 else 10**9)
    handler.addFilter(repeats)
    root = logging.getLogger("medclass")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    return repeats


@contextmanager
def _one_line_warnings(repeats: RepeatFilter) -> Iterator[None]:
    """Show library warnings (pydicom's ``UserWarning``, ``MetricWarning``...) as one line each on stderr,
    without the source line Python prints under them, the first few from each place (``repeats`` counts
    the rest); the previous hook is restored afterwards."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = " ".join(str(message).split())
        where = f"{os.path.basename(str(filename))}:{lineno}"
        if not repeats.admit((f"{category.__name__} at {where}", logging.WARNING, "")):
            return
        print(f"WARNING {category.__name__}: {text} ({where})", file=file or sys.stderr)

    previous = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return ExitCode.USAGE
    repeats = _setup_logging(args.verbose, args.quiet)
    try:
        with _one_line_warnings(repeats):
            try:
                return int(args._module.run(args))
            finally:  # before the error line, so that stays last
                for line in repeats.summary():
                    print(line, file=sys.stderr)
    except MedclassError as exc:
        if args.traceback:
            raise
        print(f"medclass {args.command}: error: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    except KeyboardInterrupt:
        again = "; run the same command with --resume to continue" if hasattr(args, "resume") else ""
        print(f"medclass {args.command}: interrupted{again}", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug: one line unless asked for more
        if args.traceback or os.environ.get("MEDCLASS_TRACEBACK"):
            raise
        print(
            f"medclass {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(run again with --traceback and report it)",
            file=sys.stderr,
        )
        return ExitCode.ERROR


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
