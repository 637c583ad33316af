"""The saliency overlay as DICOM: a Secondary Capture image in a new series of the source study.

:func:`secondary_capture` builds an RGB 8-bit SC image (highdicom ``SCImage``) that keeps the source's
StudyInstanceUID — **UIDs are kept on purpose**: a PACS files the overlay beside the original study — gets
a new SeriesInstanceUID and SOPInstanceUID, and points back to the source image through
ReferencedImageSequence and SourceImageSequence (with ReferencedFrameNumber for a frame of a multi-frame or
enhanced multi-frame source). PatientOrientation is the source's, or derived from its
ImageOrientationPatient for cross-sectional images (CT, MR, PT, NM, US, OT...): see
:mod:`medclass.explain.dicom_refs`. Its SeriesDescription says "not for diagnostic use". :func:`scores_sr`
records the class probabilities in a Comprehensive SR that references the same source frame and the SC.

De-identification (default): PatientName "ANONYMIZED", PatientID the :func:`medclass.phi.pseudonym` of the
source's patient ID, and no birth date, sex, accession number, study date/time, study ID or referring
physician; PatientIdentityRemoved is YES. With ``include_phi=True`` those attributes are copied from the
source. Nothing is burned into the pixels but the overlay itself.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medclass import __version__
from medclass.errors import DataError, DicomOutputError, InputError, short_message
from medclass.explain.dicom_refs import SourceRef, conformant, evidence, ref_item, source_ref
from medclass.fileio import atomic_write
from medclass.ingest.types import ImageMeta
from medclass.phi import pseudonym

log = logging.getLogger(__name__)

SERIES_NUMBER = 9901  # high, so the derived series sorts after the acquired ones
ANONYMIZED = "ANONYMIZED^"  # trailing caret: a one-component person name


#: type 2 attributes: kept, emptied by de-identification
BLANKED = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate", "StudyTime", "StudyID",
           "ReferringPhysicianName")  # fmt: skip
#: optional attributes: removed by de-identification
REMOVED = ("OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence", "PatientAge", "PatientAddress",
           "IssuerOfPatientID", "InstitutionName", "InstitutionAddress")  # fmt: skip


def deidentify(ds: Dataset, patient_id: str | None, include_phi: bool) -> None:
    """UTF-8 character set; unless ``include_phi``: PatientName "ANONYMIZED", PatientID the pseudonym of
    ``patient_id``, :data:`BLANKED` emptied, :data:`REMOVED` removed, and the de-identification recorded.
    The one de-identification of every DICOM object medclass writes besides the Secondary Capture (which
    highdicom builds from :func:`_patient`)."""
    ds.SpecificCharacterSet = "ISO_IR 192"
    if include_phi:
        return
    ds.PatientName = ANONYMIZED
    ds.PatientID = pseudonym(patient_id) or "ANONYMIZED"
    for keyword in BLANKED:
        if keyword in ds:
            setattr(ds, keyword, None)
    for keyword in REMOVED:
        if keyword in ds:
            delattr(ds, keyword)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "medclass: names, dates, IDs removed; UIDs kept"


def series_description(method: str) -> str:
    """SeriesDescription of the saliency series (LO: at most 64 characters)."""
    return f"medclass saliency ({method}) — not for diagnostic use"[:64]


def read_source_header(meta: ImageMeta) -> Dataset:
    """The source DICOM header (pixel data deferred). Raises :class:`InputError` (or the subclass that says
    why) when it is not DICOM or unreadable."""
    if meta.format != "dicom" or not meta.source:
        raise InputError("not a DICOM source: no Secondary Capture can reference it", meta.source or None)
    from medclass.ingest.dicom import dcmread

    return dcmread(meta.source, header_only=True)


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

    ``meta`` is the source image's metadata (study/SOP UIDs, frame index); ``source`` its header (read
    from ``meta.source`` when None). ``series_uid`` lets several images of one run share a series.
    References, frame number and PatientOrientation follow :mod:`medclass.explain.dicom_refs`.
    Raises :class:`DataError` for a malformed overlay, :class:`InputError` for a non-DICOM source and
    :class:`DicomOutputError` when a source header value cannot be carried into a valid SC.
    """
    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3 or overlay_rgb.dtype != np.uint8:
        raise DataError(f"overlay must be H×W×3 uint8, got {overlay_rgb.shape} {overlay_rgb.dtype}")
    src = read_source_header(meta) if source is None else source
    ref = source_ref(meta, src)
    try:
        return _build_sc(overlay_rgb, meta, src, ref, method, include_phi, instance_number, series_uid)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom/pydicom reject a value
        raise DicomOutputError(
            f"cannot build the Secondary Capture ({type(exc).__name__}: {short_message(exc)})", meta.source
        ) from exc


def _patient(src: Dataset, meta: ImageMeta, include_phi: bool) -> dict[str, Any]:
    if not include_phi:
        return dict(patient_id=pseudonym(meta.patient_id) or "ANONYMIZED", patient_name=ANONYMIZED)
    keywords = dict(patient_id="PatientID", patient_name="PatientName", patient_birth_date="PatientBirthDate",
                    patient_sex="PatientSex", accession_number="AccessionNumber", study_id="StudyID",
                    study_date="StudyDate", study_time="StudyTime",
                    referring_physician_name="ReferringPhysicianName")  # fmt: skip
    return {arg: conformant(kw, src.get(kw)) or None for arg, kw in keywords.items()}


