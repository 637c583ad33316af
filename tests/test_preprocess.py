"""Preprocess stage: window functions against PS3.3 and pydicom, policies, MONOCHROME1, fit geometry,
model input values, and the preview command."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

from medclass.errors import ConfigError, InvalidPixelDataError
from medclass.ingest.types import Image, ImageMeta, VoiLut, Window
from medclass.preprocess import (
    CT_PRESETS,
    FITS,
    WINDOW_POLICIES,
    InputSpec,
    Preprocessor,
    VoiLutTransform,
    WindowTransform,
    crop,
    display_image,
    fit_policy,
    input_spec,
    letterbox,
    linear,
    linear_exact,
    sigmoid,
    stretch,
    window_policy,
)

try:
    from medclass.ingest import read
except ImportError:  # pragma: no cover - ingest not built yet
    read = None
needs_ingest = pytest.mark.skipif(read is None, reason="medclass.ingest.read is not importable yet")


def make(pixels, *, photometric="MONOCHROME2", windows=(), voi_lut=None, mask=None, modality="", **meta):
    px = np.asarray(pixels, dtype=np.float32)
    return Image(
        px,
        ImageMeta(
            source="synthetic.dcm", format="dicom", photometric=photometric, windows=tuple(windows),
            voi_lut=voi_lut, modality=modality, **meta,
        ),
        mask,
    )  # fmt: skip


@pytest.fixture(scope="module")
def spec() -> InputSpec:
    return input_spec()


# --- InputSpec ------------------------------------------------------------------------------------------
def test_input_spec_comes_from_timm():
    import timm

    cfg = timm.get_pretrained_cfg("inception_v3")
    s = input_spec()
    assert s.size == cfg.input_size[1] == cfg.input_size[2]
    assert s.mean == tuple(cfg.mean) and s.std == tuple(cfg.std)
    assert s.interpolation == cfg.interpolation
    assert input_spec(image_size=128).size == 128 and input_spec(image_size=128).mean == s.mean


def test_input_spec_other_model_and_errors():
    import timm

    assert input_spec("resnet18").mean == tuple(timm.get_pretrained_cfg("resnet18").mean)
    with pytest.raises(ConfigError, match="no pretrained config"):
        input_spec("no_such_model")
    with pytest.raises(ConfigError, match="too small"):
        input_spec(image_size=4)


# --- window functions vs PS3.3 C.11.2.1.2 / C.11.2.1.3 ---------------------------------------------------
def test_linear_matches_standard_piecewise_definition():
    c, w = 40.0, 400.0
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2  # -160, 239
    x = np.array([-1000, lo, lo + 1, c - 0.5, 100, hi, hi + 0.01, 3000], np.float32)
    expected = np.where(x <= lo, 0.0, np.where(x > hi, 1.0, (x - (c - 0.5)) / (w - 1) + 0.5))
    np.testing.assert_allclose(linear(x, c, w), expected, atol=1e-6)
    assert linear(np.float32(c - 0.5), c, w) == pytest.approx(0.5)
    # width 1 is a step at c - 0.5
    np.testing.assert_array_equal(linear(np.array([9.4, 9.5, 9.6]), 10, 1), [0, 0, 1])
    with pytest.raises(ConfigError, match="width"):
        linear(x, c, 0.5)


def test_linear_exact_and_sigmoid_match_standard():
    x = np.array([-200, -160, 0, 40, 239, 240, 241, 500], np.float64)
    np.testing.assert_allclose(linear_exact(x, 40, 400), np.clip((x - 40) / 400 + 0.5, 0, 1), atol=1e-6)
    np.testing.assert_allclose(sigmoid(x, 40, 400), 1 / (1 + np.exp(-4 * (x - 40) / 400)), atol=1e-6)
    assert sigmoid(np.array([40.0]), 40, 400)[0] == pytest.approx(0.5)
    for fn in (linear_exact, sigmoid):
        with pytest.raises(ConfigError):
            fn(x, 40, 0)


def _pydicom_norm(ds, arr, function):
    """pydicom apply_windowing output rescaled to 0..1 with pydicom's own y range."""
    ds.VOILUTFunction = function
    out = apply_windowing(arr.copy(), ds)
    bits = ds.BitsStored
    ymin, ymax = (
        (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    )
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    ymin, ymax = ymin * slope + intercept, ymax * slope + intercept
    return (out - ymin) / (ymax - ymin)


@pytest.mark.parametrize(
    "name", ["17106", "MR_small.dcm", "693_J2KI.dcm", "6154", "examples_overlay.dcm"]
)  # CT signed + rescale -1024, MR, CT JPEG 2000, CR MONOCHROME1 12-bit slope 0.684, MR with two windows
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom_on_real_files(name, function):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    arr = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    c = float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter)
    w = float(ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth)
    ours = WindowTransform(Window(c, w, "header", function))(arr.astype(np.float32))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, _pydicom_norm(ds, arr, function), atol=2e-5)
    assert 0 < ours.mean() < 1


