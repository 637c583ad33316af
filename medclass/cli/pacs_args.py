"""The PACS flags shared by ``score``, ``explain`` and ``watch``: source, push targets, connection."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PHI_HELP = (
    "De-identification: files and reports written to disk (scores, overlays, HTML/PDF, DICOM files in "
    "--out) stay de-identified (explain: unless --include-phi). Objects pushed to a PACS (--push/--push-to/"
    "--push-dimse) join the source study there: they carry the source's own patient and study modules "
    "unchanged (the PACS already holds them), so the PACS files them beside the original."
)


def add_source_arguments(parser: argparse.ArgumentParser, *, watch: bool = False) -> None:
    """``--dicomweb URL`` (+ ``--study``/``--query`` unless ``watch``) and the connection settings."""
    g = parser.add_argument_group("PACS (DICOMweb source)")
    g.add_argument(
        "--dicomweb", metavar="URL", required=watch,
        help="DICOMweb root to read studies from (QIDO-RS + WADO-RS), e.g. http://pacs:8042/dicom-web",
    )  # fmt: skip
    if not watch:
        g.add_argument(
            "--study", action="append", default=[], metavar="UID", help="a StudyInstanceUID (repeatable)"
        )
    g.add_argument(
        "--query", action="append", default=[], metavar="KEY=VALUE",
        help="QIDO-RS study filter (repeatable), e.g. ModalitiesInStudy=CR, StudyDate=20260101-20260131",
    )  # fmt: skip
    g.add_argument(
        "--credentials-file", type=Path, metavar="FILE",
        help="one line 'bearer TOKEN' or 'basic USER:PASSWORD' (else $MEDCLASS_PACS_TOKEN, or "
        "$MEDCLASS_PACS_USER + $MEDCLASS_PACS_PASSWORD); never on the command line",
    )  # fmt: skip
    g.add_argument(
        "--ca-bundle", type=Path, metavar="PEM", help="CA certificates for https (verification is always on)"
    )
    g.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for a connection or an answer"
    )
    g.add_argument(
        "--retries", type=int, default=3, help="attempts per request when the server is unavailable"
    )
    g.add_argument(
        "--max-response-mb", type=float, default=1024.0, help="refuse any single answer larger than this"
    )


def add_push_arguments(parser: argparse.ArgumentParser, *, explain: bool = False) -> None:
    g = parser.add_argument_group("PACS (push results back)", PHI_HELP)
    if explain:
        g.add_argument(
            "--pdf", action="store_true", help="also push each study's PDF report (Encapsulated PDF)"
        )
    g.add_argument("--push", action="store_true", help="STOW-RS the outputs to the --dicomweb root")
    g.add_argument(
        "--push-to", action="append", default=[], metavar="URL", help="STOW-RS to another root (repeatable)"
    )
    g.add_argument(
        "--push-dimse", action="append", default=[], metavar="AET@HOST:PORT",
        help="C-STORE to a DICOM node (repeatable), e.g. ORTHANC@pacs:4242",
    )  # fmt: skip
    g.add_argument("--calling-aet", default="MEDCLASS", help="our AE title for C-STORE")


def connection(args: argparse.Namespace, url: str | None = None) -> Any:
    """The :class:`~medclass.pacs.Connection` for ``url`` (default ``--dicomweb``), or None."""
    from medclass.errors import ConfigError
    from medclass.pacs import Connection

    url = url or args.dicomweb
    if not url:
        return None
    if args.retries < 1 or args.timeout <= 0 or args.max_response_mb <= 0:
        raise ConfigError("--retries must be ≥ 1, --timeout and --max-response-mb > 0")
    return Connection(
        url, credentials_file=args.credentials_file, ca_bundle=args.ca_bundle, timeout=args.timeout,
        max_bytes=int(args.max_response_mb * (1 << 20)), retries=args.retries,
    )  # fmt: skip


def pushers(args: argparse.Namespace) -> list[Any]:
    from medclass.pacs import make_pushers

    return make_pushers(
        connection(args), push=args.push, push_to=args.push_to, push_dimse=args.push_dimse,
        calling_aet=args.calling_aet,
    )  # fmt: skip


def source(args: argparse.Namespace) -> Any:
    """The :class:`~medclass.pacs.PacsSource` of ``--dicomweb``/``--study``/``--query``."""
    from medclass.pacs import PacsSource, parse_query

    return PacsSource(connection(args), getattr(args, "study", []), parse_query(args.query))


def check_paths(args: argparse.Namespace, parser_name: str) -> None:
    """PATHs or --dicomweb, not both, not neither (a :class:`ConfigError` otherwise)."""
    from medclass.errors import ConfigError

    if args.dicomweb and args.paths:
        raise ConfigError(f"{parser_name}: give PATHs or --dicomweb, not both")
    if not args.dicomweb and not args.paths:
        raise ConfigError(f"{parser_name}: give PATHs to read, or --dicomweb URL")
    if not args.dicomweb and (getattr(args, "study", None) or args.query):
        raise ConfigError("--study/--query select studies of --dicomweb; give --dicomweb URL")
    if not args.dicomweb and (args.push or args.push_to or args.push_dimse):
        raise ConfigError("--push/--push-to/--push-dimse send results of studies read with --dicomweb URL")