def _build_sc(
    overlay_rgb: np.ndarray,
    meta: ImageMeta,
    src: Dataset,
    ref: SourceRef,
    method: str,
    include_phi: bool,
    instance_number: int,
    series_uid: str | None,
) -> Dataset:
    import highdicom as hd

    if ref.study_uid_generated:
        log.warning(
            "%s: the source has no StudyInstanceUID; its DICOM outputs get a generated one", meta.source
        )
    spacing = (float(meta.pixel_spacing[0]), float(meta.pixel_spacing[1])) if meta.pixel_spacing else None
    if spacing is not None and not (all(np.isfinite(spacing)) and min(spacing) > 0):
        spacing = None
    orientation = ref.patient_orientation
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(overlay_rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=ref.study_uid,
        series_instance_uid=series_uid or generate_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer="medclass",
        pixel_spacing=spacing,
        # highdicom takes one letter per direction: the real (oblique, quadruped or empty) value is set below
        patient_orientation=("L", "P"),
        **_patient(src, meta, include_phi),
    )
    sc.PatientOrientation = list(orientation) if orientation else None  # type: ignore[assignment]  # Type 2
    if ref.anatomical_orientation == "QUADRUPED":
        sc.AnatomicalOrientationType = "QUADRUPED"
    sc.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the description's dash, names in any script
    sc.SeriesDescription = series_description(method)
    laterality = str(src.get("Laterality", "") or "")
    sc.Laterality = laterality if laterality in ("L", "R") else None  # type: ignore[assignment]  # Type 2C
    sc.Modality = _modality(src)
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.DerivationDescription = f"medclass {__version__} {method} saliency overlay on the source image"[:1024]
    if ref.sop_uid and ref.sop_class_uid:
        sc.ReferencedImageSequence = [ref_item(ref)]
        sc.SourceImageSequence = [ref_item(ref)]
    else:
        log.warning(
            "%s: the source has no SOP Instance UID; the Secondary Capture cannot reference it", meta.source
        )
    sc.BurnedInAnnotation = "NO"
    sc.SoftwareVersions = f"medclass {__version__}"
    sc.ImageComments = "Saliency map overlay. Not for diagnostic use."
    if not include_phi:
        sc.PatientIdentityRemoved = "YES"
        sc.DeidentificationMethod = "medclass: names, dates, IDs removed; UIDs kept"
    return sc


def _modality(src: Dataset) -> str:
    """The source's Modality when it is a plausible defined term (CS, 16 chars), else OT."""
    value = str(src.get("Modality", "") or "").strip().upper()
    return value if re.fullmatch(r"[A-Z0-9_ ]{1,16}", value) and value not in ("SR", "SEG", "PR") else "OT"


def write_dataset(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file, atomically, owner-only (0600: it carries the patient module).
    Returns the path."""
    path = Path(path)
    with atomic_write(path, "wb", private=True) as fh:
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
    overlay: Dataset | None = None,
) -> Dataset:
    """A Comprehensive SR of the class probabilities of one source image.

    The content holds the scores (NUM items), an IMAGE item referencing the source image (with its frame
    number for a multi-frame source) and, when ``overlay`` (the Secondary Capture written for this image)
    is given, an IMAGE item referencing it; both are listed as evidence. The items use a private coding
    scheme (``99MEDCLASS``) except "Source of Measurement": this is a plain record of the scores, not a TID
    1500 measurement report. Patient attributes follow the same de-identification as
    :func:`secondary_capture`. Raises :class:`InputError` for a non-DICOM source and
    :class:`DicomOutputError` when the source cannot be referenced (no SOP Instance UID) or a header value
    cannot be carried into a valid SR.
    """
    src = read_source_header(meta) if source is None else source
    ref = source_ref(meta, src)
    if not ref.sop_uid or not ref.sop_class_uid:
        raise DicomOutputError(
            "the source has no SOP Instance/Class UID: no SR can reference it", meta.source
        )
    try:
        return _build_sr(meta, src, ref, classes, probabilities, explained_class, method, include_phi,
                         series_uid, instance_number, overlay)  # fmt: skip
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom/pydicom reject a value
        raise DicomOutputError(
            f"cannot build the SR ({type(exc).__name__}: {short_message(exc)})", meta.source
        ) from exc


def _build_sr(
    meta: ImageMeta,
    src: Dataset,
    ref: SourceRef,
    classes: list[str] | tuple[str, ...],
    probabilities: list[float] | tuple[float, ...],
    explained_class: str,
    method: str,
    include_phi: bool,
    series_uid: str | None,
    instance_number: int,
    overlay: Dataset | None,
) -> Dataset:
    import highdicom as hd
    from highdicom.sr import CodedConcept

    items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(
            name=CodedConcept("121071", "DCM", "Finding"),
            value=(
                f"medclass classifier scores; saliency by {method} for {explained_class}. Not for diagnostic use."
            )[:1024],
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
    items.append(
        hd.sr.ImageContentItem(
            name=CodedConcept("121112", "DCM", "Source of Measurement"),
            referenced_sop_class_uid=ref.sop_class_uid,
            referenced_sop_instance_uid=ref.sop_uid,
            referenced_frame_numbers=ref.frame_number,
            relationship_type="CONTAINS",
        )
    )
    evidence_items = [evidence(src, ref)]
    if overlay is not None:
        items.append(
            hd.sr.ImageContentItem(
                name=_concept("overlay", "Saliency overlay"),
                referenced_sop_class_uid=str(overlay.SOPClassUID),
                referenced_sop_instance_uid=str(overlay.SOPInstanceUID),
                relationship_type="CONTAINS",
            )
        )
        evidence_items.append(overlay)
    root = hd.sr.ContainerContentItem(name=_concept("report", "medclass classification scores"))
    root.ContentSequence = items  # type: ignore[assignment]  # highdicom converts the list
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence_items,
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
    deidentify(sr, meta.patient_id, include_phi)
    return sr
