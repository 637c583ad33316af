"""NIfTI, PNG/JPEG and MedMNIST npz readers on generated files whose truth is known."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage
from test_ingest import one

from medclass import ingest
from medclass.errors import (
    CorruptFileError,
    ImageTooLargeError,
    InvalidPixelDataError,
    NoImageError,
)


# --- NIfTI ------------------------------------------------------------------------------------------
def _asym_volume():
    vol = np.zeros((4, 5, 3), np.float32)  # x, y, z
    vol[0, 0, 0] = 1  # the voxel at the smallest x, y, z
    vol[3, 0, 0] = 2
    vol[0, 4, 0] = 3
    vol[0, 0, 2] = 4
    return vol


def test_nifti_orientation_ras_las_lps_agree(tmp_path):
    vol = _asym_volume()
    ras = np.diag([2.0, 3.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(vol, ras), tmp_path / "ras.nii")
    # the same anatomy stored with x flipped (LAS) and with x, y flipped (LPS)
    las = ras.copy()
    las[0, 0], las[0, 3] = -2.0, 6.0
    nib.save(nib.Nifti1Image(vol[::-1].copy(), las), tmp_path / "las.nii.gz")
    lps = las.copy()
    lps[1, 1], lps[1, 3] = -3.0, 12.0
    nib.save(nib.Nifti1Image(vol[::-1, ::-1].copy(), lps), tmp_path / "lps.nii")
    results = [ingest.read(tmp_path / n) for n in ("ras.nii", "las.nii.gz", "lps.nii")]
    for imgs in results[1:]:
        for a, b in zip(results[0], imgs, strict=True):
            np.testing.assert_array_equal(a.pixels, b.pixels)
            assert a.meta.slice_position == pytest.approx(b.meta.slice_position)
    s0 = results[0][0].pixels
    assert s0.shape == (5, 4)  # rows = y (A->P), cols = x (R->L)
    # radiological axial: patient's right (max x) on the image left, anterior (max y) at the top
    assert s0[4, 3] == 1 and s0[4, 0] == 2 and s0[0, 3] == 3
    assert results[0][2].pixels[4, 3] == 4  # slices run inferior -> superior
    assert results[0][0].meta.pixel_spacing == (3.0, 2.0)
    assert [i.meta.slice_position for i in results[0]] == [0.0, 4.0, 8.0]


def test_nifti_nan_masked_all_nan_refused(tmp_path):
    vol = np.ones((3, 3, 2), np.float32)
    vol[1, 1, 0] = np.nan
    vol[0, 0, 1] = np.inf
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "n.nii")
    imgs = ingest.read(tmp_path / "n.nii")
    assert all(np.isfinite(i.pixels).all() for i in imgs)
    assert (~imgs[0].mask).sum() == 1 and (~imgs[1].mask).sum() == 1
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), np.nan, np.float32), np.eye(4)), tmp_path / "all.nii")
    with pytest.raises(InvalidPixelDataError, match=r"all\.nii: every voxel is NaN"):
        ingest.read(tmp_path / "all.nii")


def test_nifti_4d_refused_singleton_ok(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 2, 4), np.int16), np.eye(4)), tmp_path / "f.nii")
    with pytest.raises(InvalidPixelDataError, match=r"f\.nii: 4D volume 3x3x2x4"):
        ingest.read(tmp_path / "f.nii")
    nib.save(nib.Nifti1Image(np.ones((3, 3, 2, 1), np.int16), np.eye(4)), tmp_path / "s.nii")
    assert len(ingest.read(tmp_path / "s.nii")) == 2


def test_nifti_truncated_gz(tmp_path):
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20), dtype=np.float32), np.eye(4)),
        tmp_path / "t.nii.gz",
    )
    data = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"t\.nii\.gz"):
        ingest.read(tmp_path / "t.nii.gz")


def test_nifti_absurd_header_refused(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 1000))
    hdr.set_data_dtype(np.int16)
    f = tmp_path / "huge.nii"
    f.write_bytes(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 64)  # header + extension flag + a few bytes
    with pytest.raises(ImageTooLargeError, match=r"huge\.nii: declared shape 30000x30000x1000"):
        ingest.read(f)
    with pytest.raises(ImageTooLargeError):
        ingest.read_meta(f)


# --- PNG / JPEG / npz -------------------------------------------------------------------------------
def test_png_16bit_keeps_values(tmp_path):
    arr = np.array([[0, 1000], [40000, 65535]], np.uint16)
    PILImage.fromarray(arr).save(tmp_path / "a.png")
    img = one(tmp_path / "a.png")
    np.testing.assert_array_equal(img.pixels, arr)
    assert img.meta.bits_stored == 16 and img.meta.photometric == "MONOCHROME2" and img.meta.format == "png"


def test_png_grey_rgb_rgba_palette(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    PILImage.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(one(tmp_path / "g.png").pixels, grey)
    rgb = np.stack([grey, grey // 2, 255 - grey], -1)
    PILImage.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_array_equal(one(tmp_path / "c.png").pixels, rgb)
    PILImage.fromarray(np.dstack([rgb, np.full_like(grey, 7)])).save(tmp_path / "a.png")
    np.testing.assert_array_equal(one(tmp_path / "a.png").pixels, rgb)
    PILImage.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert one(tmp_path / "p.png").pixels.shape == (3, 4, 3)


def test_jpeg_grey_and_rgb_of_grey(tmp_path):
    grey = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (32, 1))
    PILImage.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    PILImage.fromarray(np.dstack([grey] * 3)).save(tmp_path / "c.jpeg", quality=95)
    g, c = one(tmp_path / "g.jpg"), one(tmp_path / "c.jpeg")
    assert g.pixels.shape == (32, 64) and c.pixels.shape == (32, 64, 3)
    assert c.meta.photometric == "RGB" and g.meta.format == "jpeg"
    assert np.abs(g.pixels - grey).mean() < 2 and np.abs(c.pixels[..., 1] - grey).mean() < 2


def test_truncated_png(tmp_path):
    PILImage.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        tmp_path / "t.png"
    )
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"t\.png"):
        ingest.read(tmp_path / "t.png")


def test_npz_frame_order(tmp_path):
    train = np.stack([np.full((4, 4), i, np.uint8) for i in range(3)])
    val = np.full((1, 4, 4), 10, np.uint8)
    test = np.full((2, 4, 4), 20, np.uint8)
    extra = np.full((1, 4, 4), 30, np.uint8)
    np.savez(
        tmp_path / "m.npz",
        extra_images=extra,
        test_images=test,
        train_images=train,
        val_images=val,
        train_labels=np.zeros((3, 1)),
    )
    f = tmp_path / "m.npz"
    imgs = ingest.read(f)
    assert [float(i.pixels[0, 0]) for i in imgs] == [0, 1, 2, 10, 20, 20, 30]
    assert ingest.read_frame(f, 3).pixels[0, 0] == 10 and ingest.read_frame(f, 3).meta.n_frames == 7
    np.savez(tmp_path / "labels.npz", train_labels=np.zeros(3))
    with pytest.raises(NoImageError, match="no '\\*_images' array"):
        ingest.read(tmp_path / "labels.npz")


def test_npz_3d_volumes_give_middle_slice(tmp_path):
    vols = np.zeros((2, 5, 4, 4), np.uint8)
    vols[1, 2] = 255  # middle slice (index 2 of 5) of volume 1
    np.savez(tmp_path / "adrenal.npz", train_images=vols)
    imgs = ingest.read(tmp_path / "adrenal.npz")
    assert len(imgs) == 2 and imgs[1].pixels.shape == (4, 4)
    assert imgs[0].pixels.max() == 0 and imgs[1].pixels.min() == 255


# --- DICOM: corrupt lengths, non-conformant JPEG, missing decoders ---------------------------------------
def _ct_small_bytes() -> bytes:
    from pydicom.data import get_testdata_file

    with open(get_testdata_file("CT_small.dcm", download=False), "rb") as fh:
        return fh.read()


def test_dicom_absurd_element_length_reads_short_not_4gib(tmp_path):
    """A length field of ~4 GiB in a 40 kB file: no 4 GiB reservation, even under a memory limit."""
    import struct
    import subprocess
    import sys

    data = bytearray(_ct_small_bytes())
    at = data.rfind(b"\xe0\x7f\x10\x00OW\x00\x00")  # Pixel Data, explicit VR: 32-bit length after VR
    struct.pack_into("<I", data, at + 8, 0xFFFFFFF0)
    f = tmp_path / "huge_len.dcm"
    f.write_bytes(bytes(data))
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from medclass import ingest\n"
        "from medclass.errors import MedclassError\n"
        "try:\n"
        "    print('shape', ingest.read(sys.argv[1])[0].pixels.shape)\n"
        "except MedclassError as exc:\n"
        "    print('error', exc.kind, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MemoryError" not in out.stdout + out.stderr, out.stdout
    assert out.stdout.startswith(("shape (128, 128)", "error corrupt")), out.stdout


def test_dicom_memory_error_while_parsing_is_corrupt(tmp_path, monkeypatch):
    from medclass.ingest import dicom as dicom_reader

    f = tmp_path / "ct.dcm"
    f.write_bytes(_ct_small_bytes())

    def no_memory(*_a, **_k):
        raise MemoryError

    monkeypatch.setattr(dicom_reader, "_pydicom_read", no_memory)
    with pytest.raises(CorruptFileError, match=r"ct\.dcm: .*declared element length"):
        ingest.read(f)


def test_jpeg_extended_12bit_with_non_sequential_scan_header_decodes():
    """pydicom's JPEG-lossy.dcm (12-bit JPEG Extended, SOS Se=0): decoded like libjpeg 6b does."""
    from pydicom.data import get_testdata_file

    img = ingest.read(get_testdata_file("JPEG-lossy.dcm", download=False))[0]
    assert img.pixels.shape == (1024, 256)
    assert img.pixels.min() == 0 and 200 < img.pixels.max() < 4096  # a 12-bit NM bone scan (max 264)
    assert 5 < float(img.pixels.mean()) < 50


