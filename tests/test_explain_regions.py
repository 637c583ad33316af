"""Regions from a saliency map (boxes, outlines, ranking) and the localisation metrics with their chance
baselines; the trained-lesion check lives in test_explain.py (it reuses that file's briefly trained model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medclass.errors import ConfigError, DataError
from medclass.explain.regions import RegionFinder, choose_region_threshold, csv_fields, regions_mask
from medclass.metrics.localisation import (
    LocalisationCase,
    box_iou,
    disc_fraction,
    localisation_scores,
)


def blobs(h: int = 120, w: int = 160) -> np.ndarray:
    """Two Gaussian blobs: a strong one at (x=40, y=30) and a weaker one at (x=120, y=90)."""
    yy, xx = np.mgrid[:h, :w] + 0.5
    a = np.exp(-((xx - 40) ** 2 + (yy - 30) ** 2) / (2 * 8.0**2))
    b = 0.7 * np.exp(-((xx - 120) ** 2 + (yy - 90) ** 2) / (2 * 10.0**2))
    return (a + b).astype(np.float32)


def _inside(poly: np.ndarray, x: float, y: float) -> bool:
    from matplotlib.path import Path

    return bool(Path(poly).contains_point((x, y)))


def test_regions_are_ranked_boxed_and_outlined():
    sal = blobs()
    regions = RegionFinder(threshold=0.5, max_regions=5)(sal)
    assert len(regions) == 2
    first, second = regions
    assert (first.rank, second.rank) == (1, 2)
    assert first.peak == pytest.approx(float(sal.max())) and first.peak > second.peak
    assert first.peak_xy == pytest.approx((40, 30), abs=1.0) and second.peak_xy == pytest.approx(
        (120, 90), abs=1.0
    )
    # the half-maximum of a Gaussian of sigma 8 is at radius 8 * sqrt(2 ln 2) = 9.4 px
    x0, y0, x1, y1 = first.box
    assert x0 == pytest.approx(40 - 9.4, abs=1.5) and x1 == pytest.approx(40 + 9.4, abs=1.5)
    assert y0 == pytest.approx(30 - 9.4, abs=1.5) and y1 == pytest.approx(30 + 9.4, abs=1.5)
    mask = regions_mask(sal, 0.5)
    assert first.area_px + second.area_px == int(mask.sum())
    assert 0.5 * sal.max() <= first.mean <= first.peak
    poly = np.asarray(first.polygon)
    assert 8 <= len(poly) <= 128
    assert _inside(poly, 40, 30) and not _inside(poly, 120, 90)
    r = np.hypot(poly[:, 0] - 40, poly[:, 1] - 30)  # the outline is the half-maximum circle
    assert np.allclose(r, 9.4, atol=0.6)
    assert (poly[:, 0] >= x0 - 0.5).all() and (poly[:, 0] <= x1 + 0.5).all()
    d = first.to_dict()
    assert d["rank"] == 1 and len(d["box"]) == 4 and len(d["polygon"]) == len(poly)


def test_threshold_and_max_regions_change_what_is_found():
    sal = blobs()
    assert len(RegionFinder(0.8)(sal)) == 1  # the weaker blob (0.7) drops out
    assert len(RegionFinder(0.3, max_regions=1)(sal)) == 1
    low = RegionFinder(0.2)(sal)[0]
    high = RegionFinder(0.8)(sal)[0]
    assert low.area_px > high.area_px
    assert RegionFinder()(np.zeros((10, 10), np.float32)) == []
    nan_map = sal.copy()
    nan_map[:, :20] = np.nan  # not seen by the model
    assert RegionFinder()(nan_map)[0].box[0] >= 20
    with pytest.raises(ConfigError, match="between 0 and 1"):
        RegionFinder(1.5)
    with pytest.raises(ConfigError, match="max-regions"):
        RegionFinder(max_regions=0)
    with pytest.raises(DataError, match="2D"):
        RegionFinder()(np.zeros((2, 3, 4)))


def test_region_touching_the_border_is_closed_and_csv_is_flat():
    sal = np.zeros((50, 60), np.float32)
    sal[:10, :15] = 1.0  # a corner block
    (reg,) = RegionFinder(0.5)(sal)
    assert reg.box == (0.0, 0.0, 15.0, 10.0)
    poly = np.asarray(reg.polygon)
    assert poly[:, 0].min() == pytest.approx(0.0, abs=0.51) and poly[:, 1].max() == pytest.approx(
        10.0, abs=0.51
    )
    row = csv_fields([reg], 2)
    assert row["n_regions"] == 1 and row["region_1_box"] == "0.0 0.0 15.0 10.0" and row["region_2_box"] == ""


def test_box_iou_and_disc_fraction():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert disc_fraction(100, 100, (50, 50, 10)) == pytest.approx(np.pi * 100 / 10_000, rel=0.03)


def _cases(offset: float, n: int = 30, seed: int = 0) -> list[LocalisationCase]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x, y, r = *rng.uniform(40, 160, 2), rng.uniform(10, 20)
        px, py = x + offset, y
        out.append(LocalisationCase(200, 200, (x, y, r), (px, py), (px - r, py - r, px + r, py + r)))
    return out


def test_scores_separate_a_localiser_from_chance():
    good = localisation_scores(_cases(0.0))
    assert good.pointing == 1.0 and good.mean_iou == pytest.approx(1.0)
    assert good.iou_hit_rate == {0.1: 1.0, 0.3: 1.0, 0.5: 1.0}
    assert 0 < good.pointing_chance < 0.05 and 0 < good.mean_iou_chance < 0.05
    assert good.iou_hit_rate_chance[0.5] < good.iou_hit_rate_chance[0.1] < 0.1
    off = localisation_scores(_cases(60.0))  # always 60 px to the right: misses everything
    assert off.pointing == 0.0 and off.mean_iou == 0.0
    # boxes placed at random score what their chance baseline predicts
    rng = np.random.default_rng(1)
    rand = []
    for c in _cases(0.0, n=400):
        x0, y0 = rng.uniform(0, 200 - 2 * c.lesion[2], 2)
        rand.append(
            LocalisationCase(
                200, 200, c.lesion, (x0, y0), (x0, y0, x0 + 2 * c.lesion[2], y0 + 2 * c.lesion[2])
            )
        )
    s = localisation_scores(rand)
    assert s.mean_iou == pytest.approx(s.mean_iou_chance, abs=0.01)
    assert s.iou_hit_rate[0.1] == pytest.approx(s.iou_hit_rate_chance[0.1], abs=0.03)
    assert localisation_scores(_cases(0.0)).to_dict()["iou_hit_rate"]["0.3"] == 1.0
    with pytest.raises(DataError, match="no images"):
        localisation_scores([])


def test_threshold_chosen_on_lesions_fits_their_size():
    yy, xx = np.mgrid[:100, :100] + 0.5
    maps, boxes = [], []
    for cx, cy in ((30, 30), (70, 60), (50, 40)):
        maps.append(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 10.0**2)).astype(np.float32))
        boxes.append(
            (cx - 6.0, cy - 6.0, cx + 6.0, cy + 6.0)
        )  # lesion radius 6 = the map at exp(-0.18) = 0.84
    t, iou = choose_region_threshold(maps, boxes)
    assert t == pytest.approx(0.85, abs=0.051) and iou > 0.85
    with pytest.raises(DataError):
        choose_region_threshold(maps, boxes[:1])


# --- medclass explain --regions: tables, report, DICOM SR and SEG ------------------------------------------
@pytest.fixture(scope="module")
def regions_run(tmp_path_factory) -> dict:
    from test_explain_outputs import MARKERS, _checkpoint, _run

    from medclass.synth import generate_cxr_dataset

    root = tmp_path_factory.mktemp("regions")
    data = generate_cxr_dataset(root / "data", n_patients=2, images_per_patient=(1, 2),
                                sizes=((200, 176), (160, 208)), phi_markers=MARKERS, seed=5)  # fmt: skip
    stem = _checkpoint(root)
    out = root / "out"
    argv = ["explain", "--checkpoint", str(stem), str(root / "data"), "--out", str(out), "--layer", "Mixed_6e",
            "--faithfulness", "none", "--regions", "--region-threshold", "0.6", "--max-regions", "2",
            "--dicom", "--seg"]  # fmt: skip
    rc, logs = _run(argv)
    return dict(data=data, out=out, rc=rc, logs=logs, stem=stem, root=root)


@pytest.mark.slow
def test_regions_in_tables_and_reports(regions_run):
    from medclass.cli import ExitCode

    out = regions_run["out"]
    assert regions_run["rc"] == ExitCode.OK, regions_run["logs"]
    doc = json.loads((out / "explanations.json").read_text())
    assert doc["region_threshold"] == 0.6
    sizes = {r.sop_uid: (r.rows, r.cols) for r in regions_run["data"].records}
    assert len(doc["images"]) == len(sizes)
    for row in doc["images"]:
        assert 1 <= row["n_regions"] == len(row["regions"]) <= 2
        first = row["regions"][0]
        assert first["rank"] == 1 and first["peak"] == pytest.approx(
            1.0, abs=0.02
        )  # maps scaled to their peak
        assert first["mean"] >= 0.6 * first["peak"] - 1e-6
        x0, y0, x1, y1 = first["box"]
        assert 0 <= x0 < x1 and 0 <= y0 < y1 and len(first["polygon"]) >= 3
        assert row["region_1_box"] == " ".join(f"{v:.1f}" for v in first["box"])
        assert row["regions_sr"].endswith("_regions_sr.dcm") and row["regions_seg"].endswith(
            "_regions_seg.dcm"
        )
    header = (out / "explanations.csv").read_text().splitlines()[0].split(",")
    assert {"n_regions", "region_1_box", "region_2_peak", "regions_sr", "regions_seg"} <= set(header)
    assert "regions" not in header  # polygons only in the JSON
    html = (out / doc["images"][0]["report_html"]).read_text()
    assert "Regions: connected areas where the map is at least 0.6 × its peak" in html
    assert "not a segmentation" in html
    n_in_report = sum(r["report_html"] == doc["images"][0]["report_html"] for r in doc["images"])
    assert html.count("data:image/png;base64,") == 3 * n_in_report  # original, overlay, regions


@pytest.mark.slow
def test_regions_sr_and_seg_validate_and_reference_the_source(regions_run):
    import subprocess

    import pydicom
    from test_explain_outputs import NEEDLES, need

    dciodvfy = need("dciodvfy")
    out = regions_run["out"]
    sources = {r.sop_uid: r for r in regions_run["data"].records}
    doc = json.loads((out / "explanations.json").read_text())
    for row in doc["images"]:
        for name in (row["regions_sr"], row["regions_seg"]):
            res = subprocess.run([dciodvfy, str(out / name)], capture_output=True, text=True)
            errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
            assert errors == [], f"{name}: {errors}"
            blob = (out / name).read_bytes()
            assert not [n for n in NEEDLES if n.encode() in blob], f"identifiers in {name}"
        sr = pydicom.dcmread(out / row["regions_sr"])
        assert sr.SOPClassUID.name == "Comprehensive 3D SR Storage"
        assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        scoords = _items(sr.ContentSequence, "SCOORD")
        assert len(scoords) == 2 * row["n_regions"]  # outline and box per region
        ref = scoords[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert ref in sources and sr.StudyInstanceUID == sources[ref].study_uid
        rows, cols = sources[ref].rows, sources[ref].cols
        for it in scoords:
            pts = np.asarray(it.GraphicData, float).reshape(-1, 2)
            assert it.GraphicType == "POLYLINE" and np.allclose(pts[0], pts[-1])  # closed
            assert (pts[:, 0] >= 0).all() and (pts[:, 0] <= cols).all() and (pts[:, 1] <= rows).all()
        box = np.asarray(scoords[1].GraphicData, float).reshape(-1, 2)
        assert box[:, 0].min() == pytest.approx(row["regions"][0]["box"][0], abs=0.01)
        seg = pydicom.dcmread(out / row["regions_seg"])
        assert seg.SegmentationType == "BINARY" and seg.StudyInstanceUID == sources[ref].study_uid
        assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ref
        mask = seg.pixel_array.reshape(rows, cols).astype(bool)
        px, py = row["regions"][0]["peak_xy"]
        assert mask[int(py), int(px)] and mask.sum() >= row["regions"][0]["area_px"]
        assert str(seg.PatientName) in ("ANONYMIZED^", "ANONYMIZED") and seg.PatientIdentityRemoved == "YES"


def _items(seq, value_type: str) -> list:
    """Every content item of ``value_type`` in an SR content tree."""
    out = []
    for it in seq:
        if it.ValueType == value_type:
            out.append(it)
        out += _items(it.get("ContentSequence", []), value_type)
    return out


def test_region_flags_need_regions_and_dicom(tmp_path, capsys):
    from medclass.cli import ExitCode, main

    base = ["explain", "--checkpoint", str(tmp_path / "none"), str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*base, "--seg"]) == ExitCode.ERROR
    assert "need --regions" in capsys.readouterr().err
    assert main([*base, "--regions", "--seg"]) == ExitCode.ERROR
    assert "add --dicom" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "eCT_Supplemental.dcm"])
def test_region_dicoms_for_ct_mr_and_a_multiframe_frame(name, tmp_path, dicom_samples):
    """SR and SEG of a CT slice, an MR slice and frame 2 of an enhanced CT validate and reference the
    source (and, for the multi-frame file, its frame)."""
    import subprocess

    import pydicom
    from pydicom.data import get_testdata_file
    from test_explain_outputs import need

    from medclass import ingest
    from medclass.explain.dicom_regions import write_region_dicoms

    dciodvfy = need("dciodvfy")
    path = dicom_samples / "pydicom-data" / name if name.startswith("eCT") else Path(get_testdata_file(name))
    images = ingest.load(ingest.discover([str(path)])[0], slice_policy="all")
    image = images[-1]  # the last frame of a multi-frame file
    h, w = image.pixels.shape[:2]
    yy, xx = np.mgrid[:h, :w] + 0.5
    sal = np.exp(-((xx - w / 3) ** 2 + (yy - h / 2) ** 2) / (2 * (w / 10) ** 2)).astype(np.float32)
    regions = RegionFinder(0.5)(sal)
    written = write_region_dicoms(image.meta, regions, regions_mask(sal, 0.5), tmp_path / "x", method="gradcam",
                                  explained_class="opacity", threshold=0.5)  # fmt: skip
    for p in written.values():
        res = subprocess.run([dciodvfy, str(p)], capture_output=True, text=True)
        assert [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")] == [], p.name
    src = pydicom.dcmread(path, stop_before_pixels=True)
    sr, seg = pydicom.dcmread(written["sr"]), pydicom.dcmread(written["seg"])
    (scoord, *_) = _items(sr.ContentSequence, "SCOORD")
    ref = scoord.ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID and sr.StudyInstanceUID == src.StudyInstanceUID
    derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert derivation.ReferencedSOPInstanceUID == src.SOPInstanceUID and seg.NumberOfFrames == 1
    if int(src.get("NumberOfFrames", 1) or 1) > 1:
        assert (
            len(images) > 1 and ref.ReferencedFrameNumber == len(images) == derivation.ReferencedFrameNumber
        )
    else:
        assert "ReferencedFrameNumber" not in ref and "ReferencedFrameNumber" not in derivation
