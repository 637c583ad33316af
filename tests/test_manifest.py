from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclass.cli import ExitCode, main
from medclass.errors import DataError, ManifestError, UnsafePathError
from medclass.manifest import (
    DATA_ROOT_ENV,
    assign_splits,
    check_manifest,
    from_dicom_tree,
    from_npz,
    load_manifest,
    row_to_record,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data_manifests"


# --- helpers -------------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 5), value % 256, np.uint8)).save(path)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _splits_by_patient(rows: list[dict[str, str]], key: str = "patient_id") -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        out[r[key]].add(r["split"])
    return out


def _folder_tree(root: Path, n_per_class: dict[str, int], images_per_patient: int = 3) -> None:
    """root/<class>/<pid>_<k>.png, several images per patient, each with distinct content."""
    value = 0
    for cls, n in n_per_class.items():
        for p in range(n):
            for k in range(images_per_patient):
                value += 1
                _png(root / cls / f"{cls[:2]}{p:03d}_{k}.png", value)


def _dicom(path: Path, patient: str, study: str, k: int, *, pixels: bool = True) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.StudyInstanceUID = study
    ds.Modality = "OT"
    if pixels:
        ds.Rows, ds.Columns = 4, 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes([k % 256]) * 16
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


MANIFEST = """path,patient_id,split,label,sex
a/1.png,p1,train,cat,F
a/2.png,p1,train,cat,F
b/3.png,p2,val,dog,M
c/4.npz,p3,test,dog,
"""


# --- loading -------------------------------------------------------------------------------------------
def test_load_single_label(tmp_path):
    m_path = _write(tmp_path / "m.csv", MANIFEST)
    m = load_manifest(m_path, data_root=tmp_path)
    assert m.task == "multiclass"
    assert m.classes == ["cat", "dog"]
    assert m.findings == []
    assert len(m) == 4
    assert [r.line for r in m.split("train")] == [2, 3]
    assert [r.path for r in m.split("test")] == ["c/4.npz"]
    assert m.sha256 == hashlib.sha256(m_path.read_bytes()).hexdigest()
    assert m.rows[2].extra == {"sex": "M"}
    assert m.rows[0].image_id == "a/1.png" and m.rows[0].frame is None
    assert [m.target(r) for r in m.rows] == [0, 0, 1, 1]
    assert m.resolve(m.rows[0]) == tmp_path / "a" / "1.png"
    with pytest.raises(ManifestError, match="unknown split 'dev'"):
        m.split("dev")


def test_classes_given_fix_order_and_reject_unknown(tmp_path):
    m_path = _write(tmp_path / "m.csv", MANIFEST)
    m = load_manifest(m_path, classes=["dog", "cat", "bird"])
    assert m.classes == ["dog", "cat", "bird"]
    assert m.target(m.rows[0]) == 1
    with pytest.raises(ManifestError, match=r"m\.csv: line 2: unknown label 'cat'"):
        load_manifest(m_path, classes=["dog"])


def test_frame_and_image_id(tmp_path):
    m = load_manifest(
        _write(tmp_path / "m.csv", "path,frame,patient_id,split,label\nx.npz,7,p,train,a\ny.npz,,q,val,b\n")
    )
    assert m.rows[0].frame == 7 and m.rows[0].image_id == "x.npz#7"
    assert m.rows[1].frame is None and m.rows[1].image_id == "y.npz"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty manifest"),
        ("path,patient_id,split,label\n", "empty manifest"),
        ("path,split,label\nx.png,train,a\n", "line 1: missing column(s) patient_id"),
        ("path,patient_id,split\nx.png,p,train\n", "line 1: needs a 'label' column"),
        ("path,patient_id,split,label\nx.png,p,train,a\ny.png,q,dev,a\n", "line 3: split 'dev'"),
        ("path,patient_id,split,label\nx.png,,train,a\n", "line 2: empty 'patient_id'"),
        ("path,patient_id,split,label\nx.png,p,train,\n", "line 2: empty 'label'"),
        ("path,patient_id,split,finding:a\nx.png,p,train,2\n", "line 2: finding:a is '2'"),
        ("path,patient_id,split,finding:a\nx.png,p,train,yes\n", "must be 0 or 1"),
        ("path,patient_id,split,label,finding:a\nx.png,p,train,a,1\n", "both a 'label' column"),
        ("path,frame,patient_id,split,label\nx.png,-1,p,train,a\n", "line 2: frame -1 is negative"),
        ("path,frame,patient_id,split,label\nx.png,one,p,train,a\n", "line 2: frame 'one'"),
        ("path,patient_id,split,label\nx.png,p,train,a,extra\n", "line 2: more cells than columns"),
    ],
)
def test_load_errors_name_file_and_line(tmp_path, text, message):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_missing_manifest_file(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path / "nope.csv")


