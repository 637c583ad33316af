"""Ingestion on generated files whose truth is known by construction (no shared data needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medclass import ingest
from medclass.errors import (
    ConfigError,
    CorruptFileError,
    ImageTooLargeError,
    MedclassError,
    MissingDecoderError,
    NoImageError,
    UnreadableFileError,
    UnsupportedFormatError,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"


# --- a tiny DICOM writer ---------------------------------------------------------------------------
def make_dicom(
    path: Path,
    stored: np.ndarray | None = None,
    *,
    raw: bytes | None = None,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    sop_class: str = CT,
    frames: int | None = None,
    rows: int | None = None,
    cols: int | None = None,
    samples: int = 1,
    preamble: bool = True,
    **attrs,
) -> Path:
    """Write a Part 10 file with ``stored`` values (or ``raw`` pixel bytes) and extra attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = attrs.pop("transfer_syntax", ExplicitVRLittleEndian)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = attrs.pop("study_uid", "1.2.3.4")
    ds.SeriesInstanceUID = attrs.pop("series_uid", "1.2.3.4.5")
    ds.PatientID = "PAT-1"
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = "ACC42"
    ds.Modality = attrs.pop("modality", "CT")
    if stored is not None or raw is not None or rows is not None:
        if stored is not None:
            r, c = stored.shape[-2:] if samples == 1 else stored.shape[-3:-1]
            frames = frames or (stored.shape[0] if stored.ndim == (3 if samples == 1 else 4) else None)
        ds.Rows = rows or r
        ds.Columns = cols or c
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = bits_stored or bits_allocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(signed)
        ds.SamplesPerPixel = samples
        if samples > 1:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        if frames:
            ds.NumberOfFrames = frames
        if raw is None:
            dtype = {8: "u1", 16: "u2", 32: "u4"}[bits_allocated]
            raw = np.ascontiguousarray(stored).astype(("<i" if signed else "<u") + dtype[1]).tobytes()
        raw = raw + (b"\x00" if len(raw) % 2 else b"")
        if meta.TransferSyntaxUID.is_compressed:
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([raw])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = raw
    for k, v in attrs.items():
        setattr(ds, k, v)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # a bare implicit-VR data set: no preamble, no "DICM", no file meta
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, True
        write_dataset(fp, ds)
        path.write_bytes(fp.getvalue())
    return path


def one(path) -> ingest.Image:
    images = ingest.read(path)
    assert len(images) == 1
    return images[0]


# --- format recognition and bad files ------------------------------------------------------------
def test_dicom_recognised_by_content_without_extension(tmp_path):
    f = make_dicom(tmp_path / "IM0001", np.arange(12, dtype=np.uint16).reshape(3, 4))
    assert ingest.sniff(f) == "dicom"
    img = one(f)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (3, 4)
    np.testing.assert_array_equal(img.pixels, np.arange(12).reshape(3, 4))


def test_empty_file(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"")
    with pytest.raises(UnreadableFileError, match=r"a\.dcm: empty file"):
        ingest.read(tmp_path / "a.dcm")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UnreadableFileError, match="no such file"):
        ingest.read(tmp_path / "nope.dcm")
    with pytest.raises(UnreadableFileError, match="is a folder"):
        ingest.read(tmp_path)


def test_unreadable_permissions(tmp_path, monkeypatch):
    f = make_dicom(tmp_path / "locked.dcm", np.zeros((2, 2), np.uint16))
    f.chmod(0)
    if os.geteuid() == 0:  # root reads anything: pretend the permission check says no
        import medclass.ingest.base as base

        monkeypatch.setattr(base.os, "access", lambda p, mode: False)
    try:
        with pytest.raises(UnreadableFileError, match=r"locked\.dcm: permission denied"):
            ingest.read(f)
    finally:
        f.chmod(0o644)


def test_garbage_named_dcm(tmp_path):
    (tmp_path / "x.dcm").write_text("hello, I am a text file\n" * 20)
    with pytest.raises(
        UnsupportedFormatError, match=r"x\.dcm: named like a dicom file but the content is text"
    ):
        ingest.read(tmp_path / "x.dcm")


def test_dicm_marker_then_garbage(tmp_path):
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 128 + b"DICM" + os.urandom(300))
    with pytest.raises((CorruptFileError, UnsupportedFormatError)) as e:
        ingest.read(tmp_path / "bad.dcm")
    assert "bad.dcm" in str(e.value)


