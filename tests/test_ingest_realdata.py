"""Ingestion of real files (../shared/data and pydicom's own test files) against known truths."""

from __future__ import annotations

import collections
import csv
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medclass import ingest
from medclass.errors import (
    CorruptFileError,
    MedclassError,
    NoImageError,
    UnsupportedFormatError,
)

pytestmark = pytest.mark.realdata
log = logging.getLogger(__name__)

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _check_images(path: Path, images: list[ingest.Image]) -> None:
    """Every image: finite float32, 2D or H×W×3, mask of the same H×W, meta naming the file."""
    assert images, path
    for k, img in enumerate(images):
        px = img.pixels
        assert px.dtype == np.float32 and px.ndim in (2, 3), (path, px.shape)
        assert px.ndim == 2 or px.shape[2] == 3
        assert np.isfinite(px).all(), path
        if img.mask is not None:
            assert img.mask.shape == px.shape[:2] and img.mask.dtype == bool
        assert img.meta.n_frames == len(images) and img.meta.index == k
        if px.ndim == 3:
            assert px.min() >= 0 and px.max() <= 255.0001, path


def _run_all(files: list[Path]) -> tuple[dict[str, list], collections.Counter]:
    outcome: dict[str, list] = {"ok": [], "error": []}
    kinds: collections.Counter = collections.Counter()
    for f in files:
        try:
            images = ingest.read(f)
        except MedclassError as exc:  # anything else is a bug and fails the test
            assert exc.path == str(f), exc
            assert "\n" not in str(exc), f"multi-line message for {f}: {exc!r}"
            outcome["error"].append((f, exc))
            kinds[type(exc).__name__] += 1
            continue
        _check_images(f, images)
        outcome["ok"].append((f, images))
        kinds["ok"] += 1
    return outcome, kinds


@pytest.mark.slow
def test_every_dicom_sample(dicom_samples):
    files = _files(dicom_samples)
    outcome, kinds = _run_all(files)
    log.info("dicom_samples: %d files, %s", len(files), dict(kinds))
    failed = {f.relative_to(dicom_samples).as_posix(): type(e) for f, e in outcome["error"]}
    assert failed == {
        "README.md": UnsupportedFormatError,
        "inventory.csv": UnsupportedFormatError,
        "pydicom_3.0.2_installed_testfiles.csv": UnsupportedFormatError,
        "dcmqi_ct-3slice/liver.dcm": NoImageError,  # DICOM SEG: not a diagnostic image
    }
    assert kinds["ok"] == 38
    # shapes agree with the headers (mosaic: 35 tiles of 64x64)
    for f, images in outcome["ok"]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        n = int(ds.get("NumberOfFrames", 1) or 1)
        if "MOSAIC" in ds.get("ImageType", []):
            assert len(images) == 35 and images[0].pixels.shape == (64, 64)
        else:
            assert len(images) == n and images[0].pixels.shape[:2] == (ds.Rows, ds.Columns), f


@pytest.mark.slow
def test_every_pydicom_testfile():
    files = _files(PYDICOM_FILES)
    assert len(files) >= 150
    outcome, kinds = _run_all(files)
    log.info("pydicom test files: %d files, %s", len(files), dict(kinds))
    print(f"pydicom test files: {len(files)}: {dict(kinds)}")
    by_name = {f.name: e for f, e in outcome["error"]}
    ok = {f.name for f, _ in outcome["ok"]}
    assert kinds["ok"] >= 80
    assert {"CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm"} <= ok
    assert isinstance(by_name["MR_truncated.dcm"], CorruptFileError)
    assert isinstance(by_name["rtplan.dcm"], NoImageError)
    assert isinstance(by_name["test-SR.dcm"], NoImageError)
    assert isinstance(by_name["liver_1frame.dcm"], NoImageError)
    assert isinstance(by_name["README.txt"], UnsupportedFormatError)
    assert isinstance(by_name["zipMR.gz"], UnsupportedFormatError)


def test_pydicom_twins_identical_across_transfer_syntaxes():
    ref = ingest.read(PYDICOM_FILES / "MR_small.dcm")[0].pixels
    for name in (
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
    ):
        np.testing.assert_array_equal(ingest.read(PYDICOM_FILES / name)[0].pixels, ref, err_msg=name)