def test_sequential_scan_fixed_only_touches_bad_scan_headers():
    from medclass.ingest.jpeg_repair import sequential_scan_fixed

    good = (
        b"\xff\xd8"
        + b"\xff\xc1\x00\x0b\x0c\x00\x02\x00\x02\x01\x01\x11\x00"
        + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
        + b"\x12\xff\x00\x34\xff\xd0\x56"
        + b"\xff\xd9"
    )
    assert sequential_scan_fixed(good) is None
    bad = good.replace(b"\x00\x3f\x00\x12", b"\x00\x00\x00\x12")
    assert sequential_scan_fixed(bad) == good
    progressive = bad.replace(b"\xff\xc1", b"\xff\xc2")
    assert sequential_scan_fixed(progressive) is None  # Ss/Se mean something there
    assert sequential_scan_fixed(b"not a jpeg") is None


def test_jpeg_12bit_without_a_capable_plugin_is_missing_decoder(monkeypatch):
    """Only Pillow (8-bit JPEG only) available: the file needs a decoder, it is not corrupt."""
    from pydicom.data import get_testdata_file

    from medclass.errors import MissingDecoderError
    from medclass.ingest import dicom as dicom_reader

    monkeypatch.setattr(dicom_reader, "plugin_order", lambda decoder, ts: ["pillow"])
    with pytest.raises(MissingDecoderError, match=r"JPEG-lossy\.dcm: .*12-bit.*pylibjpeg-libjpeg"):
        ingest.read(get_testdata_file("JPEG-lossy.dcm", download=False))