def test_data_root_precedence(tmp_path, monkeypatch):
    m_path = _write(tmp_path / "sub" / "m.csv", MANIFEST)
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert load_manifest(m_path).data_root == m_path.parent
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert load_manifest(m_path).data_root == tmp_path / "env"
    assert load_manifest(m_path, tmp_path / "arg").data_root == tmp_path / "arg"


def test_resolve_refuses_paths_outside_root(tmp_path):
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    outside = _write(tmp_path / "secret.png", "x")
    os.symlink(outside, root / "ok" / "link.png")
    text = (
        "path,patient_id,split,label\n"
        "../secret.png,p1,train,a\n"
        f"{outside},p2,train,a\n"
        "ok/link.png,p3,train,a\n"
        "ok/fine.png,p4,train,a\n"
    )
    m = load_manifest(_write(tmp_path / "m.csv", text), root)
    with pytest.raises(UnsafePathError, match=r"line 2: path '\.\./secret\.png' contains '\.\.'"):
        m.resolve(m.rows[0])
    with pytest.raises(UnsafePathError, match=r"line 3: .* is absolute"):
        m.resolve(m.rows[1])
    with pytest.raises(UnsafePathError, match=r"line 4: .* resolves outside the data root"):
        m.resolve(m.rows[2])
    assert m.resolve(m.rows[3]) == root / "ok" / "fine.png"
    assert m.resolve(m.rows[1], allow_outside_root=True) == outside
    assert m.resolve(m.rows[0], allow_outside_root=True).resolve() == outside


def test_multilabel_round_trip(tmp_path):
    records = [
        {"path": "x/1.png", "patient_id": "p1", "split": "train", "finding:effusion": 1, "finding:nodule": 0},
        {
            "path": "x/2.png",
            "patient_id": "p2",
            "split": "val",
            "finding:effusion": 0,
            "finding:nodule": 1,
            "view": "PA",
        },
        {
            "path": "x/3.npz",
            "frame": 2,
            "patient_id": "p3",
            "study_id": "s3",
            "split": "test",
            "finding:effusion": 1,
            "finding:nodule": 1,
            "view": "=HYPERLINK(1)",
        },
    ]
    first = tmp_path / "ml.csv"
    write_manifest(first, records)
    m = load_manifest(first)
    assert m.task == "multilabel"
    assert m.classes == m.findings == ["effusion", "nodule"]
    assert [m.target(r) for r in m.rows] == [[1, 0], [0, 1], [1, 1]]
    assert m.rows[2].frame == 2 and m.rows[2].study_id == "s3"
    assert "'=HYPERLINK(1)" in first.read_text()  # formula neutralised on write...
    assert m.rows[2].extra["view"] == "=HYPERLINK(1)"  # ...and read back as written
    second = tmp_path / "ml2.csv"
    write_manifest(second, [row_to_record(r) for r in m.rows])
    assert second.read_bytes() == first.read_bytes()


# --- splitting -----------------------------------------------------------------------------------------
def _synthetic(n_a: int, n_b: int, per_patient: int = 2) -> list[dict[str, str]]:
    return [
        {"path": f"{c}{p}_{k}.png", "patient_id": f"{c}{p}", "label": c}
        for c, n in (("a", n_a), ("b", n_b))
        for p in range(n)
        for k in range(per_patient)
    ]