def test_rgb_variants_match_lossless_reference():
    ref = ingest.read(PYDICOM_FILES / "SC_rgb_rle.dcm")[0].pixels
    assert ref.shape == (100, 100, 3)
    for name in (
        "SC_rgb_jpeg_gdcm.dcm",
        "SC_rgb_gdcm_KY.dcm",
        "SC_rgb_rle_16bit.dcm",
        "SC_rgb_rle_32bit.dcm",
    ):
        np.testing.assert_allclose(ingest.read(PYDICOM_FILES / name)[0].pixels, ref, atol=1e-4, err_msg=name)
    two = ingest.read(PYDICOM_FILES / "SC_rgb_rle_2frame.dcm")
    assert len(two) == 2
    np.testing.assert_array_equal(two[0].pixels, ref)
    # YBR_FULL / YBR_FULL_422, JPEG baseline and uncompressed: lossy, so close
    for name in (
        "SC_ybr_full_422_uncompressed.dcm",
        "SC_rgb_dcmtk_+eb+cy+s2.dcm",
        "SC_rgb_dcmtk_+eb+cy+s4.dcm",
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_dcmtk_+eb+cr.dcm",
    ):
        img = ingest.read(PYDICOM_FILES / name)[0]
        assert img.pixels.shape == (100, 100, 3)
        assert np.abs(img.pixels - ref).mean() < 3.0, name
        assert img.meta.photometric == pydicom.dcmread(PYDICOM_FILES / name).PhotometricInterpretation


# --- shared data: known truths -------------------------------------------------------------------
def test_dcm_qa_ts_three_syntaxes_identical(dicom_samples):
    a, b, c = (ingest.read(dicom_samples / "dcm_qa_ts" / n) for n in ("1.dcm", "4.dcm", "9.dcm"))
    assert len(a) == len(b) == len(c) == 35
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x.pixels, y.pixels)
        np.testing.assert_array_equal(x.pixels, z.pixels)


def test_mosaic_matches_dcm2niix_nifti(dicom_samples, nifti_samples):
    mosaic = ingest.read(dicom_samples / "dcm_qa_ts" / "1.dcm")
    nifti = ingest.read(nifti_samples / "dcm_qa_ts" / "1.nii")
    assert len(mosaic) == len(nifti) == 35
    for k, (m, n) in enumerate(zip(mosaic, nifti, strict=True)):
        np.testing.assert_array_equal(m.pixels, n.pixels, err_msg=f"slice {k}")
        assert m.meta.slice_position == pytest.approx(n.meta.slice_position, abs=0.01)
    assert mosaic[0].meta.original_shape == (1, 384, 384) and mosaic[0].meta.modality == "MR"
    assert np.diff([m.meta.slice_position for m in mosaic]) == pytest.approx(3.6, abs=1e-3)
    # read_frame picks the same tile, and the header-only path knows the mosaic
    np.testing.assert_array_equal(
        ingest.read_frame(dicom_samples / "dcm_qa_ts" / "9.dcm", 17).pixels, nifti[17].pixels
    )
    assert ingest.read_meta(dicom_samples / "dcm_qa_ts" / "1.dcm").n_frames == 35


def _within_label_spread(volume: np.ndarray, labels: np.ndarray) -> float:
    """Mean within-label standard deviation (weighted by voxels): low when labels sit on their organs."""
    total = n = 0.0
    for lab in np.unique(labels):
        if lab == 0:
            continue
        values = volume[labels == lab]
        total += float(values.std()) * values.size
        n += values.size
    return total / n


@pytest.mark.slow
def test_ct_series_matches_its_label_map(dicom_samples, nifti_samples):
    sources = ingest.discover([dicom_samples / "totalsegmentator_example_ct_dicom"])
    assert len(sources) == 1 and sources[0].format == "dicom-series" and len(sources[0].paths) == 20
    ct = ingest.load(sources[0])
    vol = np.stack([i.pixels for i in ct])  # z×y×x
    assert vol.shape == (20, 512, 512)
    seg = ingest.read(nifti_samples / "totalsegmentator" / "example_seg_dicom.nii.gz")
    labels = np.stack([i.pixels for i in seg]).astype(int)
    assert labels.shape == vol.shape
    # same slice positions (mm along the normal), ascending
    np.testing.assert_allclose(
        [i.meta.slice_position for i in ct], [i.meta.slice_position for i in seg], atol=0.01
    )
    assert np.all(np.diff([i.meta.slice_position for i in ct]) == pytest.approx(2.0))
    # in-plane and through-plane orientation: labels fit the CT best as read
    good = _within_label_spread(vol, labels)
    for flipped in (vol[::-1], vol[:, ::-1], vol[:, :, ::-1]):
        assert good < 0.8 * _within_label_spread(flipped, labels)
    assert ct[0].meta.pixel_spacing == pytest.approx(seg[0].meta.pixel_spacing, abs=1e-3)
    # JPEG 2000 lossless, 12-bit, rescale -1024: air at -1024 HU, body labels mostly soft tissue
    assert vol.min() == -1024
    assert np.median(vol[labels > 0]) > -100


