"""The saliency overlay as DICOM: a Secondary Capture image in a new series of the source study.

:func:`secondary_capture` builds an RGB 8-bit SC image (highdicom ``SCImage``) that keeps the source's
StudyInstanceUID — **UIDs are kept on purpose**: a PACS files the overlay beside the original study — gets
a new SeriesInstanceUID and SOPInstanceUID, and points back to the source image through
ReferencedImageSequence and SourceImageSequence. Its SeriesDescription says "not for diagnostic use".

De-identification (default): PatientName "ANONYMIZED", PatientID the :func:`medclass.phi.pseudonym` of the
source's patient ID, and no birth date, sex, accession number, study date/time, study ID or referring
physician; PatientIdentityRemoved is YES. With ``include_phi=True`` those attributes are copied from the
source. Nothing is burned into the pixels but the overlay itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medclass import __version__
from medclass.errors import DataError, InputError
from medclass.fileio import atomic_write
from medclass.ingest.types import ImageMeta
from medclass.phi import pseudonym

log = logging.getLogger(__name__)

SERIES_NUMBER = 9901  # high, so the derived series sorts after the acquired ones
ANONYMIZED = "ANONYMIZED^"  # trailing caret: a one-component person name


def series_description(method: str) -> str:
    """SeriesDescription of the saliency series (LO: at most 64 characters)."""
    return f"medclass saliency ({method}) — not for diagnostic use"[:64]


def read_source_header(meta: ImageMeta) -> Dataset:
    """The source DICOM header (no pixels). Raises :class:`InputError` when it is not DICOM or unreadable."""
    if meta.format != "dicom" or not meta.source:
        raise InputError("not a DICOM source: no Secondary Capture can reference it", meta.source or None)
    try:
        return pydicom.dcmread(meta.source, stop_before_pixels=True)
    except Exception as exc:
        raise InputError(
            f"cannot re-read the DICOM header ({type(exc).__name__}: {exc})", meta.source
        ) from exc


def _ref_item(meta: ImageMeta) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = meta.sop_class_uid
    item.ReferencedSOPInstanceUID = meta.sop_uid
    if meta.n_frames > 1:
        item.ReferencedFrameNumber = meta.index + 1
    return item


def secondary_capture(
    overlay_rgb: np.ndarray,
    meta: ImageMeta,
    *,
    method: str,
    include_phi: bool = False,
    source: Dataset | None = None,
    instance_number: int = 1,
    series_uid: str | None = None,
) -> Dataset:
    """A Secondary Capture dataset holding ``overlay_rgb`` (H×W×3 uint8 on the source's pixel grid).

    ``meta`` is the source image's metadata (study/SOP UIDs); ``source`` its header (read from
    ``meta.source`` when None). ``series_uid`` lets several images of one run share a series.
    Raises :class:`DataError` for a malformed overlay and :class:`InputError` for a non-DICOM source.
    """
    import highdicom as hd

    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3 or overlay_rgb.dtype != np.uint8:
        raise DataError(f"overlay must be H×W×3 uint8, got {overlay_rgb.shape} {overlay_rgb.dtype}")
    src = read_source_header(meta) if source is None else source
    study_uid = meta.study_uid or str(src.get("StudyInstanceUID", ""))
    if not study_uid or not meta.sop_uid:
        raise InputError("the source has no Study/SOP Instance UID to reference", meta.source)
    patient: dict[str, Any]
    if include_phi:
        patient = dict(
            patient_id=str(src.get("PatientID", "")) or None,
            patient_name=str(src.get("PatientName", "")) or None,
            patient_birth_date=str(src.get("PatientBirthDate", "")) or None,
            patient_sex=str(src.get("PatientSex", "")) or None,
            accession_number=str(src.get("AccessionNumber", "")) or None,
            study_id=str(src.get("StudyID", "")) or None,
            study_date=str(src.get("StudyDate", "")) or None,
            study_time=str(src.get("StudyTime", "")) or None,
            referring_physician_name=str(src.get("ReferringPhysicianName", "")) or None,
        )
    else:
        patient = dict(patient_id=pseudonym(meta.patient_id) or "ANONYMIZED", patient_name=ANONYMIZED)
    spacing = (float(meta.pixel_spacing[0]), float(meta.pixel_spacing[1])) if meta.pixel_spacing else None
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(overlay_rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=study_uid,
        series_instance_uid=series_uid or generate_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer="medclass",
        pixel_spacing=spacing,
        patient_orientation=_orientation(src),
        **patient,
    )
    sc.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the description's dash, names in any script
    sc.SeriesDescription = series_description(method)
    sc.Laterality = str(src.get("Laterality", "")) or None  # type: ignore[assignment]  # Type 2C: empty when unknown
    sc.Modality = str(src.get("Modality", "")) or "OT"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.DerivationDescription = f"medclass {__version__} {method} saliency overlay on the source image"[:1024]
    sc.ReferencedImageSequence = [_ref_item(meta)]
    sc.SourceImageSequence = [_ref_item(meta)]
    sc.BurnedInAnnotation = "NO"
    sc.SoftwareVersions = f"medclass {__version__}"
    sc.ImageComments = "Saliency map overlay. Not for diagnostic use."
    if not include_phi:
        sc.PatientIdentityRemoved = "YES"
        sc.DeidentificationMethod = "medclass: names, dates, IDs removed; UIDs kept"
    return sc


def _orientation(src: Dataset) -> tuple[str, str] | None:
    value = src.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return (str(value[0]), str(value[1]))
    return None


def write_dataset(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file, atomically. Returns the path."""
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        ds.save_as(fh, enforce_file_format=True)
    log.debug("wrote %s", path.name)
    return path


