"""Hardening: manifest paths that escape the data root (``..``, absolute, symlinks out) are refused.

By the library (``Manifest.resolve``, ``check_manifest``) and by every command that reads a manifest:
``manifest check``, ``train``, ``evaluate`` (checkpoint + manifest), ``score`` (manifest input). The
opt-in is ``allow_outside_root=True`` in the library and ``--allow-outside-root`` on those commands.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclass.cli import main
from medclass.errors import ManifestError, UnsafePathError
from medclass.manifest import check_manifest, load_manifest

HEADER = "path,patient_id,split,label\n"


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def tree(tmp_path: Path):
    """data/ with 12 good images (2 classes, 3 splits) and outside/secret.png beside it."""
    root = tmp_path / "data"
    rows = []
    for i in range(12):
        label = "a" if i % 2 else "b"
        split = ("train", "train", "val", "test")[i % 4] if i < 8 else ("train", "val", "test", "test")[i % 4]
        _png(root / label / f"img{i}.png", i)
        rows.append(f"{label}/img{i}.png,p{i},{split},{label}\n")
    secret = _png(tmp_path / "outside" / "secret.png", 99)
    (root / "a" / "link.png").symlink_to(secret)
    (root / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    return root, rows, secret


BAD = {
    "dotdot": "../outside/secret.png",
    "dotdot-inside": "a/../../outside/secret.png",
    "absolute": None,  # filled with the absolute path of the secret
    "symlink-file": "a/link.png",
    "symlink-dir": "linkdir/secret.png",
    "backslash": "..\\outside\\secret.png",
}


def _bad_path(kind: str, secret: Path) -> str:
    return str(secret) if kind == "absolute" else BAD[kind]


def _manifest(root: Path, rows: list[str], bad: str, split: str = "test") -> Path:
    m = root / "m.csv"
    m.write_text(HEADER + "".join(rows) + f"{bad},pbad,{split},a\n")
    return m


@pytest.mark.parametrize("kind", sorted(BAD))
def test_resolve_refuses_escaping_paths(tree, kind):
    root, rows, secret = tree
    m = load_manifest(_manifest(root, rows, _bad_path(kind, secret)), root)
    bad_row = m.rows[-1]
    with pytest.raises(UnsafePathError) as err:
        m.resolve(bad_row)
    msg = str(err.value)
    assert "m.csv" in msg and f"line {bad_row.line}" in msg and "\n" not in msg
    assert err.value.kind == "unsafe-path" and isinstance(err.value, ManifestError)
    for r in m.rows[:-1]:
        assert m.resolve(r).is_file()
    # the explicit opt-in
    if kind != "backslash":
        assert m.resolve(bad_row, allow_outside_root=True).resolve() == secret.resolve()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink-file", "symlink-dir"])
def test_check_manifest_lists_the_escape(tree, kind):
    root, rows, secret = tree
    rep = check_manifest(
        load_manifest(_manifest(root, rows, _bad_path(kind, secret)), root), hash_content=False
    )
    assert not rep.ok
    assert any("data root" in str(p) for p in rep.problems), [str(p) for p in rep.problems]


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink-file"])
def test_cli_manifest_check_refuses(tree, kind, capsys):
    root, rows, secret = tree
    m = _manifest(root, rows, _bad_path(kind, secret))
    assert main(["manifest", "check", str(m), "--data-root", str(root), "--no-hash"]) == 1
    out = capsys.readouterr()
    assert "data root" in out.out + out.err


def test_symlink_inside_root_is_fine(tree):
    root, rows, _ = tree
    (root / "b" / "alias.png").symlink_to(root / "a" / "img1.png")
    m = load_manifest(_manifest(root, rows, "b/alias.png"), root)
    assert m.resolve(m.rows[-1]).is_file()


def test_data_root_from_env_also_guarded(tree, monkeypatch):
    root, rows, _secret = tree
    m_path = _manifest(root, rows, "../outside/secret.png")
    monkeypatch.setenv("MEDCLASS_DATA_ROOT", str(root))
    m = load_manifest(m_path)
    with pytest.raises(UnsafePathError):
        m.resolve(m.rows[-1])


def test_manifest_build_refuses_label_rows_outside_data_root(tree, tmp_path, capsys):
    """``manifest build --labels-csv``: a row naming a file outside --data-root is refused."""
    root, _rows, _secret = tree
    labels = root / "labels.csv"
    labels.write_text("path,label,patient_id\na/img1.png,a,p1\nb/img0.png,b,p0\n../outside/secret.png,a,p9\n")
    out = tmp_path / "built.csv"
    code = main(
        ["manifest", "build", "--labels-csv", str(labels), "--data-root", str(root), "--out", str(out)]
    )
    assert code == 1
    assert "outside the data root" in capsys.readouterr().err
    assert not out.exists()


# --- commands that build datasets from a manifest ------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch

    from medclass import checkpoint
    from medclass.model import create_model
    from medclass.preprocess import input_spec

    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    model = create_model(2, image_size=75).eval()
    meta = {"classes": ["a", "b"], "task": "multiclass", "positive_class": "b",
            "input": dataclasses.asdict(input_spec("inception_v3", image_size=75)),
            "window": "auto", "fit": "letterbox", "seed": 0}  # fmt: skip
    checkpoint.save(d / "ck", model, meta)
    return d / "ck"


def _assert_refused(code: int, capsys, secret: Path) -> str:
    err = capsys.readouterr().err
    assert code != 0, err
    assert "data root" in err or "absolute" in err, err
    assert "internal error" not in err, err
    return err


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,cache", [("dotdot", "none"), ("absolute", "none"), ("symlink-file", "none"), ("dotdot", "memory")]
)
def test_cli_train_refuses(tree, tmp_path, kind, cache, capsys):
    root, rows, secret = tree
    m = _manifest(root, rows, _bad_path(kind, secret), split="train")
    run = tmp_path / "run"
    code = main(["train", "--manifest", str(m), "--data-root", str(root), "--out", str(run), "--epochs", "1",
                 "--positive-class", "b",
                 "--image-size", "75", "--batch-size", "4", "--device", "cpu", "--workers", "0",
                 "--cache", cache, "--no-progress", "--no-tensorboard"])  # fmt: skip
    err = _assert_refused(code, capsys, secret)
    assert code == 1 and "m.csv" in err and "line 14" in err, err  # the manifest line is named
    assert not list(run.glob("*.safetensors")), "trained although the manifest escapes the data root"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink-file"])
def test_cli_evaluate_refuses(tree, tmp_path, ckpt, kind, capsys):
    root, rows, secret = tree
    m = _manifest(root, rows, _bad_path(kind, secret), split="test")
    out = tmp_path / "ev"
    code = main(["evaluate", "--checkpoint", str(ckpt), "--manifest", str(m), "--data-root", str(root),
                 "--out", str(out), "--bootstrap", "10", "--level", "image"])  # fmt: skip
    err = _assert_refused(code, capsys, secret)
    assert code == 1 and "m.csv" in err and "line 14" in err, err
    assert not (out / "predictions.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink-file"])
def test_cli_score_manifest_does_not_read_outside(tree, tmp_path, ckpt, kind, capsys):
    """score turns a bad manifest row into an error row (or refuses): the outside file is never scored."""
    import csv

    root, rows, secret = tree
    m = _manifest(root, rows, _bad_path(kind, secret))
    out = tmp_path / "scores.csv"
    code = main(["score", "--checkpoint", str(ckpt), str(m), "--data-root", str(root), "--out", str(out),
                 "--workers", "0", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert "internal error" not in err, err
    if code == 1 and not out.exists():
        assert "data root" in err or "absolute" in err
        return
    got = list(csv.DictReader(out.open()))
    bad = [r for r in got if "secret" in r.get("path", "") or r.get("error")]
    assert len(bad) == 1, got
    assert bad[0]["error"] and ("data root" in bad[0]["error"] or "absolute" in bad[0]["error"])
    assert not any(v for k, v in bad[0].items() if k.startswith(("prob", "score")) and v), bad[0]
    assert code == 3  # partial


def test_cli_flag_allow_outside_root_offered():
    """Every command that reads a manifest offers the explicit opt-in (off by default)."""
    from medclass.cli import build_parser
    from medclass.train.config import TrainConfig

    parser = build_parser()
    subs = {name: sub for action in parser._subparsers._group_actions for name, sub in action.choices.items()}
    check = next(
        sub
        for a in subs["manifest"]._subparsers._group_actions
        for n, sub in a.choices.items()
        if n == "check"
    )
    for name, sub in (("manifest check", check), ("train", subs["train"]), ("evaluate", subs["evaluate"]),
                      ("score", subs["score"])):  # fmt: skip
        assert "--allow-outside-root" in sub.format_help(), name
    assert TrainConfig().allow_outside_root is False


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink-file"])
def test_cli_manifest_check_allow_outside_root(tree, kind, capsys):
    root, rows, secret = tree
    m = _manifest(root, rows, _bad_path(kind, secret))
    assert (
        main(["manifest", "check", str(m), "--data-root", str(root), "--no-hash", "--allow-outside-root"])
        == 0
    )
    assert "data root" not in capsys.readouterr().err


@pytest.mark.slow
def test_cli_evaluate_allow_outside_root(tree, tmp_path, ckpt, capsys):
    """With the explicit opt-in the escaping row is read like any other (and only then)."""
    import csv

    root, rows, secret = tree
    m = _manifest(root, rows, _bad_path("dotdot", secret), split="test")
    out = tmp_path / "ev"
    code = main(["evaluate", "--checkpoint", str(ckpt), "--manifest", str(m), "--data-root", str(root),
                 "--out", str(out), "--bootstrap", "10", "--level", "image", "--allow-outside-root"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    ids = [r["image_id"] for r in csv.DictReader((out / "predictions.csv").open())]
    assert "../outside/secret.png" in ids, ids


def test_dataset_refuses_before_decoding(tree):
    """CachedDataset checks every row's path up front, whatever the cache mode; the opt-in reads it."""
    from medclass.preprocess.dataset import CachedDataset

    root, rows, secret = tree
    decoded = []

    def pre(image):
        decoded.append(image)
        return np.zeros((3, 8, 8), np.float32)

    for cache in ("memory", "none"):
        m = load_manifest(_manifest(root, rows, _bad_path("dotdot", secret), split="train"), root)
        with pytest.raises(UnsafePathError, match="line 14"):
            CachedDataset(m, "train", pre, cache=cache, workers=0).load()
        assert decoded == []
    m = load_manifest(
        _manifest(root, rows, _bad_path("dotdot", secret), split="train"), root, allow_outside_root=True
    )
    ds = CachedDataset(m, "train", pre, cache="memory", workers=0).load()
    assert len(ds) == len(m.split("train")) and not ds.errors