def test_signed_ct_hounsfield_and_padding(dicom_samples):
    (src,) = ingest.discover([dicom_samples / "dcmqi_ct-3slice" / n for n in ("01.dcm", "02.dcm", "03.dcm")])
    assert src.format == "dicom-series"
    for img in ingest.load(src):
        ds = pydicom.dcmread(img.meta.source)
        stored = ds.pixel_array
        assert ds.PixelRepresentation == 1 and ds.PixelPaddingValue == -2000
        np.testing.assert_array_equal(img.mask, stored != -2000)
        np.testing.assert_array_equal(img.pixels, stored.astype(np.float32) - 1024)
        real = img.pixels[img.mask]
        air = real[real < -900]
        assert abs(float(np.median(air)) + 1000) < 30  # outside air around -1000 HU
        assert img.meta.windows[0].center == 40 and img.meta.windows[0].width == 400


def test_monochrome1_and_its_inverted_twin(dicom_samples, tmp_path):
    src = dicom_samples / "highdicom" / "dx_image.dcm"
    ds = pydicom.dcmread(src)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    top = 2**ds.BitsStored - 1
    ds.PixelData = (top - ds.pixel_array).astype(ds.pixel_array.dtype).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME2"
    if "WindowCenter" in ds:
        ds.WindowCenter = top - float(ds.WindowCenter)
    ds.save_as(tmp_path / "twin.dcm")
    m1 = ingest.read(src)[0]
    m2 = ingest.read(tmp_path / "twin.dcm")[0]
    assert m1.meta.photometric == "MONOCHROME1" and m2.meta.photometric == "MONOCHROME2"
    np.testing.assert_array_equal(m1.pixels, top - m2.pixels)  # not inverted on read
    # end to end: once windowed and (for MONOCHROME1) inverted for display, the twins look the same
    preprocess = pytest.importorskip("medclass.preprocess")
    d1, d2 = preprocess.display_image(m1), preprocess.display_image(m2)
    assert np.abs(d1 - d2).max() < 0.01 and d1.std() > 0.05
    assert m1.meta.view_position == str(ds.get("ViewPosition", "")) and m1.meta.body_part == "THORAX"


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"])
def test_jpeg_lossless_agrees_with_independent_decoders(dicom_samples, name):
    from pydicom.pixels import apply_modality_lut, pixel_array

    path = dicom_samples / "pydicom-data" / name
    img = ingest.read(path)[0]
    ds = pydicom.dcmread(path)
    for plugin in ("gdcm", "pylibjpeg"):
        ref = pixel_array(ds, decoding_plugin=plugin)
        np.testing.assert_array_equal(
            img.pixels, apply_modality_lut(ref, ds).astype(np.float32), err_msg=plugin
        )


def test_palette_color_and_ybr_ict(dicom_samples):
    from pydicom.pixels import apply_color_lut

    pal = dicom_samples / "pydicom-data" / "OBXXXX1A_rle.dcm"
    img = ingest.read(pal)[0]
    ds = pydicom.dcmread(pal)
    ref = apply_color_lut(ds.pixel_array, ds).astype(np.float32)
    ref *= 255.0 / (255.0 if ref.max() <= 255 else 65535.0)
    assert img.meta.photometric == "PALETTE COLOR" and img.pixels.shape == (600, 800, 3)
    np.testing.assert_allclose(img.pixels, ref, atol=1e-3)
    assert len({tuple(v) for v in img.pixels[::20, ::20].reshape(-1, 3)}) > 5  # really colour

    us = dicom_samples / "pydicom-data" / "US1_J2KI.dcm"
    img = ingest.read(us)[0]
    assert img.meta.photometric == "YBR_ICT" and img.pixels.shape == (480, 640, 3)
    np.testing.assert_array_equal(img.pixels, pydicom.dcmread(us).pixel_array.astype(np.float32))


def test_enhanced_ct_and_mr_multiframe(dicom_samples):
    ect = ingest.read(dicom_samples / "pydicom-data" / "eCT_Supplemental.dcm")
    assert len(ect) == 2
    ds = pydicom.dcmread(dicom_samples / "pydicom-data" / "eCT_Supplemental.dcm")
    pvt = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    for k, img in enumerate(ect):
        expected = ds.pixel_array[k] * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
        np.testing.assert_array_equal(img.pixels, expected.astype(np.float32))
    assert abs(ect[0].meta.slice_position - ect[1].meta.slice_position) == pytest.approx(10.0)
    mr = [
        ingest.read(dicom_samples / "pydicom-data" / n)
        for n in ("emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm")
    ]
    for other in mr[1:]:
        for a, b in zip(mr[0], other, strict=True):
            np.testing.assert_array_equal(a.pixels, b.pixels)
    assert (
        ingest.read(dicom_samples / "pydicom-data" / "emri_small.dcm", slice_policy="middle")[0].meta.index
        == 5
    )