# --- reduced-resolution JPEG decoding (the min_size hint) ------------------------------------------------


def _gradient_jpeg(path, w: int, h: int, orientation: int | None = None) -> None:
    yy, xx = np.mgrid[:h, :w]
    arr = ((xx * 200 // w) + (yy * 50 // h)).astype(np.uint8)
    im = PILImage.fromarray(arr, "L")
    exif = PILImage.Exif()
    if orientation:
        exif[0x0112] = orientation
    im.save(path, quality=95, exif=exif.tobytes())


def test_jpeg_min_size_decodes_at_a_power_of_two_scale(tmp_path):
    p = tmp_path / "big.jpg"
    _gradient_jpeg(p, 1600, 1200)
    full = ingest.read_frame(p, 0)
    half = ingest.read_frame(p, 0, min_size=500)  # 1/2: 800×600 (1/4 would make the short side 300)
    quarter = ingest.read_frame(p, 0, min_size=299)  # 1/4: 400×300 ≥ 299 (1/8 would be 150)
    assert full.pixels.shape == (1200, 1600) and full.meta.decoded_scale == 1.0
    assert half.pixels.shape == (600, 800) and half.meta.decoded_scale == 0.5
    assert quarter.pixels.shape == (300, 400) and quarter.meta.decoded_scale == 0.25
    for im in (half, quarter):
        assert im.meta.original_shape == (1200, 1600)
        block = round(1 / im.meta.decoded_scale)
        means = full.pixels.reshape(im.pixels.shape[0], block, im.pixels.shape[1], block).mean(axis=(1, 3))
        assert np.abs(means - im.pixels).mean() < 1.5  # the same picture, block-averaged
    # too small to shrink, PNG, or no hint: decoded as stored
    assert ingest.read_frame(p, 0, min_size=700).meta.decoded_scale == 1.0
    png = tmp_path / "big.png"
    PILImage.fromarray(full.pixels.astype(np.uint8)).save(png)
    assert ingest.read_frame(png, 0, min_size=299).pixels.shape == (1200, 1600)


def test_jpeg_min_size_with_exif_rotation_keeps_the_viewer_orientation(tmp_path):
    p = tmp_path / "rot.jpg"
    _gradient_jpeg(p, 1600, 1200, orientation=6)  # stored landscape, shown portrait
    full = ingest.read_frame(p, 0)
    small = ingest.read_frame(p, 0, min_size=299)
    assert full.pixels.shape == (1600, 1200)
    assert small.pixels.shape == (400, 300) and small.meta.original_shape == (1600, 1200)
    assert np.abs(full.pixels[::4, ::4] - small.pixels).mean() < 3  # same orientation


def test_jpeg_min_size_on_real_radiographs(kermany):
    """On the Kermany radiographs, the fast path's model inputs stay close to the exact path's."""
    from medclass.preprocess import Preprocessor, input_spec

    files = sorted(kermany.rglob("*.jpeg"))[:12]
    assert files, f"no JPEGs under {kermany}"
    pre = Preprocessor(input_spec(), fit="crop")
    reduced = 0
    for f in files:
        exact = pre(ingest.read_frame(f, 0)).array
        image = ingest.read_frame(f, 0, min_size=2 * 299)
        assert min(image.pixels.shape) >= 598 or image.meta.decoded_scale == 1.0
        reduced += image.meta.decoded_scale < 1.0
        fast = pre(image).array
        assert fast.shape == exact.shape == (3, 299, 299)
        assert np.abs(fast - exact).mean() < 0.01, f
    assert reduced >= len(files) // 2, f"only {reduced}/{len(files)} radiographs took the fast path"