def test_truncated_dicom(tmp_path):
    f = make_dicom(tmp_path / "t.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 3000])
    with pytest.raises(CorruptFileError, match=r"t\.dcm: .*(truncated|less than expected|cannot be decoded)"):
        ingest.read(f)
    # truncated inside the header
    f.write_bytes(data[:200])
    with pytest.raises((CorruptFileError, NoImageError)):
        ingest.read(f)


def test_no_pixel_data_and_non_image_classes(tmp_path):
    f = make_dicom(tmp_path / "sr.dcm", sop_class="1.2.840.10008.5.1.4.1.1.88.33")
    with pytest.raises(NoImageError, match=r"sr\.dcm: no image \(SOP class Comprehensive SR Storage\)"):
        ingest.read(f)
    f = make_dicom(tmp_path / "ct_nopix.dcm")
    with pytest.raises(NoImageError, match="CT Image Storage, no Pixel Data"):
        ingest.read(f)
    seg = make_dicom(
        tmp_path / "seg.dcm",
        np.ones((2, 2), np.uint8),
        bits_allocated=8,
        sop_class="1.2.840.10008.5.1.4.1.1.66.4",
    )
    with pytest.raises(NoImageError, match="Segmentation Storage"):
        ingest.read(seg)
    with pytest.raises(NoImageError):
        ingest.read_meta(seg)


def test_absurd_dimensions_refused_before_allocating(tmp_path, monkeypatch):
    f = make_dicom(tmp_path / "huge.dcm", raw=b"\x00" * 16, rows=60000, cols=60000, frames=1000)
    import medclass.ingest.dicom as dicom_mod

    def boom(*a, **k):
        raise AssertionError("decoder called")

    monkeypatch.setattr(dicom_mod, "_decode", boom)
    with pytest.raises(ImageTooLargeError, match=r"huge\.dcm: declared shape 1000x60000x60000 needs"):
        ingest.read(f)
    # the limit is configurable
    small = make_dicom(tmp_path / "small.dcm", np.zeros((64, 64), np.uint16))
    with pytest.raises(ImageTooLargeError):
        ingest.read(small, max_bytes=1000)
    monkeypatch.setenv("MEDCLASS_MAX_IMAGE_BYTES", "1000")
    with pytest.raises(ImageTooLargeError):
        ingest.read_frame(small, 0)


def test_unknown_transfer_syntax_names_what_to_do(tmp_path):
    f = make_dicom(
        tmp_path / "mpeg.dcm", np.zeros((2, 2), np.uint16), transfer_syntax="1.2.840.10008.1.2.4.100"
    )
    with pytest.raises(MissingDecoderError, match=r"mpeg\.dcm: transfer syntax .*MPEG2.* no pixel decoder"):
        ingest.read(f)


def test_missing_plugin_gives_missing_decoder(monkeypatch):
    from pydicom.data import get_testdata_file
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False)
    monkeypatch.setattr(type(JPEGLSLosslessDecoder), "is_available", property(lambda self: False))
    with pytest.raises(
        MissingDecoderError, match=r"JPEG-LS Lossless.*needs a decoder; install pylibjpeg-libjpeg"
    ):
        ingest.read(path)


# --- pixel semantics ------------------------------------------------------------------------------
def test_rescale_slope_intercept(tmp_path):
    stored = np.array([[0, 100], [1000, 4095]], np.uint16)
    f = make_dicom(tmp_path / "r.dcm", stored, bits_stored=12, RescaleSlope="2.5", RescaleIntercept="-1024")
    np.testing.assert_allclose(one(f).pixels, stored * 2.5 - 1024)


def test_signed_data(tmp_path):
    stored = np.array([[-1000, -1], [0, 3000]], np.int16)
    f = make_dicom(tmp_path / "s.dcm", stored, signed=True, RescaleSlope=1, RescaleIntercept=0)
    np.testing.assert_array_equal(one(f).pixels, stored)


def test_12bit_junk_high_bits_unsigned(tmp_path):
    truth = np.array([[0, 1, 2048], [4095, 100, 7]], np.uint16)
    junk = truth | (np.array([[0xA, 0xF, 0x1], [0x5, 0x0, 0xC]], np.uint16) << 12)
    f = make_dicom(tmp_path / "u12.dcm", junk, bits_stored=12)
    px = one(f).pixels
    np.testing.assert_array_equal(px, truth)
    assert px.max() <= 4095


def test_12bit_junk_high_bits_signed(tmp_path):
    truth = np.array([[-2048, -1, 0], [2047, 5, -100]], np.int16)
    # 12-bit two's complement in the low bits, random junk in the top 4
    low = truth.astype(np.int32) & 0x0FFF
    junk = (low | (np.array([[0x3, 0x0, 0xF], [0x8, 0x1, 0x6]]) << 12)).astype(np.uint16)
    f = make_dicom(tmp_path / "s12.dcm", junk, bits_stored=12, signed=True)
    np.testing.assert_array_equal(one(f).pixels, truth)