def test_assign_splits_grouped_stratified_deterministic():
    records = _synthetic(30, 70, per_patient=3)
    splits = assign_splits(records, val=0.15, test=0.15, seed=0)
    by_patient = defaultdict(set)
    for rec, s in zip(records, splits, strict=True):
        by_patient[rec["patient_id"]].add(s)
    assert all(len(s) == 1 for s in by_patient.values())
    patients = Counter(
        (rec["label"], s)
        for rec, s in {(r["patient_id"], s): (r, s) for r, s in zip(records, splits, strict=True)}.values()
    )
    # 15 test and 15 val patients out of 100, in the 30/70 class ratio
    assert patients[("a", "test")] + patients[("b", "test")] == 15
    assert patients[("a", "val")] + patients[("b", "val")] == 15
    assert patients[("a", "test")] in (4, 5) and patients[("a", "val")] in (4, 5)
    assert splits == assign_splits(list(reversed(records)), seed=0)[::-1]  # order does not matter
    assert splits != assign_splits(records, seed=1)


def test_assign_splits_small_keeps_every_class_in_every_split():
    records = _synthetic(4, 6, per_patient=2)
    splits = assign_splits(records, val=0.15, test=0.15, seed=3)
    for s in ("train", "val", "test"):
        assert {r["label"] for r, x in zip(records, splits, strict=True) if x == s} == {"a", "b"}


def test_assign_splits_errors():
    with pytest.raises(DataError, match="must be fractions"):
        assign_splits(_synthetic(5, 5), val=0.6, test=0.5)
    with pytest.raises(DataError, match="has no 'patient_id'"):
        assign_splits([{"path": "x.png", "label": "a"}])
    with pytest.raises(DataError, match="too few"):
        assign_splits(_synthetic(1, 0), val=0.0, test=0.5)


# --- build: folders, labels CSV, DICOM tree, npz ----------------------------------------------------------
def test_build_from_folders(tmp_path, capsys):
    root = tmp_path / "data"
    _folder_tree(root, {"normal": 12, "pneumonia": 20}, images_per_patient=3)
    _write(root / "README.txt", "not an image")
    _write(root / "normal" / "notes.txt", "not an image")
    out = tmp_path / "m.csv"
    argv = [
        "manifest",
        "build",
        "--from-folders",
        str(root),
        "--patient",
        r"regex:^(?P<patient>[^_]+)_",
        "--out",
        str(out),
    ]
    assert main(argv) == ExitCode.OK
    captured = capsys.readouterr()
    assert "patients" in captured.out and "normal" in captured.out
    assert "notes.txt: not an image file" in captured.err
    rows = _rows(out)
    assert len(rows) == 96
    assert rows[0]["path"].startswith("normal/") and not os.path.isabs(rows[0]["path"])
    assert all(len(s) == 1 for s in _splits_by_patient(rows).values())
    assert len(_splits_by_patient(rows)) == 32
    for s in ("train", "val", "test"):
        assert {r["label"] for r in rows if r["split"] == s} == {"normal", "pneumonia"}
    assert check_manifest(load_manifest(out, root)).ok

    again = tmp_path / "again.csv"
    assert main([*argv[:-1], str(again)]) == ExitCode.OK
    assert again.read_bytes() == out.read_bytes()
    other = tmp_path / "seed1.csv"
    assert main([*argv[:-1], str(other), "--seed", "1"]) == ExitCode.OK
    assert [r["split"] for r in _rows(other)] != [r["split"] for r in rows]


