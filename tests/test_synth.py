"""Tests of medclass.synth: real, valid DICOM files whose truth (label, lesion, display) is known."""

from __future__ import annotations

import collections
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from medclass import synth
from medclass.errors import ConfigError

SIZES = ((256, 256), (320, 280), (240, 300))


def _display(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """What a viewer shows (0..1, MONOCHROME1 inverted) and the non-padding mask."""
    stored = ds.pixel_array
    modality = stored.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    y = np.clip((modality - (c - w / 2)) / w, 0, 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        y = 1 - y
    pad = ds.get("PixelPaddingValue")
    mask = np.ones(stored.shape, bool) if pad is None else stored != pad
    return y, mask


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> synth.SynthDataset:
    return synth.generate_cxr_dataset(
        tmp_path_factory.mktemp("cxr"),
        n_patients=30,
        seed=7,
        sizes=SIZES,
        transfer_syntaxes=("explicit", "rle", "implicit", "jpeg2000"),
        compressed_fraction=0.4,
    )


def test_files_are_valid_part10_with_plausible_headers(data: synth.SynthDataset) -> None:
    required = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyDate",
                "StudyTime", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "Modality", "BodyPartExamined", "ViewPosition", "Manufacturer", "ImagerPixelSpacing",
                "WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept", "PixelRepresentation",
                "PatientOrientation", "SamplesPerPixel"]  # fmt: skip
    for rec in data.records:
        path = data.root / rec.path
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path, force=False)
        missing = [k for k in required if k not in ds]
        assert not missing, (rec.path, missing)
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == rec.sop_uid
        expected_class = {
            "DX": uid.DigitalXRayImageStorageForPresentation,
            "CR": uid.ComputedRadiographyImageStorage,
        }
        assert ds.SOPClassUID == expected_class[ds.Modality]
        assert ds.Manufacturer == "medclass synthetic" and ds.BodyPartExamined == "CHEST"
        assert ds.ViewPosition in ("PA", "AP") and ds.PatientSex in ("F", "M")
        assert (ds.Rows, ds.Columns) == (rec.rows, rec.cols) and (rec.rows, rec.cols) in SIZES
        assert ds.BitsStored == rec.bits_stored and ds.HighBit == ds.BitsStored - 1
        assert ds.PixelRepresentation == 0
        arr = ds.pixel_array
        assert arr.shape == (rec.rows, rec.cols)
        assert arr.dtype == (np.uint8 if ds.BitsAllocated == 8 else np.uint16)
        assert int(arr.max()) <= 2**ds.BitsStored - 1
        if ds.Modality == "DX":
            assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
            assert ds.PresentationIntentType == "FOR PRESENTATION"
        if "PixelSpacing" not in ds:
            assert ds.Modality == "DX"


def test_patient_study_series_hierarchy(data: synth.SynthDataset) -> None:
    by_patient: dict[str, set[str]] = collections.defaultdict(set)
    images = collections.Counter()
    for rec in data.records:
        by_patient[rec.patient_id].add(rec.study_uid)
        images[rec.patient_id] += 1
    assert len(by_patient) == 30
    assert set(images.values()) == {1, 2, 3}
    assert max(len(s) for s in by_patient.values()) == 2  # some patients came back for a second visit
    assert len({r.sop_uid for r in data.records}) == len(data.records)
    studies = [s for v in by_patient.values() for s in v]
    assert len(studies) == len(set(studies))  # a study belongs to one patient
    for rec in data.records:
        assert uid.UID(rec.sop_uid).is_valid and uid.UID(rec.study_uid).is_valid


def test_header_variety(data: synth.SynthDataset) -> None:
    recs = data.records
    assert {r.photometric for r in recs} == {"MONOCHROME1", "MONOCHROME2"}
    assert {r.bits_stored for r in recs} == {8, 12, 14, 16}
    assert {r.transfer_syntax for r in recs} == {"explicit", "rle", "implicit", "jpeg2000"}
    assert {r.modality for r in recs} == {"CR", "DX"}
    assert {r.rows for r in recs} == {256, 320, 240}
    assert any(r.path.endswith(".dcm") for r in recs) and any(not Path(r.path).suffix for r in recs)
    assert any(r.padding_value is not None for r in recs) and any(r.padding_value is None for r in recs)
    assert any((r.rescale_slope, r.rescale_intercept) != (1.0, 0.0) for r in recs)
    names = {r.transfer_syntax: pydicom.dcmread(data.root / r.path).file_meta.TransferSyntaxUID for r in recs}
    assert names == {"explicit": uid.ExplicitVRLittleEndian, "rle": uid.RLELossless,
                     "implicit": uid.ImplicitVRLittleEndian, "jpeg2000": uid.JPEG2000Lossless}  # fmt: skip


