"""DICOM series grouping and sorting, discover, slice policies (generated files)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_ingest import make_dicom

from medclass import ingest
from medclass.errors import (
    ConfigError,
    UnreadableFileError,
    UnsupportedFormatError,
)


# --- series, policies, discover ------------------------------------------------------------------
def _slice(tmp_path, name, z, inst, value, *, series="1.2.9", orientation=(1, 0, 0, 0, 1, 0)):
    return make_dicom(
        tmp_path / name,
        np.full((4, 4), value, np.uint16),
        series_uid=series,
        ImagePositionPatient=[0, 0, z],
        ImageOrientationPatient=list(orientation),
        InstanceNumber=inst,
    )


def test_discover_groups_and_sorts_series_by_position(tmp_path):
    # instance numbers deliberately disagree with the positions: position wins
    for name, z, inst, val in [("b", 5.0, 1, 50), ("a", -5.0, 3, 10), ("c", 0.0, 2, 30)]:
        _slice(tmp_path, name, z, inst, val)
    _slice(tmp_path, "other", 0.0, 1, 99, series="1.2.10")
    (tmp_path / "README.md").write_text("notes")
    sources = ingest.discover([tmp_path])
    assert [s.format for s in sources] == ["dicom-series", "dicom"]
    series = sources[0]
    assert [Path(p).name for p in series.paths] == ["a", "c", "b"]
    assert series.positions == (-5.0, 0.0, 5.0)
    imgs = ingest.load(series)
    assert [float(i.pixels[0, 0]) for i in imgs] == [10, 30, 50]
    assert [i.meta.index for i in imgs] == [0, 1, 2] and imgs[0].meta.original_shape == (3, 4, 4)
    assert imgs[1].meta.source.endswith("c")
    middle = ingest.load(series, slice_policy="middle")
    assert len(middle) == 1 and middle[0].pixels[0, 0] == 30
    assert ingest.load(series, slice_policy="index:-1")[0].pixels[0, 0] == 50


def test_series_sorted_on_oblique_normal(tmp_path):
    # sagittal slices: normal is x (row (0,1,0) x col (0,0,-1) = (-1,0,0)); position along it = -x
    ori = (0, 1, 0, 0, 0, -1)
    for name, x, val in [("s1", 10.0, 1), ("s2", 20.0, 2), ("s3", 0.0, 3)]:
        make_dicom(
            tmp_path / name,
            np.full((2, 2), val, np.uint16),
            series_uid="1.3",
            ImagePositionPatient=[x, 0, 0],
            ImageOrientationPatient=list(ori),
            InstanceNumber=1,
        )
    (src,) = ingest.discover([tmp_path])
    assert [Path(p).name for p in src.paths] == ["s2", "s1", "s3"]  # -20 < -10 < 0


def test_series_without_geometry_sorted_by_instance_number(tmp_path):
    for name, inst in [("x", 3), ("y", 1), ("z", 2)]:
        make_dicom(tmp_path / name, np.full((2, 2), inst, np.uint16), series_uid="1.4", InstanceNumber=inst)
    (src,) = ingest.discover([tmp_path])
    assert [Path(p).name for p in src.paths] == ["y", "z", "x"] and src.positions == ()


def test_discover_reports_bad_files_but_skips_non_images(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.dcm").write_text("not dicom")
    (tmp_path / "empty.png").write_bytes(b"")
    sources = ingest.discover([tmp_path, tmp_path / "missing.nii"])
    assert sorted(Path(s.path).name for s in sources) == ["broken.dcm", "empty.png", "missing.nii"]
    for s in sources:
        with pytest.raises((UnsupportedFormatError, UnreadableFileError)):
            ingest.load(s)


def test_slice_policies(tmp_path):
    vol = np.zeros((8, 8, 5), np.float32)
    vol[2:6, 2:6, 3] = 100  # largest foreground on slice 3
    vol[3:5, 3:5, 1] = 100
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    f = tmp_path / "v.nii.gz"
    assert len(ingest.read(f)) == 5
    assert [i.meta.index for i in ingest.read(f, slice_policy="middle")] == [2]
    assert [i.meta.index for i in ingest.read(f, slice_policy="max-foreground")] == [3]
    assert [i.meta.index for i in ingest.read(f, slice_policy="index:4")] == [4]
    with pytest.raises(ConfigError, match="valid: all, middle, max-foreground, index:N"):
        ingest.read(f, slice_policy="biggest")
    with pytest.raises(ConfigError, match="out of range"):
        ingest.read(f, slice_policy="index:9")
    with pytest.raises(ConfigError, match="must be an integer"):
        ingest.get_slice_policy("index:x")


def test_unknown_reader_lists_valid():
    with pytest.raises(ConfigError, match="valid: dicom, nifti, png, jpeg, npz"):
        ingest.get_reader("tiff")


# --- a series with one corrupt slice ----------------------------------------------------------------
@pytest.fixture
def series_with_corrupt_slice(tmp_path, dicom_samples) -> tuple[Path, Path]:
    """The 3-slice GE CT with its middle file's pixel data cut in half (header intact, so it is grouped)."""
    import shutil

    folder = tmp_path / "ct"
    folder.mkdir()
    for f in sorted((dicom_samples / "dcmqi_ct-3slice").glob("0*.dcm")):
        shutil.copy(f, folder / f.name)
    bad = folder / "02.dcm"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return folder, bad


def test_series_with_a_corrupt_slice_gives_every_readable_slice(series_with_corrupt_slice):
    from medclass.errors import CorruptFileError

    folder, bad = series_with_corrupt_slice
    [series] = ingest.discover([folder])
    assert series.format == "dicom-series" and len(series.paths) == 3  # the bad file is still in the volume
    got = list(ingest.load_each(series))
    images = [g for g in got if isinstance(g, ingest.Image)]
    failed = [g for g in got if isinstance(g, ingest.Failed)]
    assert [Path(i.meta.source).name for i in images] == ["03.dcm", "01.dcm"]  # sorted by position
    assert len(failed) == 1 and failed[0].path == str(bad) and failed[0].index == 1
    assert isinstance(failed[0].error, CorruptFileError)
    # operations that need the whole volume keep failing it, naming the bad file
    with pytest.raises(CorruptFileError, match="max-foreground needs every slice") as info:
        ingest.load(series, slice_policy="max-foreground")
    assert info.value.path == str(bad)
    [whole] = list(ingest.load_each(series, slice_policy="max-foreground"))
    assert isinstance(whole, ingest.Failed) and whole.path == str(bad) and whole.index is None
    with pytest.raises(CorruptFileError):  # load() of every slice is all or nothing, naming the file
        ingest.load(series)


def test_inspect_lists_the_series_and_the_corrupt_file_on_its_own(series_with_corrupt_slice):
    from medclass.ingest.summary import summarize_rows

    folder, bad = series_with_corrupt_slice
    [series] = ingest.discover([folder])
    row, bad_row = summarize_rows(series)
    assert row.ok and row.files == 3 and row.frames == 2 and row.modality == "CT"
    assert bad_row.path == str(bad) and bad_row.error_kind == "corrupt" and "pixel data" in bad_row.error
    assert "failed_slices" not in row.as_dict() and "exception" not in row.as_dict()