def test_build_from_labels_csv_multilabel(tmp_path):
    root = tmp_path / "root"
    lines = ["file,pid,effusion,nodule,site"]
    for p in range(24):
        for k in range(2):
            _png(root / "img" / f"{p}_{k}.png", p * 2 + k)
            lines.append(f"img/{p}_{k}.png,P{p},{int(p % 2 == 0)},{int(p % 3 == 0)},s{p % 2}")
    labels = _write(root / "labels.csv", "\n".join(lines) + "\n")
    out = tmp_path / "ml.csv"
    assert (
        main(
            [
                "manifest",
                "build",
                "--labels-csv",
                str(labels),
                "--path-column",
                "file",
                "--patient-column",
                "pid",
                "--finding-columns",
                "effusion,nodule",
                "--keep-columns",
                "site",
                "--out",
                str(out),
                "--seed",
                "2",
            ]
        )
        == ExitCode.OK
    )
    m = load_manifest(out, root)
    assert m.task == "multilabel" and m.findings == ["effusion", "nodule"]
    assert m.columns == ["path", "patient_id", "split", "finding:effusion", "finding:nodule", "site"]
    assert m.rows[0].path == "img/0_0.png" and m.rows[0].findings == {"effusion": 1, "nodule": 1}
    assert all(len(s) == 1 for s in _splits_by_patient(_rows(out)).values())
    assert {r.split for r in m.rows} == {"train", "val", "test"}
    assert check_manifest(m).ok


def test_build_from_labels_csv_missing_file_names_line(tmp_path):
    labels = _write(tmp_path / "labels.csv", "path,label,patient_id\ngone.png,a,p\n")
    with pytest.raises(ManifestError, match=r"labels\.csv: line 2: image 'gone\.png' not found"):
        from medclass.manifest import from_labels_csv

        from_labels_csv(labels, tmp_path)


def _dicom_tree(tmp_path: Path) -> tuple[Path, Path]:
    tree = tmp_path / "dicom"
    k = 0
    for p in range(16):
        for study in range(2):
            for img in range(2):
                k += 1
                name = f"IM{img}" if img else f"IM{img}.dcm"  # half without an extension
                _dicom(tree / f"pat{p}" / f"st{study}" / name, f"PAT{p:02d}", f"1.2.3.{p}.{study}", k)
    _dicom(tree / "stranger" / "x.dcm", "NOLABEL", "1.2.9", 1)
    _dicom(tree / "sr" / "report.dcm", "PAT00", "1.2.3.0.0", 0, pixels=False)
    _write(tree / "notes" / "readme.dcm", "this is not DICOM although it says so")
    lines = ["patient_id,label,sex"] + [
        f"PAT{p:02d},{'pos' if p % 3 == 0 else 'neg'},{'FM'[p % 2]}" for p in range(16)
    ]
    labels = _write(tmp_path / "labels.csv", "\n".join(lines) + "\n")
    return tree, labels


def test_build_from_dicom_tree(tmp_path, capsys):
    tree, labels = _dicom_tree(tmp_path)
    out = tmp_path / "d.csv"
    assert (
        main(
            [
                "manifest",
                "build",
                "--dicom-tree",
                str(tree),
                "--labels-csv",
                str(labels),
                "--keep-columns",
                "sex",
                "--out",
                str(out),
            ]
        )
        == ExitCode.OK
    )
    err = capsys.readouterr().err
    assert "left out 3 file(s)" in err
    assert "x.dcm: no label for patient_id 'NOLABEL'" in err
    assert "readme.dcm: not DICOM" in err and "report.dcm: DICOM without an image" in err
    rows = _rows(out)
    assert len(rows) == 64
    assert {r["path"] for r in rows if r["patient_id"] == "PAT03"} >= {"pat3/st0/IM0.dcm", "pat3/st0/IM1"}
    assert all(r["study_id"].startswith("1.2.3.") for r in rows)
    assert all(len(s) == 1 for s in _splits_by_patient(rows).values())
    assert {r["label"] for r in rows if r["split"] == "test"} == {"pos", "neg"}
    assert check_manifest(load_manifest(out, tree)).ok