def test_pixel_padding_value_and_range(tmp_path):
    stored = np.array([[-2000, -2000, 0], [50, 1000, -1500]], np.int16)
    f = make_dicom(
        tmp_path / "p.dcm",
        stored,
        signed=True,
        PixelPaddingValue=-2000,
        RescaleIntercept=-1024,
        RescaleSlope=1,
    )
    img = one(f)
    np.testing.assert_array_equal(img.mask, stored != -2000)
    assert img.pixels[img.mask].min() == -1500 - 1024  # padding compared on stored values
    ds = pydicom.dcmread(f)
    ds.PixelPaddingRangeLimit = -1500
    ds["PixelPaddingRangeLimit"].VR = "SS"
    ds.save_as(tmp_path / "pr.dcm")
    img = one(tmp_path / "pr.dcm")
    np.testing.assert_array_equal(img.mask, ~((stored >= -2000) & (stored <= -1500)))


def test_meta_windows_voi_lut_and_phi(tmp_path):
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 10, 8])  # LUT Descriptor
    item.add_new(0x00283006, "US", [0, 50, 200, 255])  # LUT Data
    item.LUTExplanation = "tiny"
    f = make_dicom(
        tmp_path / "w.dcm",
        np.zeros((2, 2), np.uint16),
        WindowCenter=["40", "300"],
        WindowWidth=["400", "1500"],
        WindowCenterWidthExplanation=["SOFT", "BONE"],
        VOILUTFunction="LINEAR_EXACT",
        VOILUTSequence=Sequence([item]),
        PixelSpacing=["0.5", "0.25"],
        BodyPartExamined="CHEST",
    )
    for meta in (one(f).meta, ingest.read_meta(f)):
        assert [(w.center, w.width, w.explanation, w.source, w.function) for w in meta.windows] == [
            (40.0, 400.0, "SOFT", "header", "LINEAR_EXACT"),
            (300.0, 1500.0, "BONE", "header", "LINEAR_EXACT"),
        ]
        assert meta.voi_lut is not None and meta.voi_lut.first_mapped == 10 and meta.voi_lut.bits == 8
        np.testing.assert_array_equal(meta.voi_lut.table, [0, 50, 200, 255])
        assert meta.pixel_spacing == (0.5, 0.25)
        assert meta.body_part == "CHEST" and meta.modality == "CT" and meta.patient_id == "PAT-1"
        assert meta.phi == {
            "PatientName": "Doe^Jane",
            "PatientBirthDate": "19700101",
            "AccessionNumber": "ACC42",
        }
        assert meta.original_shape == (1, 2, 2) and meta.bits_stored == 16


def test_monochrome1_not_inverted(tmp_path):
    stored = np.array([[0, 10], [200, 255]], np.uint8)
    f = make_dicom(tmp_path / "m1.dcm", stored, bits_allocated=8, photometric="MONOCHROME1", sop_class=SC)
    img = one(f)
    assert img.meta.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(img.pixels, stored)


def test_ybr_full_becomes_rgb(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [128, 128, 128]]], np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    f = make_dicom(
        tmp_path / "ybr.dcm", ybr, bits_allocated=8, samples=3, photometric="YBR_FULL", sop_class=SC
    )
    img = one(f)
    assert img.is_color and img.meta.photometric == "YBR_FULL"
    np.testing.assert_allclose(img.pixels, rgb, atol=2)


