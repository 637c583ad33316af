"""DICOM objects that go back into the source study: the score SR, and any output re-homed there.

:func:`join_study` makes an output part of the source study as the PACS already files it: the source's
patient and study modules copied unchanged (no pseudonyms: the PACS already holds these values), the
StudyInstanceUID kept, and the series and instance UIDs derived (:mod:`medclass.pacs.uids`) so that
pushing it again stores nothing new. :func:`score_sr` is the per-study Comprehensive SR of ``score``;
:func:`encapsulated_pdf` wraps a PDF report.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from medclass import __version__
from medclass.pacs.uids import output_series_uid

#: Patient module and Patient Study / General Study modules (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2)
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence", "OtherPatientNames",
    "EthnicGroup", "PatientComments", "PatientSpeciesDescription", "PatientSpeciesCodeSequence",
    "PatientBreedDescription", "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson",
    "ResponsiblePersonRole", "ResponsibleOrganization", "QualityControlSubject", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "StudyDescription", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "ProcedureCodeSequence",
    "AdmittingDiagnosesDescription", "PatientAge", "PatientSize", "PatientWeight",
)  # fmt: skip
#: Type 2 in every IOD we write: present, empty when the source has no value
TYPE2 = frozenset(
    {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
     "ReferringPhysicianName", "StudyID", "AccessionNumber"}
)  # fmt: skip
NOT_FOR_DIAGNOSIS = "Not for diagnostic use."
_SCHEME = "99MEDCLASS"  # private coding scheme (PS3.16 "99" prefix), as medclass.explain.dicom_out uses
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def join_study(ds: Dataset, source: Dataset, *, sop_uid: str, series_uid: str) -> Dataset:
    """``ds`` with the patient and study modules of ``source`` and the given UIDs (changed in place and
    returned). The attributes are copied as the source has them; absent ones are removed (Type 2 ones
    left empty)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source and (keyword in TYPE2 or _valid(source[keyword])):
            ds[keyword] = source[keyword]  # the same element: tag, VR and value
        elif keyword in TYPE2:
            setattr(ds, keyword, None)
        elif keyword in ds:
            delattr(ds, keyword)
    ds.SeriesInstanceUID = UID(series_uid)
    ds.SOPInstanceUID = UID(sop_uid)
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    return ds


def _valid(element: Any) -> bool:
    """Whether an optional element's value is valid for its VR (an invalid one, such as a PatientAge of
    "62" instead of "062Y", would make our object invalid; it is left out rather than repaired)."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    if element.VR == "SQ":
        return True
    values = element.value if isinstance(element.value, list | tuple) else [element.value]
    try:
        for v in values:
            validate_value(element.VR, v, config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def _concept(value: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value[:16], _SCHEME, meaning[:64])


def _text(value: str, meaning: str, text: str) -> Any:
    import highdicom as hd

    return hd.sr.TextContentItem(
        name=_concept(value, meaning), value=text[:1024], relationship_type="CONTAINS"
    )


def _probabilities(classes: Sequence[str], probs: Sequence[float]) -> list[Any]:
    import highdicom as hd
    from highdicom.sr import CodedConcept

    return [
        hd.sr.NumContentItem(
            name=_concept(f"p:{c}", f"Probability of {c}"),
            value=float(p),
            unit=CodedConcept("1", "UCUM", "no units"),
            relationship_type="CONTAINS",
        )
        for c, p in zip(classes, probs, strict=True)
    ]


def _evidence(source: Dataset, instances: Sequence[tuple[str, str, str]]) -> list[Dataset]:
    """One dataset per (series, sop, sop class) carrying ``source``'s patient and study attributes."""
    out = []
    for series_uid, sop_uid, sop_class in instances:
        ds = Dataset()
        for keyword in PATIENT_STUDY_KEYWORDS:
            if keyword in source and (keyword in TYPE2 or _valid(source[keyword])):
                ds[keyword] = source[keyword]
            elif keyword in TYPE2:
                setattr(ds, keyword, None)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID = series_uid, sop_uid, sop_class
        out.append(ds)
    return out