def test_build_from_dicom_tree_by_study(tmp_path):
    tree, _ = _dicom_tree(tmp_path)
    lines = ["study_uid,label"] + [
        f"1.2.3.{p}.{s},{'ab' if (p + s) % 2 else 'no'}" for p in range(16) for s in range(2)
    ]
    labels = _write(tmp_path / "study_labels.csv", "\n".join(lines) + "\n")
    collected = from_dicom_tree(tree, labels, tree, key="study")
    assert len(collected.records) == 64
    rec = next(r for r in collected.records if r["study_id"] == "1.2.3.5.0")
    assert rec["label"] == "ab" and rec["patient_id"] == "PAT05"
    out = tmp_path / "by_study.csv"
    assert (
        main(
            [
                "manifest",
                "build",
                "--dicom-tree",
                str(tree),
                "--labels-csv",
                str(labels),
                "--key",
                "study",
                "--group",
                "study",
                "--out",
                str(out),
            ]
        )
        == ExitCode.OK
    )
    assert all(len(s) == 1 for s in _splits_by_patient(_rows(out), "study_id").values())
    m = load_manifest(out, tree)
    assert check_manifest(m, group="study").ok
    straddling = [p for p in check_manifest(m).problems if p.kind == "patient-in-two-splits"]
    assert len(straddling) == sum(len(s) > 1 for s in _splits_by_patient(_rows(out)).values()) > 0
    assert main(["manifest", "check", str(out), "--data-root", str(tree), "--group", "study"]) == ExitCode.OK


def test_dicom_labels_with_duplicate_key(tmp_path):
    tree, _ = _dicom_tree(tmp_path)
    labels = _write(tmp_path / "dup.csv", "patient_id,label\nPAT00,pos\nPAT00,neg\n")
    with pytest.raises(ManifestError, match=r"dup\.csv: line 3: patient_id 'PAT00' already listed on line 2"):
        from_dicom_tree(tree, labels, tree)


def test_from_npz_keeps_official_split_and_frame_order(tmp_path):
    npz = tmp_path / "sets" / "tiny.npz"
    npz.parent.mkdir()
    np.savez(
        npz,
        train_images=np.zeros((3, 2, 2), np.uint8),
        train_labels=np.array([[0], [1], [1]]),
        val_images=np.zeros((1, 2, 2), np.uint8),
        val_labels=np.array([[1]]),
        test_images=np.zeros((2, 2, 2), np.uint8),
        test_labels=np.array([[0], [1]]),
    )
    recs = from_npz(npz, tmp_path, label_names=["normal", "pneumonia"], id_prefix="t").records
    assert [(r["frame"], r["split"], r["label"], r["patient_id"]) for r in recs] == [
        (0, "train", "normal", "t-train-00000"),
        (1, "train", "pneumonia", "t-train-00001"),
        (2, "train", "pneumonia", "t-train-00002"),
        (3, "val", "pneumonia", "t-val-00000"),
        (4, "test", "normal", "t-test-00000"),
        (5, "test", "pneumonia", "t-test-00001"),
    ]
    assert {r["path"] for r in recs} == {"sets/tiny.npz"}
    ml = tmp_path / "ml.npz"
    np.savez(ml, train_images=np.zeros((1, 2, 2)), train_labels=np.array([[1, 0, 1]]))
    rec = from_npz(ml, tmp_path, label_names=["a", "b", "c"]).records[0]
    assert (rec["finding:a"], rec["finding:b"], rec["finding:c"]) == (1, 0, 1)
    with pytest.raises(ManifestError, match="give 3 label names"):
        from_npz(ml, tmp_path)
    with pytest.raises(ManifestError, match="outside the data root"):
        from_npz(ml, tmp_path / "sets")


