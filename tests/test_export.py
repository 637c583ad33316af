"""medclass.export and ``medclass export``: ONNX of the main logits, sidecar, parity with torch on real images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_score import SIZE, kermany_jpegs, make_checkpoint

from medclass.cli import ExitCode, main
from medclass.score import read_scores

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def jpeg_folder(kermany: Path, folder: Path, n: int) -> Path:
    """``folder`` with ``n`` Kermany JPEGs copied in as x0.jpeg, x1.jpeg, … (score's input in these tests)."""
    folder.mkdir()
    for i, f in enumerate(kermany_jpegs(kermany, n)):
        shutil.copy(f, folder / f"x{i}.jpeg")
    return folder


SCORE_OPTS = ["--workers", "0", "--batch-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(folder / "tiny", operating_point={"PNEUMONIA": 0.6})
    out = folder / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == ExitCode.OK
    return ckpt, out


def test_export_writes_onnx_and_sidecar(exported: tuple[Path, Path]) -> None:
    import onnx

    ckpt, out = exported
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    side = json.loads((out.parent / "model.onnx.json").read_text())
    assert side["format"] == "medclass-onnx"
    for key in ("classes", "task", "input", "window", "fit", "operating_point", "sha256"):
        assert side[key] == meta[key]
    assert side["weights_sha256"] == meta["sha256"]
    assert side["parity_max_abs_logit_diff"] < 1e-4
    model = onnx.load(str(out))
    (inp,) = model.graph.input
    (outp,) = model.graph.output  # the main logits only: no aux output
    assert inp.name == "image" and outp.name == "logits"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch axis
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, SIZE, SIZE]
    assert outp.type.tensor_type.shape.dim[1].dim_value == 2
    assert not list(out.parent.glob(".*.tmp"))  # atomic: no temporaries left
    assert not list(out.parent.glob("*.prev*"))  # the previous-export backup is gone once complete
    assert side["onnx_size"] == out.stat().st_size
    assert side["parity_max_rel_logit_diff"] <= side["parity_max_abs_logit_diff"] + 1e-12


def test_onnxruntime_matches_torch_on_real_images(
    exported: tuple[Path, Path], kermany: Path, dicom_samples: Path
) -> None:
    from medclass import checkpoint, ingest
    from medclass.score import make_backend
    from medclass.score.runner import make_preprocessor

    ckpt, out = exported
    ck = checkpoint.load(ckpt)
    pre = make_preprocessor(ck.meta)
    files = [*kermany_jpegs(kermany, 5), dicom_samples / "highdicom" / "dx_image.dcm",
             dicom_samples / "dcmqi_ct-3slice" / "02.dcm"]  # fmt: skip
    x = np.stack([pre(ingest.read(f)[0]).array for f in files])  # N×3×S×S
    torch_probs = make_backend("torch", task="multiclass", model=ck.model, precision="fp32")(x)
    ort = make_backend("onnxruntime", task="multiclass", onnx_path=out)
    ort_probs = ort(x)
    single = np.concatenate([ort(x[i : i + 1]) for i in range(2)])  # batch 1 works too (dynamic axis)
    diff = float(np.max(np.abs(torch_probs - ort_probs)))
    print(f"onnxruntime vs torch fp32 max |Δprob| on {len(files)} real images: {diff:.2e}")
    assert diff < 1e-4
    assert np.max(np.abs(single - ort_probs[:2])) < 1e-5
    assert torch_probs[:, 1].std() > 0.01  # the images get different scores: the check means something


def test_score_with_onnxruntime_backend(exported: tuple[Path, Path], kermany: Path, tmp_path: Path) -> None:
    ckpt, out = exported
    folder = jpeg_folder(kermany, tmp_path / "in", 3)
    common = SCORE_OPTS
    a, b = tmp_path / "torch.csv", tmp_path / "ort.csv"
    assert main(["score", "--checkpoint", str(ckpt), str(folder), "--out", str(a), *common]) == ExitCode.OK
    assert main(["score", "--backend", "onnxruntime", "--onnx", str(out), str(folder), "--out", str(b),
                 *common]) == ExitCode.OK  # fmt: skip
    ra, rb = read_scores(a), read_scores(b)
    assert [r["path"] for r in ra] == [r["path"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert abs(float(x["prob:PNEUMONIA"]) - float(y["prob:PNEUMONIA"])) < 1e-4
        assert x["predicted"] == y["predicted"] and x["decision"] == y["decision"] == "operating_point"
        assert x["model_sha256"] == y["model_sha256"]


def test_score_with_openvino_backend(exported: tuple[Path, Path], kermany: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    ckpt, out = exported
    folder = jpeg_folder(kermany, tmp_path / "in", 3)
    common = SCORE_OPTS
    a, b, c = tmp_path / "torch.csv", tmp_path / "ov.csv", tmp_path / "ov16.csv"
    assert main(["score", "--checkpoint", str(ckpt), str(folder), "--out", str(a), *common]) == ExitCode.OK
    ov = ["score", "--backend", "openvino", "--onnx", str(out), str(folder), *common]
    assert main([*ov, "--out", str(b)]) == ExitCode.OK
    assert main([*ov, "--out", str(c), "--precision", "bf16"]) == ExitCode.OK
    ra, rb, rc = read_scores(a), read_scores(b), read_scores(c)
    assert [r["path"] for r in ra] == [r["path"] for r in rb] == [r["path"] for r in rc]
    for x, y, z in zip(ra, rb, rc, strict=True):
        assert abs(float(x["prob:PNEUMONIA"]) - float(y["prob:PNEUMONIA"])) < 1e-4  # f32: faithful
        assert abs(float(x["prob:PNEUMONIA"]) - float(z["prob:PNEUMONIA"])) < 0.1  # bf16: close
        assert x["model_sha256"] == y["model_sha256"] and not y["error"]


def test_openvino_refuses_a_gpu_and_a_missing_file(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from medclass.errors import ConfigError
    from medclass.model.predictor import make_predictor

    with pytest.raises(ConfigError, match="needs --onnx"):
        make_predictor("openvino", task="multiclass")
    with pytest.raises(ConfigError, match="not found"):
        make_predictor("openvino", task="multiclass", onnx_path=tmp_path / "none.onnx")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        make_predictor("openvino", task="multiclass", onnx_path=tmp_path / "none.onnx", device="cuda:0")


def test_stale_export_is_refused(exported: tuple[Path, Path], tmp_path: Path, kermany: Path, capsys) -> None:
    _, out = exported
    other = make_checkpoint(tmp_path / "other", seed=3)
    image = kermany_jpegs(kermany, 1)[0]
    code = main(["score", "--checkpoint", str(other), "--backend", "onnxruntime", "--onnx", str(out),
                 str(image), "--out", str(tmp_path / "s.csv"), "--workers", "0"])  # fmt: skip
    assert code == ExitCode.ERROR
    assert "exported from other weights" in capsys.readouterr().err


def test_missing_sidecar_is_a_clear_error(exported: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    _, out = exported
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(out, lonely)
    code = main(["score", "--backend", "onnxruntime", "--onnx", str(lonely), str(tmp_path),
                 "--out", str(tmp_path / "s.csv")])  # fmt: skip
    assert code == ExitCode.ERROR
    assert "lonely.onnx.json" in capsys.readouterr().err


# --- parity: relative to the logits' scale ----------------------------------------------------------
def test_parity_is_relative_for_large_logits() -> None:
    """A model whose logits are ~3e7 (random init does that) differs from onnxruntime by float32 rounding
    (>1e-3 absolute) but is faithful; small logits keep an absolute 1e-4 bound."""
    import torch

    from medclass.export import PARITY_RTOL, _onnx_bytes, _parity, relative_diff

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 2),
    ).eval()  # fmt: skip
    with torch.no_grad():
        net[-1].weight.mul_(1e8)
    data = _onnx_bytes(net, torch.zeros(2, 3, 16, 16), 17)
    diff, scale = _parity(data, net, 16)
    assert scale > 1e6
    assert relative_diff(diff, scale) <= PARITY_RTOL
    assert relative_diff(175.0, 3e7) <= PARITY_RTOL  # the case that refused every random-init model
    assert relative_diff(175.0, 10.0) > PARITY_RTOL  # a real mismatch is still refused
    assert relative_diff(2e-4, 0.5) > PARITY_RTOL  # small logits: absolute 1e-4


def test_export_accepts_large_logits_and_refuses_real_mismatch(tmp_path: Path, monkeypatch) -> None:
    from medclass import export
    from medclass.errors import ConfigError

    ckpt = make_checkpoint(tmp_path / "ck")
    out = tmp_path / "m.onnx"
    monkeypatch.setattr(export, "_parity", lambda *a: (175.0, 3e7))  # relative 6e-6
    result = export.export_onnx(ckpt, out)
    assert result.max_abs_logit_diff == 175.0 and result.meta["parity_max_rel_logit_diff"] < 1e-5
    before = out.read_bytes(), export.sidecar_path(out).read_bytes()
    monkeypatch.setattr(export, "_parity", lambda *a: (175.0, 10.0))
    with pytest.raises(ConfigError, match=r"differs from torch .* not written"):
        export.export_onnx(ckpt, out)
    assert (out.read_bytes(), export.sidecar_path(out).read_bytes()) == before  # previous export untouched


# --- the .onnx + .onnx.json pair ---------------------------------------------------------------------
def _copy_export(out: Path, folder: Path, name: str = "m") -> Path:
    from medclass.export import sidecar_path

    dst = folder / f"{name}.onnx"
    shutil.copy(out, dst)
    shutil.copy(sidecar_path(out), sidecar_path(dst))
    return dst


def test_replaced_onnx_is_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    from medclass.errors import ConfigError
    from medclass.export import read_sidecar

    dst = _copy_export(exported[1], tmp_path)
    assert read_sidecar(dst)["format"] == "medclass-onnx"
    data = bytearray(dst.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, other content
    dst.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="sha256 differs from its sidecar") as info:
        read_sidecar(dst)
    assert str(dst) in str(info.value) and "\n" not in str(info.value)
    dst.write_bytes(bytes(data[:-10]))
    with pytest.raises(ConfigError, match="its sidecar recorded"):
        read_sidecar(dst)
    dst.unlink()
    with pytest.raises(ConfigError, match="ONNX model is missing"):
        read_sidecar(dst)


def test_interrupted_export_is_detected_and_previous_kept(
    exported: tuple[Path, Path], tmp_path: Path, kermany: Path, monkeypatch, capsys
) -> None:
    """A crash between writing the new .onnx and its sidecar: the torn pair is refused (not scored with
    the old sidecar's classes and checksum), and the previous export is kept complete as m.prev.onnx."""
    from medclass.export import export_onnx, prev_path, read_sidecar, sidecar_path
    from medclass.weights import pair

    _, out = exported
    dst = _copy_export(out, tmp_path)
    old = dst.read_bytes(), sidecar_path(dst).read_bytes()
    other = make_checkpoint(tmp_path / "other", seed=3)

    def crash(*args, **kwargs):
        raise OSError("killed between the two renames")

    monkeypatch.setattr(pair, "atomic_write_text", crash)
    with pytest.raises(OSError, match="killed"):
        export_onnx(other, dst)
    monkeypatch.undo()
    prev = prev_path(dst)
    assert dst.read_bytes() != old[0] and sidecar_path(dst).read_bytes() == old[1]  # torn
    assert (prev.read_bytes(), sidecar_path(prev).read_bytes()) == old
    assert read_sidecar(prev)["sha256"] == read_sidecar(out)["sha256"]  # the backup is a usable export
    image = kermany_jpegs(kermany, 1)[0]
    code = main(["score", "--backend", "onnxruntime", "--onnx", str(dst), str(image),
                 "--out", str(tmp_path / "s.csv"), "--workers", "0"])  # fmt: skip
    assert code == ExitCode.ERROR
    err = capsys.readouterr().err
    assert "interrupted export" in err and "m.prev.onnx" in err and "internal error" not in err
    result = export_onnx(other, dst)  # exporting again completes the pair and drops the backup
    assert read_sidecar(dst)["sha256"] == result.meta["sha256"] and not prev.exists()