_SCHEME = "99MEDCLASS"  # private coding scheme (PS3.16 "99" prefix): no standard code fits these items


def _concept(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value, _SCHEME, meaning)


def scores_sr(
    meta: ImageMeta,
    classes: list[str] | tuple[str, ...],
    probabilities: list[float] | tuple[float, ...],
    *,
    explained_class: str,
    method: str,
    include_phi: bool = False,
    source: Dataset | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """A Comprehensive SR of the class probabilities of one source image (referenced as evidence).

    The items use a private coding scheme (``99MEDCLASS``): this is a plain record of the scores, not a
    TID 1500 measurement report. Patient attributes follow the same de-identification as
    :func:`secondary_capture`. Raises :class:`InputError` for a non-DICOM source.
    """
    import highdicom as hd
    from highdicom.sr import CodedConcept

    src = read_source_header(meta) if source is None else source
    items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(
            name=CodedConcept("121071", "DCM", "Finding"),
            value=f"medclass classifier scores; saliency by {method} for {explained_class}. Not for diagnostic use."[
                :1024
            ],
            relationship_type="CONTAINS",
        )
    ]
    for name, p in zip(classes, probabilities, strict=True):
        items.append(
            hd.sr.NumContentItem(
                name=_concept(f"p:{name}"[:16], f"Probability of {name}"[:64]),
                value=float(p),
                unit=CodedConcept("1", "UCUM", "no units"),
                relationship_type="CONTAINS",
            )
        )
    root = hd.sr.ContainerContentItem(name=_concept("report", "medclass classification scores"))
    root.ContentSequence = items  # type: ignore[assignment]  # highdicom converts the list
    sr = hd.sr.ComprehensiveSR(
        evidence=[src],
        content=root,
        series_instance_uid=series_uid or generate_uid(),
        series_number=SERIES_NUMBER + 1,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer="medclass",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"medclass scores ({method}) — not for diagnostic use"[:64],
    )
    sr.SpecificCharacterSet = "ISO_IR 192"
    if not include_phi:
        sr.PatientName = ANONYMIZED
        sr.PatientID = pseudonym(meta.patient_id) or "ANONYMIZED"
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate", "StudyTime", "StudyID",
                        "ReferringPhysicianName"):  # fmt: skip
            if keyword in sr:
                setattr(sr, keyword, None)
        for keyword in ("OtherPatientIDs", "OtherPatientNames", "PatientAge", "PatientAddress"):
            if keyword in sr:
                delattr(sr, keyword)
        sr.PatientIdentityRemoved = "YES"
        sr.DeidentificationMethod = "medclass: names, dates, IDs removed; UIDs kept"
    return sr