# --- check -----------------------------------------------------------------------------------------------
def test_check_finds_every_problem(tmp_path, capsys):
    root = tmp_path / "root"
    for i in range(4):
        _png(root / f"{i}.png", i)
    _png(root / "copy_of_0.png", 0)  # same bytes as 0.png
    text = (
        "path,patient_id,split,label\n"
        "0.png,p0,train,a\n"  # 2
        "1.png,p1,train,b\n"  # 3
        "missing.png,p2,val,a\n"  # 4
        "2.png,p3,test,zebra\n"  # 5
        "../outside.png,p4,val,a\n"  # 6
        f"{root / '3.png'},p5,test,b\n"  # 7
        "copy_of_0.png,p6,test,a\n"  # 8
        "1.png,p7,val,b\n"  # 9: same image as line 3 in another split
        "3.png,p1,test,b\n"  # 10: patient p1 also in train
    )
    m_path = _write(tmp_path / "m.csv", text)
    report = check_manifest(load_manifest(m_path, root), classes=["a", "b"])
    kinds = {(p.kind, p.lines) for p in report.problems}
    assert kinds == {
        ("unsafe-path", (6,)),
        ("unsafe-path", (7,)),
        ("missing-file", (4,)),
        ("unknown-label", (5,)),
        ("duplicate-image", (3, 9)),
        ("patient-in-two-splits", (3, 10)),
        ("same-content-in-two-splits", (2, 8)),
    }
    code = main(["manifest", "check", str(m_path), "--data-root", str(root), "--classes", "a,b"])
    assert code == ExitCode.ERROR
    err = capsys.readouterr().err
    assert "7 problem(s)" in err
    assert "line 4: file 'missing.png' not found" in err
    assert "line 5: unknown label 'zebra'" in err
    assert "line 6: path '../outside.png' contains '..'" in err
    assert "line 7: " in err and "is absolute" in err
    assert "lines 3, 10: patient 'p1' is in several splits: train (1), test (1)" in err
    assert "lines 2, 8: identical files" in err


def test_check_passes_and_prints_summary(tmp_path, capsys):
    root = tmp_path / "root"
    _png(root / "a.png", 1)
    _png(root / "b.png", 2)
    m_path = _write(tmp_path / "m.csv", "path,patient_id,split,label\na.png,p1,train,x\nb.png,p2,test,y\n")
    assert main(["manifest", "check", str(m_path), "--data-root", str(root)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "OK (2 images, multiclass" in out and "patients" in out


def test_build_needs_one_source(tmp_path, capsys):
    assert main(["manifest", "build", "--out", str(tmp_path / "x.csv")]) == ExitCode.ERROR
    assert "no source" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


# --- real data ---------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_kermany_folder_build_is_patient_split_and_check_catches_a_leak(
    kermany, shared_data, tmp_path, capsys
):
    out = tmp_path / "kermany.csv"
    assert (
        main(
            [
                "manifest",
                "build",
                "--from-folders",
                str(kermany / "images"),
                "--patient",
                "kermany",
                "--data-root",
                str(shared_data),
                "--out",
                str(out),
            ]
        )
        == ExitCode.OK
    )
    rows = _rows(out)
    assert len(rows) == 225
    assert all(r["path"].startswith("kermany_cxr_pneumonia_fullres/images/") for r in rows)
    by_patient = _splits_by_patient(rows)
    assert len(by_patient) == 225 and all(len(s) == 1 for s in by_patient.values())
    truth = {r["relpath"].split("/")[-1]: r["patient_id"] for r in _rows(kermany / "labels.csv")}
    assert all(truth[r["path"].split("/")[-1]] == r["patient_id"] for r in rows)
    counts = Counter((r["split"], r["label"]) for r in rows)
    assert counts == {
        ("train", "NORMAL"): 53,
        ("train", "PNEUMONIA"): 104,
        ("val", "NORMAL"): 11,
        ("val", "PNEUMONIA"): 23,
        ("test", "NORMAL"): 11,
        ("test", "PNEUMONIA"): 23,
    }
    assert main(["manifest", "check", str(out), "--data-root", str(shared_data)]) == ExitCode.OK
    capsys.readouterr()

    leaked = tmp_path / "leaked.csv"
    victim = next(r for r in rows if r["split"] == "test")
    copy = {**victim, "split": "train", "path": victim["path"]}
    write_manifest(leaked, [*rows, copy])
    assert main(["manifest", "check", str(leaked), "--data-root", str(shared_data)]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert f"patient {victim['patient_id']!r} is in several splits: train (1), test (1)" in err
    assert "lines" in err and "226" in err


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["kermany_cxr.csv", "pneumoniamnist.csv"])
def test_shipped_manifests_load_and_pass_check(shared_data, name, monkeypatch):
    m = load_manifest(SHIPPED / name, shared_data)
    assert m.positive_class == m.classes[1]  # recorded in <name>.meta.json: PNEUMONIA / pneumonia
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    recorded = load_manifest(SHIPPED / name)  # no --data-root: the recorded ../shared/data
    assert recorded.root_source.startswith("recorded") and recorded.recorded_root is not None
    if (REPO.parent / "shared" / "data").resolve() == shared_data.resolve():
        assert recorded.data_root.resolve() == shared_data.resolve()
    assert all(not r.path.startswith("/") and ".." not in r.path.split("/") for r in m.rows)
    report = check_manifest(m)
    assert report.ok, [str(p) for p in report.problems[:5]]
    sizes = {s: len(m.split(s)) for s in ("train", "val", "test")}
    if name == "kermany_cxr.csv":
        assert m.classes == ["NORMAL", "PNEUMONIA"] and sizes == {"train": 157, "val": 34, "test": 34}
        assert {r.extra["pneumonia_type"] for r in m.rows} == {"none", "bacteria", "virus"}
    else:
        assert m.classes == ["normal", "pneumonia"] and sizes == {"train": 4708, "val": 524, "test": 624}
        assert [r.frame for r in m.rows] == list(range(5856))
        assert m.rows[12].patient_id == "pmnist-train-00012"
        with np.load(shared_data / m.rows[0].path) as npz:
            labels = np.concatenate([npz[f"{s}_labels"][:, 0] for s in ("train", "val", "test")])
        assert [m.target(r) for r in m.rows] == labels.tolist()


def test_check_npz_frames(tmp_path):
    np.savez(
        tmp_path / "m.npz",
        train_images=np.zeros((3, 2, 2), np.uint8),
        train_labels=np.zeros((3, 1)),
        test_images=np.zeros((2, 2, 2), np.uint8),
        test_labels=np.zeros((2, 1)),
    )
    _write(tmp_path / "broken.npz", "not a zip")
    from medclass.manifest.check import npz_frame_count

    assert npz_frame_count(tmp_path / "m.npz") == 5
    text = (
        "path,frame,patient_id,split,label\n"
        + "".join(f"m.npz,{f},p{f},train,a\n" for f in range(6))
        + "broken.npz,0,q,test,a\n"
    )
    report = check_manifest(load_manifest(_write(tmp_path / "m.csv", text), tmp_path))
    assert [(p.kind, p.lines) for p in report.problems] == [
        ("frame-out-of-range", (7,)),
        ("unreadable-file", (8,)),
    ]
    assert "frame 5 of 'm.npz', which has 5" in str(report.problems[0])


@settings(max_examples=40, deadline=None)
@given(
    groups=st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 4)), min_size=8, max_size=40),
    seed=st.integers(0, 2**16),
)
def test_assign_splits_property_no_patient_straddles(groups, seed):
    records = [{"patient_id": f"p{i}", "label": lab} for i, (lab, n) in enumerate(groups) for _ in range(n)]
    splits = assign_splits(records, val=0.15, test=0.15, seed=seed)
    where = defaultdict(set)
    for rec, s in zip(records, splits, strict=True):
        where[rec["patient_id"]].add(s)
    assert all(len(s) == 1 for s in where.values())
    assert {"train", "test", "val"} == set(splits)
    assert splits == assign_splits(records, val=0.15, test=0.15, seed=seed)


