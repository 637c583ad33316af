"""PHI: planted patient markers never leave medclass, through any output of any command.

Synthetic DICOM carries ``PatientName`` ZZPHINAME^ZZ, ``PatientID`` ZZPHIID-nnnn, ``PatientBirthDate``
19010101 and ``AccessionNumber`` ZZPHIACC...; then inspect, preview, manifest build, train (1 tiny epoch),
evaluate, explain (plain, ``--dicom``), score and export run on them, and every file under their output
folders (names too; bytes as they are, PDFs also through ``pdftotext``; DICOM outputs too), plus
everything they printed or logged, is scanned for the markers and the birth date in other spellings.

Decision: the manifest is an input the user owns (it must carry ``patient_id`` to split by patient), so
``PatientID`` may appear in the manifest CSV only, and nowhere else; the manifest must not carry the
name, birth date or accession number. With ``explain --include-phi`` the markers do appear (so the scan
can fail).
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import subprocess
from pathlib import Path

import pytest

from medclass.cli import COMMANDS, main
from medclass.phi import pseudonym

pytestmark = pytest.mark.slow

PHI = {"PatientName": "ZZPHINAME^ZZ", "PatientID": "ZZPHIID", "PatientBirthDate": "19010101",
       "AccessionNumber": "ZZPHIACC"}  # fmt: skip
MARKERS = {
    "name": [b"ZZPHINAME", b"ZZPHINAME^ZZ", b"ZZ ZZPHINAME", b"zzphiname"],
    "id": [b"ZZPHIID", b"zzphiid"],
    "birth": [
        b"19010101",
        b"1901-01-01",
        b"01/01/1901",
        b"1901/01/01",
        b"01.01.1901",
        b"Jan 1, 1901",
        b"1 January 1901",
        b"January 1, 1901",
    ],
    "accession": [b"ZZPHIACC", b"zzphiacc"],
}


def _hits(blob: bytes, allow: set[str] = frozenset()) -> list[str]:
    low = blob.lower()
    out = []
    for what, needles in MARKERS.items():
        if what in allow:
            continue
        out += [f"{what}:{n.decode()}" for n in needles if n.lower() in low]
    return out


def _utf16(blob: bytes) -> bytes:
    """UTF-16 spellings (some writers use them) folded to ASCII for the scan."""
    return blob.replace(b"\x00", b"")


def scan_tree(folder: Path, *, allow: dict[str, set[str]] | None = None) -> tuple[int, list[str]]:
    """(files scanned, findings) for every file under ``folder``: names, bytes, PDF text."""
    allow = allow or {}
    n, found = 0, []
    pdftotext = shutil.which("pdftotext")
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        found += [f"{rel} (file name): {h}" for h in _hits(rel.encode())]
        if not f.is_file():
            continue
        n += 1
        ok = allow.get(f.name, set())
        data = f.read_bytes()
        found += [f"{rel}: {h}" for h in _hits(data, ok)]
        found += [f"{rel} (utf-16): {h}" for h in _hits(_utf16(data), ok) if f"{rel}: {h}" not in found]
        if f.suffix == ".pdf" and pdftotext:
            text = subprocess.run([pdftotext, str(f), "-"], capture_output=True, timeout=60).stdout
            found += [f"{rel} (pdftotext): {h}" for h in _hits(text, ok)]
        if f.suffix == ".pdf":
            found += [f"{rel} (pdf stream): {h}" for h in _hits(_pdf_streams(data), ok)]
    return n, found


def _pdf_streams(data: bytes) -> bytes:
    """The zlib-inflated content of every PDF stream (text hides there when pdftotext is absent)."""
    import re
    import zlib

    out = []
    for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
        with contextlib.suppress(zlib.error):
            out.append(zlib.decompress(m.group(1)))
    return b"\n".join(out)


def test_pseudonym_is_stable_salted_and_hides_the_id(monkeypatch):
    p = pseudonym("ZZPHIID-0001")
    assert p == pseudonym("ZZPHIID-0001") and p.startswith("P-") and "ZZPHI" not in p
    assert pseudonym("") == "" and pseudonym(None) == ""
    assert pseudonym("ZZPHIID-0002") != p
    monkeypatch.setenv("MEDCLASS_PHI_SALT", "site-secret")
    assert pseudonym("ZZPHIID-0001") != p


def test_scanner_finds_planted_markers(tmp_path):
    (tmp_path / "a.txt").write_text("born 1901-01-01")
    (tmp_path / "ZZPHIID.png").write_bytes(b"x")
    (tmp_path / "u.json").write_bytes("ZZPHINAME".encode("utf-16-le"))
    n, found = scan_tree(tmp_path)
    assert n == 3 and len(found) >= 3, found


def _sr_flag() -> list[str]:
    """``--sr`` (a DICOM Comprehensive SR beside the Secondary Captures) when explain offers it."""
    from medclass.cli import build_parser

    for action in build_parser()._subparsers._group_actions:
        sub = action.choices.get("explain")
        if sub is not None and "--sr" in sub.format_help():
            return ["--sr"]
    return []


# --- the whole pipeline ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run every available command on the planted data once; collect outputs and captured text."""
    from medclass.synth import generate_cxr_dataset

    base = tmp_path_factory.mktemp("phi")
    data = base / "data"
    ds = generate_cxr_dataset(data / "dcm", n_patients=10, images_per_patient=(1, 2), sizes=((96, 96),),
                              transfer_syntaxes=("explicit", "rle"), seed=5, phi_markers=PHI)  # fmt: skip
    outs = base / "outputs"
    outs.mkdir()
    captured: dict[str, str] = {}
    skipped: dict[str, str] = {}
    codes: dict[str, int] = {}
    dicoms = sorted(p for p in (data / "dcm").rglob("*") if p.is_file() and p.name.startswith("i"))
    # labels keyed by patient: an input the user owns (holds the IDs), kept outside the scanned outputs
    labels = base / "labels.csv"
    with open(ds.labels_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_patient = {r["patient_id"]: r["label"] for r in rows}
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "label"])
        w.writerows(sorted(by_patient.items()))
    manifest = base / "manifests" / "m.csv"
    ckpt_dir = outs / "train"

    plan = [
        ("inspect", ["inspect", str(data / "dcm"), "--errors-csv", str(outs / "inspect" / "errors.csv")]),
        ("inspect-json", ["inspect", "--json", *map(str, dicoms[:3])]),
        ("preview", ["preview", *map(str, dicoms[:2]), "--out", str(outs / "preview"), "--size", "96"]),
        (
            "manifest",
            [
                "manifest",
                "build",
                "--dicom-tree",
                str(data / "dcm"),
                "--labels-csv",
                str(labels),
                "--data-root",
                str(data),
                "--out",
                str(manifest),
                "--val",
                "0.3",
                "--test",
                "0.3",
            ],
        ),
        ("manifest-check", ["manifest", "check", str(manifest), "--data-root", str(data)]),
        (
            "train",
            [
                "train",
                "--manifest",
                str(manifest),
                "--data-root",
                str(data),
                "--out",
                str(ckpt_dir),
                "--epochs",
                "1",
                "--image-size",
                "75",
                "--batch-size",
                "4",
                "--device",
                "cpu",
                "--workers",
                "0",
                "--cache",
                "none",
                "--no-progress",
                "--no-tensorboard",
                "--mode",
                "linear",
            ],
        ),
        (
            "evaluate",
            [
                "evaluate",
                "--checkpoint",
                str(ckpt_dir / "best"),
                "--manifest",
                str(manifest),
                "--data-root",
                str(data),
                "--out",
                str(outs / "evaluate"),
                "--bootstrap",
                "20",
            ],
        ),
        (
            "explain",
            [
                "explain",
                "--checkpoint",
                str(ckpt_dir / "best"),
                *map(str, dicoms[:2]),
                "--out",
                str(outs / "explain"),
                "--faithfulness",
                "none",
            ],
        ),
        (
            "explain-dicom",
            [
                "explain",
                "--checkpoint",
                str(ckpt_dir / "best"),
                *map(str, dicoms[:2]),
                "--out",
                str(outs / "explain_dicom"),
                "--dicom",
                *_sr_flag(),
                "--faithfulness",
                "none",
            ],
        ),
        (
            "score",
            [
                "score",
                "--checkpoint",
                str(ckpt_dir / "best"),
                str(data / "dcm"),
                "--out",
                str(outs / "score" / "scores.csv"),
                "--workers",
                "0",
                "--no-progress",
            ],
        ),
        (
            "score-manifest",
            [
                "score",
                "--checkpoint",
                str(ckpt_dir / "best"),
                str(manifest),
                "--data-root",
                str(data),
                "--out",
                str(outs / "score_m" / "scores.csv"),
                "--workers",
                "0",
                "--no-progress",
            ],
        ),
        (
            "export",
            ["export", "--checkpoint", str(ckpt_dir / "best"), "--out", str(outs / "export" / "m.onnx")],
        ),
    ]
    return {"base": base, "data": data, "outs": outs, "manifest": manifest, "plan": plan, "dicoms": dicoms,
            "captured": captured, "skipped": skipped, "codes": codes, "ckpt": ckpt_dir / "best"}  # fmt: skip