def test_compressed_files_decode_to_the_same_pixels(tmp_path: Path) -> None:
    # same seed, same number of syntaxes: the same images, once RLE/J2K-compressed and once uncompressed
    kw = {"n_patients": 6, "seed": 3, "sizes": ((128, 160),), "compressed_fraction": 0.5}
    a = synth.generate_cxr_dataset(tmp_path / "a", transfer_syntaxes=("explicit", "rle", "jpeg2000"), **kw)
    b = synth.generate_cxr_dataset(
        tmp_path / "b", transfer_syntaxes=("explicit", "implicit", "explicit"), **kw
    )
    pairs = [
        (ra, rb) for ra, rb in zip(a.records, b.records, strict=True) if ra.transfer_syntax != "explicit"
    ]
    assert {ra.transfer_syntax for ra, _ in pairs} == {"rle", "jpeg2000"}
    for ra, rb in pairs:
        pa = pydicom.dcmread(a.root / ra.path).pixel_array
        pb = pydicom.dcmread(b.root / rb.path).pixel_array
        np.testing.assert_array_equal(pa, pb)


def test_monochrome1_displays_like_monochrome2() -> None:
    img = synth.make_lesion_image((200, 180), True, seed=5)
    enc = synth.Encoding(
        200, 180, "CR", "MONOCHROME2", 16, 12, 2.0, -1024.0, 0.05, 0.9, None, "explicit", "", "PA"
    )
    s2, c2, w2, _ = synth.to_stored(img, enc)
    s1, c1, w1, _ = synth.to_stored(img, synth.Encoding(**{**enc.__dict__, "photometric": "MONOCHROME1"}))
    top = 2**12 - 1
    np.testing.assert_array_equal(top - s1.astype(int), s2.astype(int))  # M - stored is the MONOCHROME2 image
    assert w1 == w2
    d2 = np.clip((s2 * 2.0 - 1024 - (c2 - w2 / 2)) / w2, 0, 1)
    d1 = 1 - np.clip((s1 * 2.0 - 1024 - (c1 - w1 / 2)) / w1, 0, 1)
    np.testing.assert_allclose(d1, d2, atol=1e-9)
    np.testing.assert_allclose(d2, img, atol=1 / (0.85 * top))  # only rounding is lost


def test_monochrome1_files_resemble_monochrome2_files(data: synth.SynthDataset) -> None:
    stats: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for rec in data.records:
        ds = pydicom.dcmread(data.root / rec.path)
        disp, mask = _display(ds)
        lungs = synth.lung_mask(rec.anatomy, (rec.rows, rec.cols)) & mask
        stats[rec.photometric].append((float(disp[lungs].mean()), float(disp[mask & ~lungs].mean())))
        raw = ds.pixel_array.astype(float)
        inverted = (2**ds.BitsStored - 1) - raw if rec.photometric == "MONOCHROME1" else raw
        assert inverted[lungs].mean() < inverted[mask & ~lungs].mean()  # lungs dark after inversion
    m1, m2 = np.array(stats["MONOCHROME1"]), np.array(stats["MONOCHROME2"])
    np.testing.assert_allclose(m1.mean(axis=0), m2.mean(axis=0), atol=0.05)
    assert (m1[:, 0] < m1[:, 1]).all() and (m2[:, 0] < m2[:, 1]).all()


def test_lesions_inside_lungs_and_visible(data: synth.SynthDataset) -> None:
    positives = [r for r in data.records if r.label == "opacity"]
    assert positives and all(r.lesion is not None for r in positives)
    assert all(r.lesion is None for r in data.records if r.label == "normal")
    for rec in positives:
        les = rec.lesion
        lungs = synth.lung_mask(rec.anatomy, (rec.rows, rec.cols))
        assert lungs[int(les.cy), int(les.cx)], rec.path
        assert 0.04 * rec.cols <= les.r <= 0.08 * rec.cols
        disp, _ = _display(pydicom.dcmread(data.root / rec.path))
        yy, xx = np.mgrid[: rec.rows, : rec.cols]
        d = np.hypot(xx - les.cx, yy - les.cy)
        disc, ring = disp[d < 0.8 * les.r].mean(), disp[(d > 1.5 * les.r) & (d < 2.2 * les.r) & lungs].mean()
        assert disc > ring + 0.05, (rec.path, disc, ring)