# --- what a manifest remembers: data root and positive class (issue 20) ------------------------------------
def _build_folders(tmp_path: Path, classes: dict[str, int], *extra: str) -> tuple[Path, Path]:
    root = tmp_path / "scans"
    _folder_tree(root, classes, images_per_patient=2)
    out = tmp_path / "manifests" / "m.csv"
    argv = ["manifest", "build", "--from-folders", str(root), "--patient", r"regex:^(?P<patient>[^_]+)_"]
    assert main([*argv, "--out", str(out), *extra]) == ExitCode.OK
    return root, out


def test_build_records_root_and_positive_class(tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    root, out = _build_folders(tmp_path, {"abnormal": 12, "normal": 12})
    assert "positive class: abnormal" in capsys.readouterr().out
    meta = json.loads((out.parent / "m.meta.json").read_text())
    assert meta["data_root"] == "../scans" and meta["positive_class"] == "abnormal"
    m = load_manifest(out)  # no --data-root, no env: the recorded root, relative to the manifest
    assert m.data_root.resolve() == root.resolve() and m.root_source.startswith("recorded")
    assert m.positive_class == "abnormal"
    assert main(["manifest", "check", str(out)]) == ExitCode.OK
    assert "positive class: abnormal" in capsys.readouterr().out
    # moved together, the relative root still holds
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "manifests").rename(moved / "manifests")
    (tmp_path / "scans").rename(moved / "scans")
    assert load_manifest(moved / "manifests" / "m.csv").data_root.resolve() == (moved / "scans").resolve()


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (["abnormal", "normal"], "abnormal"),
        (["No Finding", "effusion"], "effusion"),
        (["0", "1"], "1"),
        (["benign", "malignant"], "malignant"),
        (["Healthy", "sick"], "sick"),
        (["CONTROL", "case"], "case"),
        (["no_finding", "finding"], "finding"),
    ],
)
def test_default_positive_class_is_the_non_negative_name(classes, expected):
    from medclass.manifest import positive_class

    assert positive_class(classes) == expected
    assert positive_class(classes, classes[0]) == classes[0]  # given wins


