"""medclass.score and ``medclass score``: rows per frame, error rows, resume, formats, decisions, bf16 drift.

Real files (Kermany JPEGs, DICOM samples) are copied into tmp folders; the model is a random 2-class
Inception V3 at 96 px, initialised so that its probabilities are spread out (see make_checkpoint).
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from medclass.cli import ExitCode, main
from medclass.errors import ConfigError
from medclass.phi import pseudonym
from medclass.score import (
    DecisionRule,
    ScoreOutput,
    WorkItem,
    expand_inputs,
    item_key,
    read_scores,
    score_columns,
    summary_path,
)

SIZE = 96
CLASSES = ["NORMAL", "PNEUMONIA"]


def kermany_jpegs(kermany: Path, n: int) -> list[Path]:
    files = sorted((kermany / "images").rglob("*.jpeg"))
    return files[:: max(1, len(files) // n)][:n]


def make_checkpoint(
    stem: Path, *, operating_point: dict | None = None, seed: int = 0, size: int = SIZE
) -> Path:
    """A 2-class checkpoint whose outputs are spread out and numerically well-conditioned.

    timm's random init gives saturated 0/1 probabilities and, with BatchNorm statistics fitted to a few
    images, a chaotic network in which bf16 rounding flips predictions; neither says anything about drift
    or parity. He-initialised convolutions with identity BatchNorms keep the activation scale layer to
    layer (a critical ReLU network), and a unit-variance head spreads the probabilities (about 0.45-0.75
    on the Kermany images): the same order of sensitivity as a trained model.
    """
    import torch

    from medclass import checkpoint
    from medclass.model import create_model
    from medclass.preprocess import input_spec

    torch.manual_seed(seed)
    spec = input_spec(image_size=size)
    model = create_model(len(CLASSES), image_size=size)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=1.0)
            torch.nn.init.zeros_(m.bias)
    model.eval()
    meta = dict(
        classes=CLASSES, task="multiclass", input=dataclasses.asdict(spec), window="auto", fit="letterbox"
    )
    if operating_point is not None:
        meta["operating_point"] = operating_point
    checkpoint.save(stem, model, meta)
    return stem


@pytest.fixture(scope="module")
def score_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def make_inputs(folder: Path, kermany: Path, dicom_samples: Path, n_jpeg: int = 3) -> dict[str, Path]:
    """Real files + a truncated DICOM + an empty PNG + a README (skipped by the folder walk)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for i, f in enumerate(kermany_jpegs(kermany, n_jpeg)):
        out[f"jpeg{i}"] = Path(shutil.copy(f, folder / f"cxr{i}.jpeg"))
    out["dx"] = Path(shutil.copy(dicom_samples / "highdicom" / "dx_image.dcm", folder / "dx.dcm"))
    ct = folder / "ct"
    ct.mkdir()
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        shutil.copy(dicom_samples / "dcmqi_ct-3slice" / name, ct / name)
    rg = (dicom_samples / "pydicom-data" / "RG1_J2KI.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(rg[: len(rg) // 3])
    out["truncated"] = folder / "truncated.dcm"
    (folder / "empty.png").write_bytes(b"")
    out["empty"] = folder / "empty.png"
    (folder / "README.txt").write_text("not an image\n")
    return out


@pytest.fixture
def inputs(tmp_path: Path, kermany: Path, dicom_samples: Path) -> Path:
    make_inputs(tmp_path / "in", kermany, dicom_samples)
    return tmp_path / "in"


def _score(ckpt: Path, paths: list[Path], out: Path, *extra: str) -> int:
    args = ["score", "--checkpoint", str(ckpt), *map(str, paths), "--out", str(out), "--workers", "0"]
    return main([*args, "--batch-size", "2", "--no-progress", *extra])


def read_scores_text(lines: list[str]) -> list[dict[str, str]]:
    return list(csv.DictReader(lines))


# --- the CLI end to end ----------------------------------------------------------------------------
def test_one_row_per_frame_with_error_rows(score_ckpt: Path, inputs: Path, tmp_path: Path, capsys) -> None:
    import json

    out = tmp_path / "scores.csv"
    assert _score(score_ckpt, [inputs], out) == ExitCode.PARTIAL
    rows = read_scores(out)
    assert list(rows[0]) == score_columns(CLASSES)
    keys = [item_key(r["path"], r["frame"]) for r in rows]
    assert len(keys) == len(set(keys)) == 3 + 1 + 3 + 2  # jpegs, DX, 3 CT slices, 2 bad files
    assert not any("README" in k for k in keys)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "truncated.dcm" in by_name["truncated.dcm"]["error"]
    assert "empty file" in by_name["empty.png"]["error"]
    assert by_name["empty.png"]["prob:NORMAL"] == "" and by_name["empty.png"]["predicted"] == ""
    sha = json.loads(score_ckpt.with_suffix(".json").read_text())["sha256"]
    ok = [r for r in rows if not r["error"]]
    assert len(ok) == 7
    for r in ok:
        p = np.array([float(r["prob:NORMAL"]), float(r["prob:PNEUMONIA"])])
        assert abs(p.sum() - 1) < 1e-5
        assert r["predicted"] == CLASSES[int(np.argmax(p))]
        assert r["decision"] == "argmax"
        assert r["model_sha256"] == sha
    probs = np.array([float(r["prob:PNEUMONIA"]) for r in ok])
    assert probs.std() > 1e-3  # a calibrated model: the images get different scores
    import pydicom

    ds = pydicom.dcmread(inputs / "dx.dcm", stop_before_pixels=True)
    assert by_name["dx.dcm"]["patient"] == pseudonym(str(ds.PatientID))
    assert by_name["dx.dcm"]["study_uid"] == str(ds.StudyInstanceUID)
    assert str(ds.PatientID) not in out.read_text()
    # the CT slices are one study: the summary has one row for it with 3 images
    studies = read_scores(summary_path(out))
    ct_study = str(pydicom.dcmread(inputs / "ct" / "01.dcm", stop_before_pixels=True).StudyInstanceUID)
    ct = [s for s in studies if s["study"] == ct_study]
    assert len(ct) == 1 and ct[0]["n_images"] == "3" and ct[0]["aggregation"] == "mean"
    ct_rows = [r for r in ok if r["study_uid"] == ct_study]
    mean = np.mean([float(r["prob:PNEUMONIA"]) for r in ct_rows])
    assert float(ct[0]["prob:PNEUMONIA"]) == pytest.approx(mean, abs=1e-6)
    assert len(studies) == 3 + 1 + 1  # each JPEG is its own study
    said = capsys.readouterr().out
    assert "scored 7, skipped 0 (already done), failed 2" in said


def test_existing_output_is_not_overwritten(score_ckpt: Path, inputs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "scores.csv"
    out.write_text("precious\n")
    assert _score(score_ckpt, [inputs / "cxr0.jpeg"], out) == ExitCode.ERROR
    assert "--resume" in capsys.readouterr().err and out.read_text() == "precious\n"
    assert _score(score_ckpt, [inputs / "cxr0.jpeg"], out, "--overwrite") == ExitCode.OK
    assert len(read_scores(out)) == 1


def test_resume_skips_done_rows_and_drops_a_torn_line(
    score_ckpt: Path, inputs: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "scores.csv"
    _score(score_ckpt, [inputs], out)
    full = out.read_text().splitlines(keepends=True)
    # as if killed: 4 rows committed, then half of the 5th row written
    out.write_text("".join(full[:5]) + full[5][: len(full[5]) // 2])
    capsys.readouterr()
    assert _score(score_ckpt, [inputs], out, "--resume") == ExitCode.PARTIAL
    assert "skipped 4 (already done)" in capsys.readouterr().out
    again = out.read_text().splitlines(keepends=True)
    assert again[:5] == full[:5]  # committed rows untouched
    first, second = read_scores_text(full), read_scores_text(again)
    assert [item_key(r["path"], r["frame"]) for r in second] == [
        item_key(r["path"], r["frame"]) for r in first
    ]
    for a, b in zip(first, second, strict=True):  # each input once, same result (batches may differ)
        assert a["error"] == b["error"] and a["predicted"] == b["predicted"]
        assert float(a["prob:NORMAL"] or 0) == pytest.approx(float(b["prob:NORMAL"] or 0), abs=1e-5)
    # a second resume has nothing left to do
    assert _score(score_ckpt, [inputs], out, "--resume") == ExitCode.PARTIAL
    assert (
        "scored 0, skipped 9 (already done), failed 0 (2 more failed in earlier runs)"
        in capsys.readouterr().out
    )
    assert out.read_text().splitlines(keepends=True) == again


def test_resume_refuses_rows_of_another_model(
    score_ckpt: Path, inputs: Path, tmp_path: Path, kermany: Path, capsys
) -> None:
    out = tmp_path / "scores.csv"
    _score(score_ckpt, [inputs / "cxr0.jpeg"], out)
    other = make_checkpoint(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert _score(other, [inputs / "cxr1.jpeg"], out, "--resume") == ExitCode.ERROR
    assert "another model" in capsys.readouterr().err


def test_workers_give_the_same_rows_as_inline(score_ckpt: Path, inputs: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    files = [inputs / "cxr0.jpeg", inputs / "dx.dcm", inputs / "empty.png", inputs / "cxr1.jpeg"]
    assert _score(score_ckpt, files, a) == ExitCode.PARTIAL
    assert _score(score_ckpt, files, b, "--workers", "2") == ExitCode.PARTIAL
    ra, rb = read_scores(a), read_scores(b)
    assert [r["path"] for r in ra] == [str(f) for f in files]
    for x, y in zip(ra, rb, strict=True):  # model threads differ (workers take a core): rounding only
        assert {k: v for k, v in x.items() if not k.startswith("prob:")} == {
            k: v for k, v in y.items() if not k.startswith("prob:")
        }
        assert x["prob:NORMAL"] == pytest.approx(y["prob:NORMAL"], abs=1e-5)
    assert isinstance(ra[0]["prob:NORMAL"], float) and ra[0]["frame"] == 0
    assert ra[2]["frame"] is None and ra[2]["error"]


def test_parquet_output(score_ckpt: Path, inputs: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "scores.parquet"
    assert _score(score_ckpt, [inputs / "cxr0.jpeg", inputs / "empty.png"], out) == ExitCode.PARTIAL
    rows = read_scores(out)
    assert [Path(r["path"]).name for r in rows] == ["cxr0.jpeg", "empty.png"]
    assert 0 <= rows[0]["prob:PNEUMONIA"] <= 1 and rows[1]["prob:PNEUMONIA"] is None
    assert not (tmp_path / "scores.parquet.partial.jsonl").exists()


def test_max_aggregation_and_operating_point(tmp_path: Path, kermany: Path, dicom_samples: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "op", operating_point={"PNEUMONIA": {"threshold": 0.55}})
    folder = tmp_path / "ct"
    folder.mkdir()
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        shutil.copy(dicom_samples / "dcmqi_ct-3slice" / name, folder / name)
    out = tmp_path / "s.csv"
    assert _score(ckpt, [folder], out, "--aggregate", "max") == ExitCode.OK
    rows = read_scores(out)
    assert {r["decision"] for r in rows} == {"operating_point"}
    for r in rows:
        assert r["predicted"] == ("PNEUMONIA" if float(r["prob:PNEUMONIA"]) >= 0.55 else "NORMAL")
    (study,) = read_scores(summary_path(out))
    assert float(study["prob:PNEUMONIA"]) == pytest.approx(
        max(float(r["prob:PNEUMONIA"]) for r in rows), abs=1e-6
    )


# --- units -----------------------------------------------------------------------------------------
def test_decision_rules() -> None:
    p = np.array([[0.7, 0.3], [0.9, 0.1], [0.2, 0.8]])
    binary = DecisionRule.from_meta(
        {"classes": CLASSES, "task": "multiclass", "operating_point": {"PNEUMONIA": 0.25}}
    )
    assert binary.name == "operating_point" and binary.predict(p) == ["PNEUMONIA", "NORMAL", "PNEUMONIA"]
    argmax = DecisionRule.from_meta({"classes": CLASSES, "task": "multiclass"})
    assert argmax.name == "argmax" and argmax.predict(p) == ["NORMAL", "NORMAL", "PNEUMONIA"]
    ml = DecisionRule.from_meta({"classes": ["a", "b", "c"], "task": "multilabel",
                                 "operating_point": {"thresholds": {"a": 0.9}, "rule": "youden"}})  # fmt: skip
    assert ml.predict(np.array([[0.95, 0.6, 0.4], [0.5, 0.4, 0.6]])) == ["a;b", "c"]
    assert DecisionRule.from_meta({"classes": ["a", "b"], "task": "multilabel"}).name == "threshold:0.5"


def test_expand_inputs_manifest_and_dedupe(inputs: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "patient_id", "split", "label", "frame"])
        w.writerow(["cxr0.jpeg", "p1", "test", "NORMAL", "0"])
        w.writerow(["../escape.jpeg", "p2", "test", "NORMAL", "0"])
    items = expand_inputs([inputs / "cxr0.jpeg", manifest, inputs / "cxr0.jpeg"], data_root=inputs)
    assert [i.key for i in items] == [item_key(str(inputs / "cxr0.jpeg"), 0), items[1].key]
    assert items[1].error and items[1].frame is None and items[1].patient_id == "p2"
    middle = expand_inputs([inputs / "ct"], slice_policy="middle")
    assert [Path(i.path).name for i in middle] == ["02.dcm"]
    with pytest.raises(ConfigError, match="valid"):
        expand_inputs([inputs], slice_policy="nope")


def test_csv_cells_are_formula_safe_and_read_back(tmp_path: Path) -> None:
    cols = score_columns(CLASSES)
    output = ScoreOutput(tmp_path / "s.csv", "csv", cols)
    output.open()
    output.append(
        [{"path": "/a.dcm", "frame": 0, "study_uid": "=HYPERLINK(1)", "prob:NORMAL": -0.5, "error": "x\ny"}]
    )
    output.close()
    text = (tmp_path / "s.csv").read_text()
    assert "'=HYPERLINK(1)" in text and "x y" in text and text.count("\n") == 2
    (row,) = output.done_rows().values()
    assert row["study_uid"] == "=HYPERLINK(1)" and row["prob:NORMAL"] == "-0.5"


def test_bf16_drift_from_fp32_on_real_images(score_ckpt: Path, kermany: Path, dicom_samples: Path) -> None:
    """bf16 autocast + channels_last vs fp32 on real JPEGs and DICOM: max |Δprob| is small (printed)."""
    from medclass import checkpoint, ingest
    from medclass.score import make_backend
    from medclass.score.runner import make_preprocessor

    ck = checkpoint.load(score_ckpt)
    pre = make_preprocessor(ck.meta)
    files = [*kermany_jpegs(kermany, 6), dicom_samples / "highdicom" / "dx_image.dcm",
             dicom_samples / "dcmqi_ct-3slice" / "01.dcm"]  # fmt: skip
    x = np.stack([pre(ingest.read(f)[0]).array for f in files])  # N×3×S×S
    fp32 = make_backend("torch", task="multiclass", model=ck.model, precision="fp32")(x)
    bf16 = make_backend("torch", task="multiclass", model=ck.model, precision="bf16")(x)
    drift = float(np.max(np.abs(fp32 - bf16)))
    print(f"bf16 vs fp32 max |Δprob| on {len(files)} real images at {SIZE} px: {drift:.4f}")
    assert 0 < drift < 0.03


def test_fast_decode_scores_the_same_rows_closely(score_ckpt: Path, kermany: Path, tmp_path: Path) -> None:
    """--fast-decode (DCT-domain JPEG downscale) gives the same rows, probabilities within 0.02."""
    folder = tmp_path / "in"
    folder.mkdir()
    for f in kermany_jpegs(kermany, 4):
        shutil.copy(f, folder / f.name)
    assert _score(score_ckpt, [folder], tmp_path / "exact.csv", "--workers", "0") == ExitCode.OK
    assert (
        _score(score_ckpt, [folder], tmp_path / "fast.csv", "--workers", "0", "--fast-decode") == ExitCode.OK
    )
    exact = {r["path"]: r for r in read_scores(tmp_path / "exact.csv")}
    fast = {r["path"]: r for r in read_scores(tmp_path / "fast.csv")}
    assert exact.keys() == fast.keys() and len(exact) == 4
    drift = max(abs(float(exact[k]["prob:PNEUMONIA"]) - float(fast[k]["prob:PNEUMONIA"])) for k in exact)
    print(f"fast-decode vs exact max |Δprob| on 4 Kermany radiographs at {SIZE} px: {drift:.4f}")
    assert 0 < drift < 0.02  # not 0: the fast path was taken


class _CrashOn:
    """A preprocessor that kills its worker process on one file (a codec segfault, say)."""

    def __init__(self, name: str, inner) -> None:
        self.name, self.inner = name, inner

    def __call__(self, image):
        import os

        if Path(image.meta.source).name == self.name:
            os._exit(11)
        return self.inner(image)


def test_a_worker_crash_fails_one_row_not_the_run(inputs: Path) -> None:
    from medclass.preprocess import Preprocessor, input_spec
    from medclass.score import decode_stream

    pre = _CrashOn("cxr1.jpeg", Preprocessor(input_spec(image_size=SIZE)))
    items = [WorkItem(str(inputs / f"cxr{i}.jpeg"), 0) for i in range(3)]
    out = list(decode_stream(items, pre, workers=1, prefetch=2))
    assert [Path(d.item.path).name for d in out] == ["cxr0.jpeg", "cxr1.jpeg", "cxr2.jpeg"]
    assert out[0].array is not None and out[2].array is not None
    assert out[1].array is None and "crashed the worker process twice" in out[1].error


def test_block_parts_are_idempotent_and_the_merge_checks_every_input(tmp_path: Path) -> None:
    """The sink of an at-least-once engine: a block written twice is one part; the merge keeps one row per
    key, in input order, with the row log's rows; an input without a row fails the merge, parts kept."""
    from medclass.errors import EngineError
    from medclass.score import block_id
    from medclass.score.ray_engine import make_blocks

    cols = score_columns(CLASSES)
    keys = [item_key(f"/d/{i}.png", 0) for i in range(5)]
    rows = [{"path": f"/d/{i}.png", "frame": 0, "prob:NORMAL": i / 10, "error": ""} for i in range(5)]
    assert block_id(keys[:2]) == block_id(list(keys[:2])) != block_id(keys[1:3])
    blocks = make_blocks([WorkItem(f"/d/{i}.png", 0) for i in range(5)], 2)
    assert [b["block"] for b in blocks] == [block_id(keys[0:2]), block_id(keys[2:4]), block_id(keys[4:])]

    output = ScoreOutput(tmp_path / "s.jsonl", "jsonl", cols)
    output.open()  # an earlier local run committed row 0
    output.append(rows[:1])
    output.close()
    sink = output.sink()
    sink.write(block_id(keys[1:3]), rows[1:3])
    sink.write(block_id(keys[1:3]), rows[1:3])  # a retried block
    sink.write(block_id(keys[0:2]), rows[0:2])  # blocks of another run overlapping row 0 and 1
    assert len(list(sink.folder.iterdir())) == 2
    assert set(output.done_rows()) == set(keys[:3])
    with pytest.raises(EngineError, match="2 of 5 inputs have no row"):
        output.finalize(keys)
    assert len(list(sink.folder.iterdir())) == 2  # nothing lost: --resume goes on from here
    sink.write(block_id(keys[3:]), rows[3:])
    merged = output.finalize(keys)
    assert [item_key(r["path"], r["frame"]) for r in merged] == keys
    assert [r["prob:NORMAL"] for r in merged] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert not sink.folder.exists() and read_scores(tmp_path / "s.jsonl") == merged