def test_label_is_not_leaked_by_encoding(data: synth.SynthDataset, tmp_path: Path) -> None:
    for attr in ("rows", "photometric", "bits_stored", "transfer_syntax", "modality"):
        groups: dict[object, set[str]] = collections.defaultdict(set)
        for rec in data.records:
            groups[getattr(rec, attr)].add(rec.label)
        assert all(labels == {"normal", "opacity"} for labels in groups.values()), (attr, groups)
    # stronger: the header stream does not depend on the labels at all
    kw = {"n_patients": 8, "seed": 11, "sizes": SIZES}
    none = synth.generate_png_dataset(tmp_path / "none", positive_fraction=0.0, **kw)
    every = synth.generate_png_dataset(tmp_path / "all", positive_fraction=1.0, **kw)
    assert {r.label for r in none.records} == {"normal"} and {r.label for r in every.records} == {"opacity"}
    fields = ("path", "rows", "cols", "view", "sex", "study_uid", "sop_uid")
    assert [[getattr(r, f) for f in fields] for r in none.records] == [
        [getattr(r, f) for f in fields] for r in every.records
    ]


def test_positive_fraction_counts_patients(data: synth.SynthDataset) -> None:
    labels = {r.patient_id: r.label for r in data.records}
    assert collections.Counter(labels.values()) == {"normal": 15, "opacity": 15}
    for rec in data.records:  # one label per patient
        assert rec.label == labels[rec.patient_id]


def test_truth_files(data: synth.SynthDataset) -> None:
    with data.labels_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == synth.CSV_FIELDS
    assert [r["path"] for r in rows] == [r.path for r in data.records]
    for row, rec in zip(rows, data.records, strict=True):
        assert (data.root / row["path"]).is_file()
        assert row["patient_id"] == rec.patient_id and row["label"] == rec.label
        assert row["study_id"] == rec.study_uid
        if rec.lesion is None:
            assert row["lesion_x"] == row["lesion_y"] == row["lesion_r"] == ""
        else:
            assert float(row["lesion_x"]) == rec.lesion.cx and float(row["lesion_y"]) == rec.lesion.cy
            assert float(row["lesion_r"]) == rec.lesion.r
    doc = json.loads(data.lesions_json.read_text())
    assert doc["seed"] == 7 and len(doc["images"]) == len(data.records)
    first_pos = next(i for i, r in enumerate(data.records) if r.lesion)
    assert doc["images"][first_pos]["lesion"]["x"] == data.records[first_pos].lesion.cx


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_deterministic_by_seed(tmp_path: Path) -> None:
    kw = {"n_patients": 5, "sizes": ((96, 128),), "compressed_fraction": 0.5}
    a = synth.generate_cxr_dataset(tmp_path / "a", seed=1, **kw)
    b = synth.generate_cxr_dataset(tmp_path / "b", seed=1, **kw)
    c = synth.generate_cxr_dataset(tmp_path / "c", seed=2, **kw)
    assert _digest(a.root) == _digest(b.root)
    assert a.records == b.records
    assert _digest(a.root) != _digest(c.root)
    assert {r.sop_uid for r in a.records}.isdisjoint({r.sop_uid for r in c.records})


def test_phi_markers_in_every_file(tmp_path: Path) -> None:
    markers = {"PatientName": "ZZPHINAME", "PatientID": "ZZPHIID", "PatientBirthDate": "19010101",
               "AccessionNumber": "ZZPHIACC", "InstitutionName": "ZZPHIINST"}  # fmt: skip
    ds = synth.generate_cxr_dataset(tmp_path, n_patients=4, seed=2, sizes=((96, 96),), phi_markers=markers)
    for rec in ds.records:
        raw = (ds.root / rec.path).read_bytes()
        for value in markers.values():
            assert value.encode() in raw, (rec.path, value)
        header = pydicom.dcmread(ds.root / rec.path)
        assert header.PatientName == "ZZPHINAME" and header.PatientBirthDate == "19010101"
        assert header.PatientID.startswith("ZZPHIID") and header.InstitutionName == "ZZPHIINST"
        assert "ZZPHI" not in rec.path  # the marker is in the headers, not in file names
    assert len({r.patient_id for r in ds.records}) == 4
    assert "ZZPHIID" in ds.labels_csv.read_text()