def score_sr(
    source: Dataset,
    *,
    images: Sequence[dict[str, Any]],
    study: dict[str, Any],
    classes: Sequence[str],
    model_name: str,
    weights_sha256: str,
    sop_uid: str,
) -> Dataset:
    """The Comprehensive SR of one study's scores, in that study.

    ``images``: one dict per scored frame (``series_uid``, ``sop_uid``, ``sop_class_uid``, ``frame``,
    ``probs``); ``study``: the aggregate (``probs``, ``predicted``, ``decision`` rule name, ``aggregation``,
    ``n_images``). The document states the model, its weights' sha256 and that it is not for diagnostic use.
    """
    import highdicom as hd
    from highdicom.sr import CodedConcept

    items: list[Any] = [
        hd.sr.TextContentItem(
            name=CodedConcept("121071", "DCM", "Finding"),
            value=f"medclass classifier scores. {NOT_FOR_DIAGNOSIS} Probabilities are model outputs, not findings.",
            relationship_type="CONTAINS",
        ),
        _text("model", "Model", f"{model_name} (medclass {__version__})"),
        _text("weights", "Model weights SHA-256", weights_sha256 or "unknown"),
        _text("decision", "Decision at the operating point",
              f"{study['predicted'] or '(none)'} (rule {study['decision']}, {study['aggregation']} of "
              f"{study['n_images']} image(s))"),
        *_probabilities(classes, study["probs"]),
    ]  # fmt: skip
    for img in images:
        ref = hd.sr.ImageContentItem(
            name=CodedConcept("121112", "DCM", "Source of Measurement"),
            referenced_sop_class_uid=img["sop_class_uid"],
            referenced_sop_instance_uid=img["sop_uid"],
            referenced_frame_numbers=[int(img["frame"]) + 1] if img.get("n_frames", 1) > 1 else None,
            relationship_type="CONTAINS",
        )
        box = hd.sr.ContainerContentItem(name=_concept("image", "Image scores"), relationship_type="CONTAINS")
        box.ContentSequence = [ref, *_probabilities(classes, img["probs"])]  # type: ignore[assignment]
        items.append(box)
    root = hd.sr.ContainerContentItem(name=_concept("report", "medclass classification scores"))
    root.ContentSequence = items  # type: ignore[assignment]  # highdicom converts the list
    evidence = _evidence(
        source, sorted({(i["series_uid"], i["sop_uid"], i["sop_class_uid"]) for i in images})
    )
    series_uid = output_series_uid(str(source.StudyInstanceUID), weights_sha256, "score-sr")
    with warnings.catch_warnings():  # the source's names are copied as they are, single-component ones too
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        sr = _comprehensive_sr(evidence, root, series_uid, sop_uid, model_name)
    sr.SpecificCharacterSet = "ISO_IR 192"
    return join_study(sr, source, sop_uid=sop_uid, series_uid=series_uid)


def _comprehensive_sr(
    evidence: list[Dataset], root: Any, series_uid: str, sop_uid: str, model_name: str
) -> Any:
    import highdicom as hd

    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=series_uid,
        series_number=9902,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="medclass",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"medclass scores ({model_name}) — not for diagnostic use"[:64],
    )


def encapsulated_pdf(pdf: bytes, source: Dataset, *, title: str, sop_uid: str, series_uid: str) -> Dataset:
    """An Encapsulated PDF instance holding ``pdf`` in ``source``'s study."""
    now = _dt.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)  # written as a Part 10 file
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = UID(ENCAPSULATED_PDF)
    ds.Modality = "DOC"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 9903
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.Manufacturer = "medclass"
    ds.SoftwareVersions = f"medclass {__version__}"
    ds.SeriesDescription = "medclass saliency report — not for diagnostic use"
    ds.DocumentTitle = title[:64]
    ds.BurnedInAnnotation = "YES"  # the report names the patient by pseudonym (or in full with --include-phi)
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return join_study(ds, source, sop_uid=sop_uid, series_uid=series_uid)