def test_positive_class_refuses_to_guess(tmp_path, capsys):
    from medclass.errors import ConfigError
    from medclass.manifest import positive_class

    for classes in (["cat", "dog"], ["normal", "negative"]):
        with pytest.raises(ConfigError, match=rf"which class is positive\? .*{classes[0]}, {classes[1]}"):
            positive_class(classes)
    with pytest.raises(ConfigError, match="'tumour' is not a class; classes: a, b"):
        positive_class(["a", "b"], "tumour")
    assert positive_class(["a", "b", "c"]) is None  # multi-class: every class is reported
    # build leaves it undecided and says so; an explicit one is recorded
    _, out = _build_folders(tmp_path / "x", {"cat": 12, "dog": 12})
    assert "the names do not tell" in capsys.readouterr().err
    assert load_manifest(out).positive_class is None
    _, out = _build_folders(tmp_path / "y", {"cat": 12, "dog": 12}, "--positive-class", "dog")
    assert load_manifest(out).positive_class == "dog"
    root = tmp_path / "z"
    _folder_tree(root, {"cat": 12, "dog": 12})
    bad = ["manifest", "build", "--from-folders", str(root), "--out", str(tmp_path / "z.csv")]
    assert main([*bad, "--positive-class", "cow"]) == ExitCode.ERROR
    assert "'cow' is not a class" in capsys.readouterr().err and not (tmp_path / "z.csv").exists()


def test_wrong_data_root_is_one_error_with_a_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    root, out = _build_folders(tmp_path, {"abnormal": 12, "normal": 12})
    capsys.readouterr()
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    assert main(["manifest", "check", str(out), "--data-root", str(wrong)]) == ExitCode.ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"only 0 of 48 files found under the data root {wrong} (--data-root)" in err[0]
    assert f"the root recorded when it was built, {root.resolve()}, holds 48 of them" in err[0]
    assert main(["manifest", "check", str(out), "--data-root", str(tmp_path / "nowhere")]) == ExitCode.ERROR
    assert "is not a folder" in capsys.readouterr().err
    # a few files lost: a summarised warning, not an error
    from medclass.manifest import check_files

    files = sorted(root.rglob("*.png"))
    for f in files[:3]:
        f.unlink()
    m = load_manifest(out)
    assert len(check_files(m)) == 3


def test_data_warnings_catch_a_typo_and_small_splits(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    _, out = _build_folders(tmp_path, {"abnormal": 12, "normal": 12})
    text = out.read_text().splitlines()
    i = next(k for k, line in enumerate(text) if ",train," in line and line.endswith(",normal"))
    text[i] = text[i].removesuffix(",normal") + ",nromal"
    out.write_text("\n".join(text) + "\n")
    capsys.readouterr()
    assert main(["manifest", "check", str(out), "--no-hash"]) == ExitCode.OK
    err = capsys.readouterr().err
    assert f"class 'nromal' has only 1 images (line {i + 1}): a typo'd label?" in err
    assert "split 'test' has" in err and "fewer than 10 of one kind" in err