def _add_voi_lut(ds, first_mapped: int, n: int, declared_bits: int):
    """A gamma-shaped 12-bit VOI LUT added to a real file (pydicom's test files carry none)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    table = np.round(4095 * np.linspace(0, 1, n) ** 0.5).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [n, first_mapped, declared_bits]
    item.LUTExplanation = "GAMMA TEST"
    item.add_new(0x00283006, "US", table.tolist())
    ds.VOILUTSequence = Sequence([item])
    for key in ("WindowCenter", "WindowWidth"):
        if key in ds:
            del ds[key]
    return table


def test_voi_lut_matches_pydicom_apply_voi_lut():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    arr = ds.pixel_array  # int16, no rescale
    first, last = (int(v) for v in np.percentile(arr, [10, 90]))  # both ends of the table are hit
    table = _add_voi_lut(ds, first_mapped=first, n=last - first, declared_bits=16)
    expected = apply_voi_lut(arr, ds)  # uint16 table values
    lut = VoiLut(first_mapped=first, table=table, bits=16, explanation="GAMMA TEST")
    transform = VoiLutTransform(lut)
    ours = transform(arr.astype(np.float32))
    # the table reaches 4095 although the descriptor says 16 bits: scaled by 4095, not 65535
    np.testing.assert_allclose(ours * 4095, expected, atol=1e-2)
    assert ours.max() == 1.0 and ours.min() == 0.0
    assert transform.window.source == "voi-lut" and transform.window.width == last - first


@needs_ingest
def test_voi_lut_from_a_real_file_through_ingest(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    _add_voi_lut(ds, first_mapped=-20, n=1200, declared_bits=12)
    path = tmp_path / "mr_voilut.dcm"
    ds.save_as(path)
    ds2 = pydicom.dcmread(path)
    expected = apply_voi_lut(ds2.pixel_array, ds2) / 4095.0
    image = read(path)[0]
    assert image.meta.voi_lut is not None
    for policy in ("auto", "voi-lut"):
        np.testing.assert_allclose(display_image(image, policy), expected, atol=1e-6)
    with pytest.raises(ConfigError, match=r"mr_voilut\.dcm"):
        display_image(image, "header")


# --- policies -----------------------------------------------------------------------------------------------
def test_ct_presets_on_hounsfield_units():
    hu = np.array([[-1000, -600, -100, 0], [40, 50, 400, 1500]], np.float32)
    image = make(hu, modality="CT")
    for name, (c, w) in CT_PRESETS.items():
        out = display_image(image, name)
        np.testing.assert_allclose(out, linear(hu, c, w), atol=1e-7)
    lung, media, bone = (display_image(image, n) for n in ("lung", "mediastinum", "bone"))
    assert lung[0, 1] == pytest.approx(0.5, abs=1e-3)  # -600 HU is the lung window's centre
    assert lung[0, 0] < lung[0, 1] and media[0, 1] == 0.0  # aerated lung is black in the mediastinal window
    assert media[1, 1] == pytest.approx(0.5, abs=2e-3) and bone[1, 3] == 1.0
    np.testing.assert_allclose(display_image(image, "-600/1500"), lung)
    assert Preprocessor(input_spec(image_size=32), "lung")(image).window.source == "preset:lung"


@needs_ingest
def test_real_ct_header_window_equals_abdomen_preset(dicom_samples):
    image = read(dicom_samples / "dcmqi_ct-3slice" / "01.dcm")[0]
    assert (image.meta.windows[0].center, image.meta.windows[0].width) == CT_PRESETS["abdomen"]
    np.testing.assert_array_equal(display_image(image, "header"), display_image(image, "abdomen"))
    # on this slice air (about -1000 HU) fills the corners: black in every soft-tissue window
    assert display_image(image, "lung")[:20, :20].max() < 0.05


def test_percentile_ignores_padding_and_paints_it_black():
    rng = np.random.default_rng(0)
    body = rng.normal(2000, 300, (200, 200)).astype(np.float32)  # 12-bit CR-like
    padded = np.full((200, 260), 4095.0, np.float32)  # detector padding, a huge share of pixels
    padded[:, 30:230] = body
    mask = np.zeros(padded.shape, bool)
    mask[:, 30:230] = True
    p = WINDOW_POLICIES["percentile"](make(padded, mask=mask))
    ref = WINDOW_POLICIES["percentile"](make(body))
    assert p.window.center == pytest.approx(ref.window.center) and p.window.width == pytest.approx(
        ref.window.width
    )
    lo, hi = np.percentile(body, [0.5, 99.5])
    assert p.window.center == pytest.approx((lo + hi) / 2, rel=1e-5) and p.window.width == pytest.approx(
        hi - lo
    )
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        out = display_image(make(padded, mask=mask, photometric=photometric))
        assert (out[~mask] == 0).all()
    custom = window_policy("percentile:5,95")(make(body))
    assert custom.window.width == pytest.approx(np.subtract(*np.percentile(body, [95, 5])), rel=1e-5)


def test_auto_prefers_voi_lut_then_header_then_percentile():
    lut = VoiLut(0, np.arange(256, dtype=np.uint16), 8)
    header = Window(100, 50, "header")
    assert (
        WINDOW_POLICIES["auto"](make(np.zeros((4, 4)), windows=[header], voi_lut=lut)).window.source
        == "voi-lut"
    )
    assert WINDOW_POLICIES["auto"](make(np.zeros((4, 4)), windows=[header])).window == header
    assert WINDOW_POLICIES["auto"](make(np.arange(16).reshape(4, 4))).window.source == "percentile"
    second = Window(300, 1500, "header")
    assert window_policy("header:1")(make(np.zeros((4, 4)), windows=[header, second])).window == second


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown window 'softtissue'; valid: auto, header, voi-lut"):
        window_policy("softtissue")
    with pytest.raises(ConfigError, match="valid: letterbox, crop, stretch"):
        fit_policy("pad")
    with pytest.raises(ConfigError, match="LINEAR window width"):
        window_policy("40/0.5")
    with pytest.raises(ConfigError, match=r"synthetic\.dcm"):
        display_image(make(np.zeros((4, 4))), "header")
    with pytest.raises(InvalidPixelDataError, match="shape"):
        display_image(make(np.zeros((4, 4, 2))))


def test_minmax_and_flat_images():
    out = display_image(make(np.array([[100, 200], [300, 500]])), "minmax")
    np.testing.assert_allclose(out, [[0, 0.25], [0.5, 1]])
    assert (display_image(make(np.full((5, 5), 7.0))) == 0.5).all()  # no contrast: mid-grey


def test_colour_images_are_scaled_not_windowed():
    rgb = np.random.default_rng(1).uniform(0, 255, (20, 30, 3)).astype(np.float32)
    out = display_image(make(rgb, photometric="RGB", windows=[Window(40, 400, "header")]), "lung")
    np.testing.assert_allclose(out, rgb / 255, atol=1e-6)


# --- MONOCHROME1 ------------------------------------------------------------------------------------------
def test_monochrome1_and_its_inverted_twin_display_the_same():
    rng = np.random.default_rng(2)
    cr = rng.integers(0, 4096, (64, 48)).astype(np.float32)  # 12-bit CR
    c, w = 1600.0, 2800.0
    mono1 = make(cr, photometric="MONOCHROME1", windows=[Window(c, w, "header")])
    # the twin stores 4095 - x; LINEAR's c - 0.5 reflects to 4095 - (c - 0.5) = (4096 - c) - 0.5
    mono2 = make(4095 - cr, windows=[Window(4096 - c, w, "header")])
    np.testing.assert_allclose(display_image(mono1), display_image(mono2), atol=1e-6)
    for policy in ("percentile", "minmax"):
        np.testing.assert_allclose(display_image(mono1, policy), display_image(mono2, policy), atol=1e-5)
    assert display_image(make(np.full((2, 2), -100.0), photometric="MONOCHROME1"), "0/100")[0, 0] == 1.0


@needs_ingest
def test_real_monochrome1_is_inverted_after_windowing(dicom_samples):
    path = dicom_samples / "highdicom" / "dx_image.dcm"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    arr = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    stored = _pydicom_norm(ds, arr, ds.get("VOILUTFunction", "LINEAR"))  # pydicom does not invert
    np.testing.assert_allclose(display_image(read(path)[0]), 1 - stored, atol=2e-5)


# --- geometry -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fit", list(FITS))
@pytest.mark.parametrize("hw", [(300, 500), (500, 300), (256, 256), (40, 70)])
def test_blob_maps_forward_and_back(fit, hw):
    size = 64
    rows, cols = np.mgrid[: hw[0], : hw[1]]
    r0, c0 = hw[0] * 0.45, hw[1] * 0.55  # inside the centre crop
    sigma = max(hw) / 30
    blob = np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * sigma**2)).astype(np.float32)
    spec = input_spec(image_size=size)
    prep = Preprocessor(spec, "minmax", fit)
    prepared = prep(make(blob))
    view = prep.model_view(prepared)
    ri, ci = prepared.geometry.to_input(r0, c0)
    peak = np.unravel_index(np.argmax(view), view.shape)
    assert abs(peak[0] - ri) <= 1 and abs(peak[1] - ci) <= 1
    back = prepared.geometry.to_original(view)
    assert back.shape == hw and back.dtype == np.float32
    peak_back = np.unravel_index(np.nanargmax(back), hw)
    tol = 1 + max(hw) / size  # one input pixel, in original pixels
    assert abs(peak_back[0] - r0) <= tol and abs(peak_back[1] - c0) <= tol
    assert np.corrcoef(np.nan_to_num(back).ravel(), blob.ravel())[0, 1] > 0.98


def test_geometry_values_for_each_fit():
    g = letterbox((300, 600), 100)
    assert g.content == (25, 0, 50, 100) and g.offset == (25.0, 0.0) and g.scale == (50 / 300, 100 / 600)
    g = crop((300, 600), 100)
    assert g.crop == (0, 150, 300, 300) and g.content == (0, 0, 100, 100)
    _, c = g.to_input(np.array([150, 150]), np.array([149, 450]))
    assert c[0] < 0 and c[1] > 99  # cut away
    back = g.to_original(np.ones((100, 100)))
    assert np.isnan(back[:, :150]).all() and np.isnan(back[:, 450:]).all() and (back[:, 150:450] == 1).all()
    g = stretch((300, 600), 100)
    assert g.scale == (1 / 3, 1 / 6) and g.content == (0, 0, 100, 100)
    with pytest.raises(ConfigError, match="100×100"):
        g.to_original(np.zeros((50, 50)))


def test_letterbox_padding_is_black_and_to_original_ignores_it():
    prep = Preprocessor(input_spec(image_size=60), "0/100", "letterbox")
    prepared = prep(make(np.full((30, 60), 1000.0)))  # white, wide
    view = prep.model_view(prepared)
    top, _, h, _ = prepared.geometry.content
    assert (top, h) == (15, 30) and (view[:top] == 0).all() and (view[top + h :] == 0).all()
    assert np.allclose(view[top : top + h], 1, atol=1e-6)
    assert np.allclose(prepared.geometry.to_original(view), 1, atol=1e-6)  # no black from the bars


# --- model input ----------------------------------------------------------------------------------------
def test_mid_grey_maps_to_normalised_half(spec):
    prepared = Preprocessor(spec)(make(np.full((40, 40), 1234.0)))  # flat → mid-grey
    assert prepared.array.shape == (3, spec.size, spec.size) and prepared.array.dtype == np.float32
    assert prepared.array.flags.c_contiguous
    expected = (0.5 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(
        prepared.array, np.broadcast_to(expected[:, None, None], prepared.array.shape), atol=1e-6
    )
    rgb = Preprocessor(spec, fit="stretch")(make(np.full((10, 20, 3), 127.5), photometric="RGB"))
    np.testing.assert_allclose(rgb.array[:, 5, 5], expected, atol=1e-6)
    black = Preprocessor(spec)(make(np.full((10, 40), 50.0), windows=[Window(500, 100, "header")]))
    np.testing.assert_allclose(
        black.array[:, 0, 0], (0 - np.array(spec.mean)) / np.array(spec.std), atol=1e-6
    )


def test_raw_size_and_metadata_do_not_leak():
    rng = np.random.default_rng(3)
    small = rng.uniform(0, 4095, (64, 64)).astype(np.float32)
    large = np.kron(small, np.ones((4, 4), np.float32))  # same picture, 4× the pixels
    spec = input_spec(image_size=32)
    for fit in FITS:
        prep = Preprocessor(spec, "0/4096", fit)
        a = prep(make(small)).array
        b = prep(make(large, patient_id="X", pixel_spacing=(0.1, 0.1), bits_stored=12)).array
        assert np.abs(a - b).max() < 0.05, fit
    wide = Preprocessor(spec, "0/4096", "crop")(make(np.kron(small, np.ones((1, 2), np.float32)))).array
    assert wide.shape == (3, 32, 32) and (wide > -1).mean() == 1.0  # crop: no black bars


# --- preview --------------------------------------------------------------------------------------------
def _preview(tmp_path, *paths, extra=()):
    from medclass.cli import main

    out = tmp_path / "out"
    code = main(["-q", "preview", *map(str, paths), "--out", str(out), "--size", "64", *extra])
    return code, out


@needs_ingest
def test_preview_writes_pngs_and_collects_errors(tmp_path, capsys):
    from PIL import Image as PILImage

    from medclass.cli import ExitCode

    src = tmp_path / "in"
    src.mkdir()
    PILImage.fromarray((np.arange(48 * 80).reshape(48, 80) % 256).astype(np.uint8)).save(src / "grad.png")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.save_as(src / "ct.dcm")
    code, out = _preview(tmp_path, src, extra=["--window", "lung", "--fit", "crop"])
    assert code == ExitCode.OK
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["ct_f000.png", "grad_f000.png"]
    assert all("CompressedSamples" not in n and str(ds.PatientID) not in n for n in pngs)
    with PILImage.open(out / "ct_f000.png") as im:
        assert im.width > im.height > 100
    # two files of one name in different folders: each PNG names its own input, and previews.csv maps back
    for case in ("case1", "case2"):
        (src / case).mkdir()
        PILImage.fromarray(np.full((40, 40), 7 if case == "case1" else 9, np.uint8)).save(
            src / case / "img.png"
        )
    code, out = _preview(tmp_path, src)
    assert code == ExitCode.OK
    names = sorted(p.name for p in out.glob("*.png"))
    assert "case1__img_f000.png" in names and "case2__img_f000.png" in names
    index = {r["png"]: r for r in csv.DictReader((out / "previews.csv").open())}
    assert index["case2__img_f000.png"]["source"] == "case2/img.png" and index["ct_f000.png"]["frame"] == "0"
    code, out = _preview(tmp_path, src / "grad.png", tmp_path / "missing.dcm")
    assert code == ExitCode.PARTIAL
    err = capsys.readouterr().err
    assert "missing.dcm" in err and "1 image(s) of 2 input(s) failed" in err


@needs_ingest
def test_preview_only_missing_files_is_an_error(tmp_path, capsys):
    from medclass.cli import ExitCode

    code, out = _preview(tmp_path, tmp_path / "nope.dcm")
    assert code == ExitCode.ERROR and not list(out.glob("*.png"))
    assert "nope.dcm" in capsys.readouterr().err


def test_resize_is_antialiased_and_restores_torch_threads():
    import torch

    from medclass.preprocess.geometry import resize

    stripes = np.tile(np.array([0.0, 1.0], np.float32), (64, 32))  # 1-px stripes, 64×64
    before = torch.get_num_threads()
    out = resize(stripes, (16, 16), "bicubic")
    assert torch.get_num_threads() == before
    # antialiasing averages the stripes to grey; plain sampling would alias to black or white
    assert out.shape == (16, 16) and np.allclose(out[:, 1:-1], 0.5, atol=0.01)
    assert np.allclose(out, 0.5, atol=0.05)  # the border column sees one stripe more of one colour
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.realdata
def test_letterbox_bars_reveal_the_kermany_label_crop_does_not(kermany):
    """Why ``crop`` exists: on Kermany the letterbox bars alone predict pneumonia (AUC 0.87)."""
    import csv

    from sklearn.metrics import roc_auc_score

    with open(kermany / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = [int(r["label"]) for r in rows]

    def bar_fraction(fit, row):
        g = fit((int(row["height"]), int(row["width"])), 299)
        return 1 - g.content[2] * g.content[3] / g.size**2

    assert roc_auc_score(labels, [bar_fraction(letterbox, r) for r in rows]) > 0.85
    assert {bar_fraction(crop, r) for r in rows} == {0.0}
    if read is not None:  # and on real pixels: the crop input has image content up to every edge
        image = read(kermany / rows[0]["relpath"])[0]
        prep = Preprocessor(input_spec(image_size=64), fit="crop")
        view = prep.model_view(prep(image))
        assert (
            view.shape == (64, 64)
            and min(view[0].max(), view[-1].max(), view[:, 0].max(), view[:, -1].max()) > 0
        )


def test_preprocessing_does_not_mutate_the_image(spec):
    pixels = np.random.default_rng(4).uniform(-1000, 1000, (50, 70)).astype(np.float32)
    mask = np.ones(pixels.shape, bool)
    mask[:5] = False
    image = make(pixels.copy(), photometric="MONOCHROME1", mask=mask.copy())
    Preprocessor(spec, "lung")(image)
    display_image(image, "percentile")
    np.testing.assert_array_equal(image.pixels, pixels)
    np.testing.assert_array_equal(image.mask, mask)


@needs_ingest
def test_preview_multiframe_slice_policy_and_bad_window(tmp_path, capsys, dicom_samples):
    from medclass.cli import ExitCode

    multi = dicom_samples / "pydicom-data" / "emri_small.dcm"  # 10 frames
    code, out = _preview(tmp_path, multi, extra=["--slice-policy", "all"])
    assert code == ExitCode.OK
    assert sorted(p.name for p in out.glob("*.png")) == [f"emri_small_f{i:03d}.png" for i in range(10)]
    code, _ = _preview(tmp_path, multi, extra=["--window", "softtissue"])
    assert code == ExitCode.ERROR
    assert "unknown window 'softtissue'; valid: auto" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 400), w=st.integers(1, 400), size=st.integers(16, 128), fit=st.sampled_from(sorted(FITS))
)
def test_to_original_inverts_to_input_for_any_shape(h, w, size, fit):
    g = FITS[fit]((h, w), size)
    top, left, ch, cw = g.content
    assert top >= 0 and top + ch <= size and left >= 0 and left + cw <= size
    rows_in, cols_in = np.mgrid[:size, :size].astype(np.float32)
    back_r, back_c = (
        g.to_original(rows_in),
        g.to_original(cols_in),
    )  # H×W: input coordinate seen by each pixel
    exp_r, exp_c = g.to_input(np.arange(h), np.arange(w))
    exp_r = np.clip(exp_r, top, top + ch - 1)[:, None]
    exp_c = np.clip(exp_c, left, left + cw - 1)[None, :]
    seen = ~np.isnan(back_r)
    np.testing.assert_allclose(back_r[seen], np.broadcast_to(exp_r, (h, w))[seen], atol=1e-3)
    np.testing.assert_allclose(back_c[seen], np.broadcast_to(exp_c, (h, w))[seen], atol=1e-3)
    ct, cl, side_h, side_w = g.crop
    assert seen[ct : ct + side_h, cl : cl + side_w].all() and seen.sum() == side_h * side_w


def test_preprocessor_pickles_for_worker_processes(spec):
    import pickle

    image = make(np.random.default_rng(5).uniform(0, 4095, (40, 30)), photometric="MONOCHROME1")
    for window in ("auto", "lung", "-600/1500", "percentile:1,99"):
        prep = Preprocessor(spec, window, "crop")
        clone = pickle.loads(pickle.dumps(prep))
        np.testing.assert_array_equal(clone(image).array, prep(image).array)


def test_preprocessor_from_checkpoint_meta_rebuilds_the_training_preprocessing():
    spec = input_spec(image_size=128)
    meta = {
        "input": {
            "size": 128,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "interpolation": spec.interpolation,
            "model_name": spec.model_name,
        },
        "window": "lung",
        "fit": "crop",
    }  # fmt: skip  (JSON gives lists)
    pre = Preprocessor.from_meta(meta)
    assert pre.spec == spec and pre.window == "lung" and pre.fit == "crop"
    assert Preprocessor.from_meta({"input": meta["input"]}).fit == "letterbox"