def _run_plan(runs, capfd, caplog) -> None:
    if runs["codes"]:
        return
    import logging

    caplog.set_level(logging.DEBUG)
    for name, argv in runs["plan"]:
        cmd = argv[0]
        if cmd not in COMMANDS:
            runs["skipped"][name] = f"command {cmd!r} not registered"
            continue
        try:
            __import__(f"medclass.cli.{COMMANDS[cmd]}")
        except ModuleNotFoundError:
            runs["skipped"][name] = f"medclass.cli.{COMMANDS[cmd]} not built yet"
            continue
        if name == "export":
            try:
                import onnx  # noqa: F401
            except ImportError:
                runs["skipped"][name] = "onnx not installed"
                continue
        code = main(["-v", *argv])
        out, err = capfd.readouterr()
        runs["captured"][name] = out + err + "\n".join(r.getMessage() for r in caplog.records)
        caplog.clear()
        runs["codes"][name] = code


def test_no_phi_in_any_output(runs, capfd, caplog):
    _run_plan(runs, capfd, caplog)
    codes = runs["codes"]
    print(f"\n[phi-scan] exit codes: {codes}; skipped: {runs['skipped']}")
    for must in ("inspect", "manifest", "train", "evaluate", "explain"):
        assert must in codes, f"{must} did not run: {runs['skipped']}"
    assert codes["manifest"] == 0 and codes["train"] == 0, runs["captured"].get("train", "")[-3000:]
    for name, code in codes.items():
        if name == "export" and code == 1 and "differs from torch" in runs["captured"][name]:
            print("[phi-scan] export refused its own graph (parity check): see the hardening report")
            continue
        assert code in (0, 3) or name == "manifest-check", (name, code, runs["captured"][name][-1500:])

    n, found = scan_tree(runs["outs"])
    # the manifest: PatientID allowed (user-owned input), nothing else
    mn, mfound = scan_tree(runs["manifest"].parent, allow={"m.csv": {"id"}})
    text_found = [f"{name} (printed/logged): {h}" for name, t in runs["captured"].items()
                  for h in _hits(t.encode())]  # fmt: skip
    print(f"[phi-scan] files scanned: {n} outputs + {mn} manifest; captured streams: {len(runs['captured'])}")
    assert n > 20
    assert not (found + mfound + text_found), "\n".join(found + mfound + text_found)


def test_manifest_carries_patient_id_but_nothing_else(runs, capfd, caplog):
    _run_plan(runs, capfd, caplog)
    text = runs["manifest"].read_text()
    assert "ZZPHIID" in text  # documented: the user's own manifest carries patient_id for the split
    assert not _hits(text.encode(), {"id"})


def test_include_phi_puts_markers_in_explain_outputs(runs, capfd, caplog):
    """The opt-in works, so the scan above can fail."""
    _run_plan(runs, capfd, caplog)
    out = runs["outs"].parent / "explain_phi"
    code = main(["explain", "--checkpoint", str(runs["ckpt"]), *map(str, runs["dicoms"][:2]), "--out", str(out),
                 "--dicom", *_sr_flag(), "--include-phi", "--faithfulness", "none"])  # fmt: skip
    capfd.readouterr()
    assert code in (0, 3)
    _, found = scan_tree(out)
    kinds = {f.split(": ", 1)[1].split(":")[0] for f in found}
    assert {"name", "id", "birth", "accession"} <= kinds, found