def test_default_identifiers_look_realistic(data: synth.SynthDataset) -> None:
    ds = pydicom.dcmread(data.root / data.records[0].path)
    assert str(ds.PatientName) == "SYNTH^P0001" and ds.PatientID == "SYN-0001"
    assert len(ds.PatientBirthDate) == 8 and ds.PatientBirthDate < ds.StudyDate
    assert ds.PatientAge.endswith("Y") and 18 <= int(ds.PatientAge[:3]) <= 95


def test_make_lesion_image() -> None:
    img = synth.make_lesion_image((160, 200), (60.0, 70.0, 12.0), seed=4)
    same = synth.make_lesion_image((160, 200), (60.0, 70.0, 12.0), seed=4)
    normal = synth.make_lesion_image((160, 200), None, seed=4)
    assert img.shape == (160, 200) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1
    np.testing.assert_array_equal(img, same)
    diff = img - normal
    assert diff[62:78, 52:68].mean() > 0.1  # the opacity is where it was asked for ...
    assert abs(diff[:, 140:].mean()) < 0.02  # ... and nowhere else


def test_png_dataset_matches_dicom_phantoms(tmp_path: Path) -> None:
    from PIL import Image

    kw = {"n_patients": 3, "seed": 9, "sizes": ((96, 112),)}
    png = synth.generate_png_dataset(tmp_path / "png", **kw)
    dcm = synth.generate_cxr_dataset(tmp_path / "dcm", **kw)
    assert [r.lesion for r in png.records] == [r.lesion for r in dcm.records]
    for rp, rd in zip(png.records, dcm.records, strict=True):
        im = Image.open(png.root / rp.path)
        assert im.mode == "L" and im.size == (112, 96) and rp.path.endswith(".png")
        disp, mask = _display(pydicom.dcmread(dcm.root / rd.path))
        err = np.abs(np.asarray(im, float) / 255 - disp)[mask]
        assert err.max() < 0.03


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"transfer_syntaxes": ("explicit", "jpegls")}, "valid: explicit, implicit, rle, jpeg2000"),
        ({"phi_markers": {"PatientNam": "x"}}, "PatientNam"),
        ({"positive_fraction": 1.5}, "positive_fraction"),
        ({"images_per_patient": (2, 1)}, "images_per_patient"),
        ({"sizes": ((16, 16),)}, "sizes"),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path: Path, kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        synth.generate_cxr_dataset(tmp_path, n_patients=2, **kwargs)


def test_lung_mask_matches_the_rendered_lungs() -> None:
    rng = np.random.default_rng(0)
    anatomy = synth.random_anatomy(rng)
    ph = synth.render_phantom((150, 170), anatomy, rng, lesion=True)
    np.testing.assert_array_equal(ph.lungs, synth.lung_mask(anatomy, (150, 170)))
    assert 0.1 < ph.lungs.mean() < 0.4
    # two lung fields, left and right of the midline, darker than the rest of the body
    assert ph.lungs[:, :85].any() and ph.lungs[:, 85:].any() and not ph.lungs[:, 84:86].any()
    soft_tissue = ~ph.lungs & (ph.image > 0.2)  # the body outside the lungs (air around it is darker)
    assert ph.image[ph.lungs].mean() < ph.image[soft_tissue].mean() - 0.15
    assert ph.lesion is not None and ph.lungs[round(ph.lesion.cy), round(ph.lesion.cx)]


@pytest.mark.slow
def test_demo_sized_generation_speed(tmp_path: Path) -> None:
    ds = synth.generate_cxr_dataset(tmp_path, n_patients=60, seed=0)
    assert 60 <= len(ds.records) <= 180 and ds.seconds > 0
    # reported (pytest -rP), not asserted: the machine is shared
    print(f"synth: {len(ds.records)} DICOM images in {ds.seconds:.2f} s")


def test_unknown_or_no_transfer_syntax_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown transfer syntax 'jpeg-xl'; valid: .*rle"):
        synth.generate_cxr_dataset(tmp_path / "a", transfer_syntaxes=("explicit", "jpeg-xl"))
    with pytest.raises(ConfigError, match="no transfer syntax given; valid: "):
        synth.generate_cxr_dataset(tmp_path / "b", transfer_syntaxes=())
