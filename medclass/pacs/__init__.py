"""The PACS round trip: studies in over DICOMweb, results back by STOW-RS or C-STORE, and ``watch``.

Public API::

    Connection(url, credentials_file=None, ca_bundle=None, timeout=30, max_bytes=1 GiB, retries=3)
    PacsClient(connection)          # QIDO-RS / WADO-RS / STOW-RS through dicomweb-client
    PacsSource(connection, studies, query); parse_query(["KEY=VALUE", ...]) -> dict
    score_from_pacs(ScoreConfig, PacsSource, pushers) -> PacsReport   # CLI: score --dicomweb
    make_pushers(connection, push=, push_to=, push_dimse=) -> [pusher(datasets)]
    output_uid(source_uid, frame, weights_sha256, kind)                 # idempotent output UIDs

Modules: :mod:`~medclass.pacs.client` (one server, errors classified transient / permanent),
:mod:`~medclass.pacs.uids`, :mod:`~medclass.pacs.source` (studies → pulled files → work items),
:mod:`~medclass.pacs.outputs` (SR, Encapsulated PDF, joining the source study), :mod:`~medclass.pacs.push`
(STOW-RS, C-STORE), :mod:`~medclass.pacs.score` (score study by study). Importing this package does not
import torch or the HTTP/DICOM network libraries.
"""

from __future__ import annotations

from medclass.pacs.client import Connection, InstanceRef, PacsClient, load_auth
from medclass.pacs.push import DicomNode, DimsePusher, StowPusher, make_pushers
from medclass.pacs.score import PacsReport, PacsScorer, PacsSource, StudyResult, score_from_pacs
from medclass.pacs.source import parse_query, pull_study, resolve_studies
from medclass.pacs.uids import check_uid, derived_uid, is_uid, output_series_uid, output_uid

__all__ = [
    "Connection",
    "DicomNode",
    "DimsePusher",
    "InstanceRef",
    "PacsClient",
    "PacsReport",
    "PacsScorer",
    "PacsSource",
    "StowPusher",
    "StudyResult",
    "check_uid",
    "derived_uid",
    "is_uid",
    "load_auth",
    "make_pushers",
    "output_series_uid",
    "output_uid",
    "parse_query",
    "pull_study",
    "resolve_studies",
    "score_from_pacs",
]
