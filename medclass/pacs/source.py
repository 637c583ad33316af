"""DICOMweb as a source: studies chosen by UID or QIDO filters, instances pulled by WADO-RS into a private
folder of the output, then cut into the same :class:`~medclass.score.WorkItem` rows as files are.

A pulled instance is written as ``<pull dir>/<n>.dcm`` (``n`` its position in the study): names never
come from the server, so no UID a server sends can make a path. Its rows are keyed by the instance's
WADO-RS URL (``<root>/studies/<study>/series/<series>/instances/<sop>``) and the frame, so a resumed run
recognises them whatever the local folder; the pulled files are removed once the study is done (they
hold the patient's data).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medclass.errors import ConfigError, PacsError
from medclass.pacs.client import InstanceRef, PacsClient
from medclass.pacs.uids import check_uid
from medclass.score.inputs import WorkItem, expand_inputs, one_line

log = logging.getLogger(__name__)


def parse_query(pairs: Iterable[str]) -> dict[str, str]:
    """``["ModalitiesInStudy=CR", "StudyDate=20260101-20260131"]`` → a QIDO-RS filter dict.

    Raises :class:`ConfigError` for a pair without ``=`` or an unknown attribute keyword.
    """
    from pydicom.datadict import tag_for_keyword

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--query takes KEY=VALUE (e.g. ModalitiesInStudy=CR), got {pair!r}")
        if tag_for_keyword(key) is None and key not in ("limit", "offset", "fuzzymatching"):
            raise ConfigError(
                f"--query: {key!r} is not a DICOM attribute keyword (e.g. StudyDate, PatientID)"
            )
        out[key] = value.strip()
    return out


def resolve_studies(client: PacsClient, studies: Sequence[str], query: dict[str, str]) -> list[str]:
    """The StudyInstanceUIDs to process: ``studies`` as given (checked), then the QIDO-RS matches of
    ``query`` (when given, or when no study was named), each once, in that order."""
    chosen = [check_uid(s, "--study UID") for s in studies]
    if query or not studies:
        chosen.extend(client.study_uids(query))
    return list(dict.fromkeys(chosen))


def instance_url(root: str, ref: InstanceRef) -> str:
    """The WADO-RS URL of an instance: the ``path`` of its score rows."""
    return f"{root}/studies/{ref.study_uid}/series/{ref.series_uid}/instances/{ref.sop_uid}"


def study_url(root: str, study_uid: str) -> str:
    return f"{root}/studies/{study_uid}"


@dataclass
class PulledStudy:
    """One study after the pull: its work items (new ones only), instances, and the instance errors."""

    study_uid: str
    refs: list[InstanceRef] = field(default_factory=list)
    items: list[WorkItem] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)  # sop uid → pulled file
    errors: list[WorkItem] = field(default_factory=list)  # instances that could not be pulled (frame None)
    skipped: int = 0  # instances already scored (not pulled again)
    n_bytes: int = 0


def pull_study(
    client: PacsClient,
    study_uid: str,
    folder: Path,
    *,
    slice_policy: str = "all",
    done: dict[str, int] | None = None,
) -> PulledStudy:
    """List the instances of ``study_uid`` and pull those not ``done`` (instance URL → rows already
    written) into ``folder`` (emptied first), then expand them into work items.

    An instance the server will not give (or gives as something that is not that DICOM instance) becomes
    an error item; the study itself fails only when its instances cannot be listed. Raises
    :class:`~medclass.errors.PacsUnavailable` when the server is unreachable (nothing is committed for the
    study then) and :class:`PacsError` when the listing is unusable.
    """
    done = done or {}
    root = client.connection.url
    refs = [r for r in client.instances(study_uid) if not r.is_output]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pulled = PulledStudy(study_uid, refs)
    by_file: dict[str, str] = {}
    for n, ref in enumerate(refs):
        url = instance_url(root, ref)
        if done.get(url, 0) >= max(1, ref.frames if slice_policy == "all" else 1):
            pulled.skipped += 1
            continue
        path = folder / f"{n:06d}.dcm"
        try:
            ds = client.retrieve(ref)
            ds.save_as(path, enforce_file_format=True)
        except PacsError as exc:
            if exc.kind == "pacs-unavailable":
                raise
            pulled.errors.append(WorkItem(url, None, error=one_line(exc)))
            continue
        except Exception as exc:  # pydicom could not write what it parsed: that instance's error
            pulled.errors.append(
                WorkItem(url, None, error=f"{url}: cannot store the pulled instance ({one_line(exc)})")
            )
            continue
        pulled.files[ref.sop_uid] = path
        pulled.n_bytes += path.stat().st_size
        by_file[str(path.resolve())] = url
    if by_file:
        for item in expand_inputs([folder], slice_policy=slice_policy):
            found = by_file.get(str(Path(item.path).resolve()))
            if found is None:  # not one of ours (cannot happen: the folder is private)
                continue
            error = item.error.replace(item.path, found) if item.error else ""
            pulled.items.append(WorkItem(found, item.frame, error, file=item.path))
    return pulled


def header_of(pulled: PulledStudy, client: PacsClient) -> Any:
    """A header of the study (patient and study modules): a pulled file's, else WADO-RS metadata."""
    import pydicom

    for path in pulled.files.values():
        return pydicom.dcmread(path, stop_before_pixels=True)
    if not pulled.refs:
        raise PacsError(f"study {pulled.study_uid} has no instances")
    return client.metadata(pulled.refs[0])