def test_palette_color_generated(tmp_path):
    idx = np.array([[0, 1], [2, 3]], np.uint8)
    red = [0, 65535, 0, 32896]
    green = [0, 0, 65535, 32896]
    blue = [65535, 0, 0, 32896]
    f = make_dicom(
        tmp_path / "pal.dcm",
        idx,
        bits_allocated=8,
        photometric="PALETTE COLOR",
        sop_class=SC,
        RedPaletteColorLookupTableDescriptor=[4, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[4, 0, 16],
        BluePaletteColorLookupTableDescriptor=[4, 0, 16],
        RedPaletteColorLookupTableData=np.array(red, "<u2").tobytes(),
        GreenPaletteColorLookupTableData=np.array(green, "<u2").tobytes(),
        BluePaletteColorLookupTableData=np.array(blue, "<u2").tobytes(),
    )
    img = one(f)
    np.testing.assert_allclose(
        img.pixels, [[[0, 0, 255], [255, 0, 0]], [[0, 255, 0], [128, 128, 128]]], atol=0.01
    )


def test_float_pixel_data_with_nan_masked(tmp_path):
    values = np.array([[0.5, np.nan], [-3.25, 1e3]], np.float32)
    f = make_dicom(tmp_path / "fl.dcm", sop_class="1.2.840.10008.5.1.4.1.1.30", modality="OT")
    ds = pydicom.dcmread(f)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 2, 2, 1, 32
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.FloatPixelData = values.tobytes()
    ds.save_as(f)
    img = one(f)
    np.testing.assert_array_equal(img.mask, [[True, False], [True, True]])
    assert np.isfinite(img.pixels).all()
    np.testing.assert_array_equal(img.pixels[img.mask], values[np.isfinite(values)])


def test_enhanced_per_frame_rescale_and_position(tmp_path):
    stored = np.array([np.full((2, 3), 10), np.full((2, 3), 20)], np.uint16)
    per = []
    for k, (slope, icpt) in enumerate([(1.0, 0.0), (2.0, -5.0)]):
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, icpt, "US"
        pos = Dataset()
        pos.ImagePositionPatient = [0, 0, 7.5 * k]
        item = Dataset()
        item.PixelValueTransformationSequence = Sequence([pvt])
        item.PlanePositionSequence = Sequence([pos])
        per.append(item)
    ori = Dataset()
    ori.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    meas = Dataset()
    meas.PixelSpacing = [0.8, 0.9]
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([ori])
    shared.PixelMeasuresSequence = Sequence([meas])
    f = make_dicom(
        tmp_path / "ect.dcm",
        stored,
        sop_class="1.2.840.10008.5.1.4.1.1.2.1",
        PerFrameFunctionalGroupsSequence=Sequence(per),
        SharedFunctionalGroupsSequence=Sequence([shared]),
    )
    imgs = ingest.read(f)
    assert [float(i.pixels[0, 0]) for i in imgs] == [10.0, 35.0]
    assert [i.meta.slice_position for i in imgs] == [0.0, 7.5]
    assert [i.meta.index for i in imgs] == [0, 1] and imgs[1].meta.n_frames == 2
    assert imgs[0].meta.pixel_spacing == (0.8, 0.9)
    assert ingest.read_frame(f, 1).pixels[0, 0] == 35.0
    with pytest.raises(ConfigError, match="frame 2 out of range"):
        ingest.read_frame(f, 2)


def test_preambleless_dicom(tmp_path):
    f = make_dicom(tmp_path / "raw", np.arange(4, dtype=np.uint16).reshape(2, 2), preamble=False)
    assert f.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(one(f).pixels, [[0, 1], [2, 3]])


def test_read_meta_does_not_decode(tmp_path, monkeypatch):
    import medclass.ingest.dicom as dicom_mod

    f = make_dicom(tmp_path / "m.dcm", np.zeros((4, 4), np.uint16))
    monkeypatch.setattr(
        dicom_mod, "_decode", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded"))
    )
    meta = ingest.read_meta(f)
    assert meta.original_shape == (1, 4, 4) and meta.format == "dicom"


def test_modality_lut_sequence(tmp_path):
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4, 0, 16])  # LUT Descriptor: 4 entries from stored value 0
    lut.add_new(0x00283006, "US", [100, 200, 300, 400])  # LUT Data
    lut.ModalityLUTType = "US"
    stored = np.array([[0, 1], [2, 7]], np.uint16)  # 7 is past the table: clamps to the last entry
    f = make_dicom(tmp_path / "mlut.dcm", stored, bits_stored=3, ModalityLUTSequence=Sequence([lut]))
    np.testing.assert_array_equal(one(f).pixels, [[100, 200], [300, 400]])


# --- properties ---------------------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bits=st.integers(1, 15), signed=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_bits_stored_property(tmp_path, bits, signed, seed):
    """Any BitsStored < 16 with random junk above it: values are the low bits, sign-extended if signed."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 2**16, (4, 5), dtype=np.uint16)  # junk everywhere, including the high bits
    low = (raw & ((1 << bits) - 1)).astype(np.int64)
    truth = np.where(low >= 1 << (bits - 1), low - (1 << bits), low) if signed else low
    f = make_dicom(
        tmp_path / f"b{bits}{int(signed)}.dcm",
        raw=raw.tobytes(),
        rows=4,
        cols=5,
        bits_stored=bits,
        signed=signed,
    )
    np.testing.assert_array_equal(one(f).pixels, truth)


def _pydicom_file(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name, download=False)).read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(
        ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtdose.dcm"]
    ),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=4),
)
def test_damaged_files_raise_only_medclass_errors(tmp_path, name, cut, flips):
    """Truncated or byte-flipped real files either decode to valid pixels or raise a MedclassError."""
    data = bytearray(_pydicom_file(name))
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    data = data[: max(1, int(cut * len(data)))] if cut < 1.0 else data
    f = tmp_path / "damaged.dcm"
    f.write_bytes(bytes(data))
    try:
        images = ingest.read(f)
    except MedclassError as exc:
        assert "damaged.dcm" in str(exc) and "\n" not in str(exc)
    else:
        assert all(i.pixels.dtype == np.float32 and np.isfinite(i.pixels).all() for i in images)
