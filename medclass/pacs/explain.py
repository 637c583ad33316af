"""``medclass explain --dicomweb``: studies pulled from a PACS, explained, and the overlays pushed back.

The studies are pulled (WADO-RS) into ``OUT/.pull/`` and handed to the explain job image by image, as
files are; the job writes its usual, de-identified outputs to OUT. Then, per study, the Secondary
Captures (and with ``sr`` the SRs; with ``pdf`` the PDF report as Encapsulated PDF) are re-homed in the
source study (:func:`~medclass.pacs.outputs.join_study`: the source's patient and study modules, derived
UIDs) and pushed. The pulled files are removed at the end.

The job is any object with ``add(image)``, ``fail(where, exc)``, ``finish()``, ``rows`` and ``out``
(:class:`medclass.explain.ExplainRun`): this module does not import the model side.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medclass.errors import PacsError, PacsUnavailable
from medclass.pacs.client import PacsClient
from medclass.pacs.outputs import encapsulated_pdf, join_study
from medclass.pacs.push import Pusher
from medclass.pacs.score import PacsSource, StudyResult
from medclass.pacs.source import PulledStudy, pull_study, resolve_studies, study_url
from medclass.pacs.uids import output_series_uid, output_uid
from medclass.phi import pseudonym

log = logging.getLogger(__name__)


class PacsExplain:
    """Pull the studies of ``source`` into ``job`` (:meth:`pull`), then, after ``job.finish()``, push its
    DICOM outputs into each source study (:meth:`push`)."""

    def __init__(
        self,
        source: PacsSource,
        pushers: Sequence[Pusher] = (),
        *,
        weights_sha256: str,
        slice_policy: str = "middle",
        push_sr: bool = False,
        push_pdf: bool = False,
    ) -> None:
        self.source, self.pushers, self.sha = source, list(pushers), weights_sha256
        self.slice_policy, self.push_sr, self.push_pdf = slice_policy, push_sr, push_pdf
        self.results: dict[str, StudyResult] = {}
        self.pulled: dict[str, PulledStudy] = {}

    @property
    def incomplete(self) -> int:
        return sum(1 for r in self.results.values() if r.unavailable or r.error)

    def pull(self, job: Any) -> None:
        """Pull every study and ``job.add`` its images; a study that cannot be pulled is ``job.fail``-ed.

        Raises :class:`PacsUnavailable`/:class:`PacsError` when the study list cannot be had.
        """
        from medclass import ingest

        client = PacsClient(self.source.connection)
        self.pull_root = Path(job.out) / ".pull"
        for n, uid in enumerate(resolve_studies(client, self.source.studies, self.source.query)):
            result = self.results[uid] = StudyResult(uid)
            folder = self.pull_root / f"{n:05d}"
            t0 = time.perf_counter()
            try:
                p = self.pulled[uid] = pull_study(client, uid, folder, slice_policy=self.slice_policy)
            except PacsError as exc:
                result.unavailable, result.error = isinstance(exc, PacsUnavailable), str(exc)
                job.fail(study_url(client.connection.url, uid), exc)
                continue
            result.pull_s, result.instances, result.pulled = (
                time.perf_counter() - t0,
                len(p.refs),
                len(p.files),
            )
            result.n_bytes = p.n_bytes
            for item in p.errors:
                job.fail(item.path, PacsError(item.error))
            before = len(job.errors)
            for src in ingest.discover([folder]) if p.files else []:  # decode failures are per image
                for got in ingest.load_each(src, slice_policy=self.slice_policy):
                    if isinstance(got, ingest.Failed):
                        job.fail(got.path, got.error, "decode")
                    else:
                        job.add(got)
            result.failed = len(p.errors) + len(job.errors) - before

    def push(self, job: Any, on_study: Callable[[StudyResult], None] | None = None) -> list[StudyResult]:
        """Push each pulled study's outputs (after ``job.finish()``), remove the pulled files, and return
        one :class:`StudyResult` per study."""
        try:
            for uid, p in self.pulled.items():
                result = self.results[uid]
                t1 = time.perf_counter()
                try:
                    datasets = _outputs(job, uid, p, self.sha, push_sr=self.push_sr, push_pdf=self.push_pdf)
                    result.scored = sum(1 for ds in datasets if ds.SOPClassUID == SC)
                    for push in self.pushers:
                        push(datasets)
                    result.pushed = len(datasets) if self.pushers else 0
                except PacsError as exc:
                    result.unavailable, result.error = isinstance(exc, PacsUnavailable), f"push failed: {exc}"
                    log.warning("study %s: %s", uid, result.error)
                result.push_s = time.perf_counter() - t1
        finally:
            shutil.rmtree(Path(job.out) / ".pull", ignore_errors=True)
        for result in self.results.values():
            if on_study is not None:
                on_study(result)
        return list(self.results.values())


SC = "1.2.840.10008.5.1.4.1.1.7"


def _outputs(
    job: Any, uid: str, pulled: PulledStudy, sha: str, *, push_sr: bool, push_pdf: bool
) -> list[Any]:
    """The job's DICOM outputs for study ``uid``, re-homed in it with derived UIDs."""
    import pydicom

    headers = {sop: pydicom.dcmread(path, stop_before_pixels=True) for sop, path in pulled.files.items()}
    study_id = pseudonym(uid, prefix="S")
    out: list[Any] = []
    kinds = [("dicom", "saliency-sc")] + ([("sr", "explain-sr")] if push_sr else [])
    for row in (r for r in job.rows if r.get("study_id") == study_id):
        files = {kind: pydicom.dcmread(Path(job.out) / str(row[col])) for col, kind in kinds if row.get(col)}
        ref = next((r for r in map(_reference, files.values()) if r is not None), None)  # the SC's first
        if ref is None or ref[0] not in headers:
            log.warning("study %s: image %s references no pulled image; not pushed", uid, row.get("image_id"))
            continue
        sop, frame = ref
        for kind, ds in files.items():
            out.append(join_study(ds, headers[sop], sop_uid=output_uid(sop, frame, sha, kind),
                                  series_uid=output_series_uid(uid, sha, kind)))  # fmt: skip
    pdf = Path(job.out) / f"{study_id}_report.pdf"
    if push_pdf and headers and pdf.is_file():
        first = next(iter(headers.values()))
        out.append(encapsulated_pdf(pdf.read_bytes(), first, title="medclass saliency report",
                                    sop_uid=output_uid(uid, None, sha, "report-pdf"),
                                    series_uid=output_series_uid(uid, sha, "report-pdf")))  # fmt: skip
    return out


def _reference(ds: Any) -> tuple[str, int] | None:
    """(source SOPInstanceUID, frame index) an output points at (SC: ReferencedImageSequence; SR: evidence)."""
    for keyword in ("ReferencedImageSequence", "SourceImageSequence"):
        seq = ds.get(keyword)
        if seq:
            return str(seq[0].ReferencedSOPInstanceUID), int(seq[0].get("ReferencedFrameNumber", 1) or 1) - 1
    for item in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in item.get("ReferencedSeriesSequence", []):
            for sop in series.get("ReferencedSOPSequence", []):
                return str(sop.ReferencedSOPInstanceUID), 0
    return None
