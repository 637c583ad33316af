"""DICOM outputs (``medclass.explain.dicom_out`` / ``dicom_refs``) for every geometry: projection radiographs,
cross-sectional slices (PatientOrientation from ImageOrientationPatient), multi-frame and enhanced
multi-frame sources (per-frame references), series slices, sources stripped of their UIDs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medclass import ingest
from medclass.errors import DicomOutputError, InputError
from medclass.explain.dicom_out import scores_sr, secondary_capture, write_dataset
from medclass.explain.dicom_refs import conformant, orientation_letters, patient_orientation, source_ref


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (scripts/system-deps.sh installs it)")
    res = subprocess.run([exe, str(path)], capture_output=True, text=True)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


def _outputs(image: ingest.Image, tmp: Path, name: str) -> tuple[pydicom.Dataset, pydicom.Dataset]:
    h, w = image.pixels.shape[:2]
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2, :, 0] = 255
    sc = secondary_capture(rgb, image.meta, method="gradcam")
    sr = scores_sr(image.meta, ["a", "b"], [0.25, 0.75], explained_class="b", method="gradcam", overlay=sc)
    sc_path, sr_path = write_dataset(sc, tmp / f"{name}_sc.dcm"), write_dataset(sr, tmp / f"{name}_sr.dcm")
    source_errors = set(_dciodvfy_errors(Path(image.meta.source)))
    assert [e for e in _dciodvfy_errors(sc_path) if e not in source_errors] == []
    assert [e for e in _dciodvfy_errors(sr_path) if e not in source_errors] == []
    return pydicom.dcmread(sc_path), pydicom.dcmread(sr_path)


def _sr_images(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    return [i.ReferencedSOPSequence[0] for i in sr.ContentSequence if i.ValueType == "IMAGE"]


@pytest.mark.parametrize(
    ("ori", "expected"),
    [
        ((1, 0, 0, 0, 1, 0), ("L", "P")),  # axial
        ((0, 1, 0, 0, 0, -1), ("P", "F")),  # sagittal
        ((1, 0, 0, 0, 0, -1), ("L", "F")),  # coronal
        ((-1, 0, 0, 0, -1, 0), ("R", "A")),  # axial, rotated 180°
        ((0.8, 0.6, 0, 0, 0, -1), ("LP", "F")),  # oblique: major axis first
        ((1, 0.0004, 0, 0, 1, 0), ("L", "P")),  # rounding noise is not obliquity
    ],
)
def test_orientation_letters_follow_ps3_3(ori, expected):
    v = np.asarray(ori, dtype=float)
    assert (orientation_letters(v[:3]), orientation_letters(v[3:])) == expected


def test_patient_orientation_prefers_a_valid_own_value_and_skips_quadrupeds():
    ds = pydicom.Dataset()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    assert patient_orientation(ds) == ("L", "P")
    ds.PatientOrientation = ["A", "F"]
    assert patient_orientation(ds) == ("A", "F")
    ds.PatientOrientation = ["garbage", "F"]  # invalid: derived instead
    assert patient_orientation(ds) == ("L", "P")
    ds.AnatomicalOrientationType = "QUADRUPED"  # IOP letters are biped letters: not derived
    assert patient_orientation(ds) is None
    assert patient_orientation(pydicom.Dataset()) is None
    assert conformant("StudyTime", "14:04:38") == "" and conformant("StudyTime", "140438.5") == "140438.5"


def test_ct_slice_gets_derived_orientation_and_no_frame(tmp_path):
    image = ingest.read(get_testdata_file("CT_small.dcm"))[0]
    sc, sr = _outputs(image, tmp_path, "ct")
    assert list(sc.PatientOrientation) == ["L", "P"]  # axial, from ImageOrientationPatient
    ref = sc.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == image.meta.sop_uid and "ReferencedFrameNumber" not in ref
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == image.meta.sop_uid
    assert sc.StudyInstanceUID == image.meta.study_uid and sc.Modality == "CT"
    src_ref, sc_ref = _sr_images(sr)
    assert src_ref.ReferencedSOPInstanceUID == image.meta.sop_uid and "ReferencedFrameNumber" not in src_ref
    assert sc_ref.ReferencedSOPInstanceUID == sc.SOPInstanceUID


def test_mr_slice_and_radiograph(tmp_path, dicom_samples):
    mr = ingest.read(get_testdata_file("MR_small.dcm"))[0]
    sc, _ = _outputs(mr, tmp_path, "mr")
    assert sc.Modality == "MR" and len(sc.PatientOrientation) == 2
    dx = ingest.read(dicom_samples / "highdicom" / "dx_image.dcm")[0]
    sc, _ = _outputs(dx, tmp_path, "dx")
    assert sc.Modality == "DX" and (sc.Rows, sc.Columns) == dx.pixels.shape[:2]


def test_enhanced_multiframe_references_each_frame(tmp_path, dicom_samples):
    frames = ingest.read(dicom_samples / "pydicom-data" / "eCT_Supplemental.dcm")
    assert len(frames) == 2
    for image in frames:
        sc, sr = _outputs(image, tmp_path, f"ect{image.meta.index}")
        assert sc.ReferencedImageSequence[0].ReferencedFrameNumber == image.meta.index + 1
        assert _sr_images(sr)[0].ReferencedFrameNumber == image.meta.index + 1
        assert len(sc.PatientOrientation) == 2  # from the Plane Orientation functional group
    mr = ingest.read(dicom_samples / "pydicom-data" / "emri_small.dcm", slice_policy="middle")[0]
    sc, _ = _outputs(mr, tmp_path, "emri")
    assert sc.ReferencedImageSequence[0].ReferencedFrameNumber == mr.meta.index + 1


def test_series_slice_and_single_frame_class_never_get_a_frame_number(tmp_path, dicom_samples):
    series = ingest.discover([dicom_samples / "dcmqi_ct-3slice"])
    [src] = [s for s in series if s.format == "dicom-series"]
    image = ingest.load(src, slice_policy="middle")[0]
    assert image.meta.n_frames == 3
    sc, _ = _outputs(image, tmp_path, "series")
    assert "ReferencedFrameNumber" not in sc.ReferencedImageSequence[0]
    # a Secondary Capture source that (wrongly) holds two frames: its class is single-frame
    rgb2 = ingest.read(get_testdata_file("SC_rgb_rle_2frame.dcm"))[1]
    sc, _ = _outputs(rgb2, tmp_path, "sc2")
    assert "ReferencedFrameNumber" not in sc.ReferencedImageSequence[0]


def test_source_without_uids_gets_a_stable_generated_study(tmp_path, dicom_samples):
    folder = dicom_samples / "totalsegmentator_example_ct_dicom"
    a, b = sorted(folder.iterdir())[:2]
    ia, ib = ingest.read(a)[0], ingest.read(b)[0]
    assert not ia.meta.study_uid
    sc, _ = _outputs(ia, tmp_path, "ts")
    ref_b = source_ref(ib.meta, pydicom.dcmread(b, stop_before_pixels=True))
    assert sc.StudyInstanceUID == ref_b.study_uid and ref_b.study_uid_generated
    assert sc.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ia.meta.sop_uid  # from the file meta


def test_non_dicom_and_unreferenceable_sources_are_specific_errors(tmp_path):
    image = ingest.read(get_testdata_file("CT_small.dcm"))[0]
    import dataclasses

    with pytest.raises(InputError, match="not a DICOM source"):
        secondary_capture(
            np.zeros((4, 4, 3), np.uint8), dataclasses.replace(image.meta, format="png"), method="m"
        )
    no_sop = dataclasses.replace(image.meta, sop_uid="")
    src = pydicom.dcmread(image.meta.source, stop_before_pixels=True)
    del src.SOPInstanceUID
    with pytest.raises(DicomOutputError, match="no SOP Instance"):
        scores_sr(no_sop, ["a"], [1.0], explained_class="a", method="m", source=src)


@pytest.mark.parametrize("name", ["SC_rgb_rle_16bit.dcm", "OBXXXX1A_rle.dcm", "US1_J2KI.dcm"])
def test_colour_sources(name, tmp_path, dicom_samples):
    path = dicom_samples / "pydicom-data" / name if name.startswith(("OB", "US")) else get_testdata_file(name)
    image = ingest.read(path, slice_policy="middle")[0]
    assert image.is_color
    sc, sr = _outputs(image, tmp_path, name)
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    assert (sc.Rows, sc.Columns) == image.pixels.shape[:2]
    assert _sr_images(sr)[0].ReferencedSOPInstanceUID == image.meta.sop_uid