def test_nifti_orientation_invariance_on_real_lps_volume(nifti_samples, tmp_path):
    src = nifti_samples / "totalsegmentator" / "example_mr_sm.nii.gz"
    img = nib.load(src)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    ras = nib.as_closest_canonical(img)
    nib.save(ras, tmp_path / "ras.nii.gz")
    # and one stored with the slice axis reversed (L, P, I)
    data = np.asanyarray(img.dataobj)
    aff = img.affine.copy()
    aff[:3, 3] = (img.affine @ [0, 0, data.shape[2] - 1, 1])[:3]  # the old last slice is the new first
    aff[:3, 2] *= -1
    nib.save(nib.Nifti1Image(data[:, :, ::-1].copy(), aff, img.header), tmp_path / "lpi.nii.gz")
    a, b, c = (ingest.read(p) for p in (src, tmp_path / "ras.nii.gz", tmp_path / "lpi.nii.gz"))
    assert len(a) == 20 and a[0].pixels.shape == (91, 117)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x.pixels, y.pixels)
        np.testing.assert_array_equal(x.pixels, z.pixels)
        assert x.meta.slice_position == pytest.approx(z.meta.slice_position)
    # the label map (same grid) lines up with the MR as read
    seg = np.stack(
        [i.pixels for i in ingest.read(nifti_samples / "totalsegmentator" / "example_seg_mr.nii.gz")]
    )
    vol = np.stack([i.pixels for i in a])
    assert seg.shape == vol.shape


def test_nifti_ct_label_alignment(nifti_samples):
    ct = np.stack(
        [i.pixels for i in ingest.read(nifti_samples / "totalsegmentator" / "example_ct_sm.nii.gz")]
    )
    seg = np.stack(
        [i.pixels for i in ingest.read(nifti_samples / "totalsegmentator" / "example_seg.nii.gz")]
    ).astype(int)
    assert ct.shape == seg.shape == (30, 101, 122)
    assert _within_label_spread(ct, seg) < 0.8 * _within_label_spread(ct[:, ::-1], seg)
    assert ct.min() >= -1100 and ct.max() <= 1207


def test_kermany_grey_and_rgb_jpeg(kermany):
    rows = list(csv.DictReader((kermany / "labels.csv").read_text().splitlines()))
    grey = next(r for r in rows if r["pil_mode"] == "L")
    rgb = next(r for r in rows if r["pil_mode"] == "RGB")
    for row, ndim in ((grey, 2), (rgb, 3)):
        img = ingest.read(kermany / "images" / row["relpath"].split("images/", 1)[-1])[0]
        assert img.pixels.ndim == ndim and img.pixels.shape[:2] == (int(row["height"]), int(row["width"]))
        assert img.meta.format == "jpeg" and img.pixels.min() >= 0 and img.pixels.max() <= 255
    assert ingest.read_meta(kermany / "images" / rgb["relpath"].split("images/", 1)[-1]).photometric == "RGB"


def test_medmnist_frame_order(medmnist):
    f = medmnist / "pneumoniamnist_official_counts.npz"
    with np.load(f) as z:
        train, val, test = z["train_images"], z["val_images"], z["test_images"]
    fr = ingest.frames(f)
    assert len(fr) == len(train) + len(val) + len(test) == 5856
    np.testing.assert_array_equal(ingest.read_frame(f, 0).pixels, train[0])
    np.testing.assert_array_equal(ingest.read_frame(f, len(train)).pixels, val[0])
    np.testing.assert_array_equal(ingest.read_frame(f, 5855).pixels, test[-1])
    assert ingest.read_frame(f, 10).pixels.shape == (28, 28)


def test_mosaic_without_csa_header_uses_acquisition_matrix(dicom_samples, nifti_samples, tmp_path):
    ds = pydicom.dcmread(dicom_samples / "dcm_qa_ts" / "1.dcm")
    for tag in [e.tag for e in ds if e.tag.group == 0x0029]:
        del ds[tag]
    ds.save_as(tmp_path / "nocsa.dcm")
    tiles = ingest.read(tmp_path / "nocsa.dcm")
    assert len(tiles) == 36  # the 6x6 grid; the 36th tile is empty
    nifti = ingest.read(nifti_samples / "dcm_qa_ts" / "1.nii")
    for t, n in zip(tiles[:35], nifti, strict=True):
        np.testing.assert_array_equal(t.pixels, n.pixels)
    assert tiles[35].pixels.max() == 0
