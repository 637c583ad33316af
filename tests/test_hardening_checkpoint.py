"""Hardening of checkpoint loading beyond tests/test_checkpoint.py.

Covered there: round trip, truncation, flipped byte (sha256), pickles, missing pieces, unknown format /
architecture, another architecture's weights, failed save. Here: a hostile safetensors header (huge
length, overlapping/out-of-range offsets, wrong dtype) with a sidecar whose checksum matches it (an
attacker can recompute it), a tampered sidecar (classes swapped, image_size junk, deeply nested JSON,
huge file; resealed with meta_sha256 or not), special files and symlinks as the weights (``/dev/zero``, a FIFO, a link elsewhere), and a
weights file far larger than the sidecar says (must be refused before it is read into memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import struct
from pathlib import Path

import pytest
import torch

from medclass import checkpoint
from medclass.errors import CheckpointError
from medclass.model import create_model


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    from medclass.preprocess import input_spec

    torch.manual_seed(0)
    model = create_model(2, image_size=75)
    meta = {"classes": ["normal", "pneumonia"], "task": "multiclass",
            "input": dataclasses.asdict(input_spec("inception_v3", image_size=75)),
            "window": "auto", "fit": "letterbox", "seed": 0}  # fmt: skip
    stem = tmp_path_factory.mktemp("ck") / "best"
    checkpoint.save(stem, model, meta)
    return stem


def _copy(good: Path, folder: Path) -> Path:
    stem = folder / "ck"
    for sfx in (".safetensors", ".json"):
        Path(str(stem) + sfx).write_bytes(Path(str(good) + sfx).read_bytes())
    return stem


def _w(stem: Path) -> Path:
    return Path(str(stem) + ".safetensors")


def _j(stem: Path) -> Path:
    return Path(str(stem) + ".json")


def _reseal(stem: Path, **changes) -> None:
    """Apply ``changes`` to the sidecar and recompute its size, sha256 and meta_sha256 for the current
    weights (what an attacker would do), so the checks after the checksums are what is tested."""
    data = _w(stem).read_bytes()
    meta = json.loads(_j(stem).read_text())
    meta.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    meta.update(changes)
    meta["meta_sha256"] = checkpoint.meta_digest(meta)
    _j(stem).write_text(json.dumps(meta))


@contextlib.contextmanager
def time_limit(seconds: int):
    def boom(signum, frame):
        raise TimeoutError(f"load took over {seconds}s (blocked on a special file?)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _refused(stem: Path, *match: str) -> str:
    with time_limit(60), pytest.raises(CheckpointError) as err:
        checkpoint.load(stem)
    msg = str(err.value)
    assert "\n" not in msg
    if match:
        assert any(m in msg for m in match), msg
    return msg


# --- hostile safetensors with a matching checksum ------------------------------------------------------
def _st(header: dict, payload: bytes = b"", header_len: int | None = None) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if header_len is None else header_len) + h + payload


@pytest.mark.parametrize(
    "name,blob",
    [
        ("huge-header-length", _st({}, header_len=2**63)),
        (
            "header-longer-than-file",
            _st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, header_len=10**6),
        ),
        (
            "offsets-out-of-range",
            _st({"fc.weight": {"dtype": "F32", "shape": [2, 2048], "data_offsets": [0, 16384]}}, b"\0" * 16),
        ),
        (
            "shape-overflow",
            _st(
                {"fc.weight": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 16]}}, b"\0" * 16
            ),
        ),
        (
            "overlapping",
            _st(
                {
                    "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
                },
                b"\0" * 24,
            ),
        ),
        (
            "bad-dtype",
            _st({"fc.weight": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        ),
        ("not-json-header", struct.pack("<Q", 8) + b"\x80\x04K\x01." + b"\0" * 3),
        ("empty-tensors", _st({})),
        ("only-8-bytes", struct.pack("<Q", 0)),
        ("pickle-inside", b"\x80\x04\x95" + b"\0" * 64),
        ("zip-inside", b"PK\x03\x04" + b"\0" * 64),
    ],
)
def test_hostile_weights_with_resealed_sidecar_are_refused(good, tmp_path, name, blob):
    stem = _copy(good, tmp_path)
    _w(stem).write_bytes(blob)
    _reseal(stem)
    _refused(stem)


def test_weights_of_other_shapes_with_resealed_sidecar(good, tmp_path):
    """Right names, wrong shapes (a 3-class fc under a 2-class sidecar): refused, not half-loaded."""
    from safetensors.torch import save as st_save

    state = checkpoint.read_state_dict(good)[0]
    state["fc.weight"] = torch.zeros(3, state["fc.weight"].shape[1])
    state["fc.bias"] = torch.zeros(3)
    stem = _copy(good, tmp_path)
    _w(stem).write_bytes(st_save(state))
    _reseal(stem)
    _refused(stem, "class-count", "mismatch", "shape")


# --- tampered sidecar ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value",
    [
        ("image_size", "abc"),
        ("image_size", -5),
        ("image_size", 10**9),
        ("image_size", [1, 2]),
        ("image_size", True),
        ("image_size", 76),  # in range, but not the input spec's size
        ("num_classes", "2"),
        ("num_classes", 0),
        ("classes", "normal,pneumonia"),
        ("classes", [1, None]),
        ("classes", ["normal", ""]),
        ("classes", ["normal"]),
        ("classes", ["normal", "normal"]),
        ("size", "big"),
        ("sha256", None),
        ("sha256", "zz"),
        ("input", "junk"),
        ("input", {"mean": [0.5, 0.5, 0.5]}),
        ("input", {"size": 75, "colour": "red"}),
        ("input", {"size": 75, "mean": [0.5, 0.5, 0.5], "std": [0, 1, 1]}),
        ("input", {"size": 75, "mean": "abc", "std": [1, 1, 1]}),
        ("task", "regression"),
    ],
)
def test_tampered_sidecar_fields_are_refused_cleanly(good, tmp_path, field, value):
    """A sidecar edited by hand, meta_sha256 recomputed: a CheckpointError naming the file and the key."""
    stem = _copy(good, tmp_path)
    _reseal(stem, **{field: value})
    msg = _refused(stem)
    assert str(_j(stem)) in msg and f"'{field}" in msg, msg


def test_edited_sidecar_without_resealing_is_refused(good, tmp_path):
    """Any hand edit (here an unrelated key) without recomputing meta_sha256 is refused as an edit."""
    stem = _copy(good, tmp_path)
    meta = json.loads(_j(stem).read_text())
    meta["seed"] = 1
    _j(stem).write_text(json.dumps(meta))
    assert "edited after saving" in _refused(stem)
    meta.pop("meta_sha256")
    _j(stem).write_text(json.dumps(meta))
    assert "meta_sha256" in _refused(stem)


def test_sidecar_reformatted_still_loads(good, tmp_path):
    """meta_sha256 is over the canonical JSON: re-indenting or reordering keys is not an edit."""
    stem = _copy(good, tmp_path)
    meta = json.loads(_j(stem).read_text())
    _j(stem).write_text(json.dumps(dict(reversed(list(meta.items()))), indent=7))
    assert checkpoint.load(stem).classes == ["normal", "pneumonia"]


def test_deeply_nested_sidecar(good, tmp_path):
    stem = _copy(good, tmp_path)
    _j(stem).write_text("[" * 200_000 + "]" * 200_000)
    assert "nested too deeply" in _refused(stem)
    state = tmp_path / "t.state.json"
    state.write_text("{" + '"a":{' * 200_000 + "}" * 200_001)
    Path(str(tmp_path / "t.state") + ".safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="nested too deeply"):
        checkpoint.load_training_state(tmp_path / "t", torch.optim.SGD([torch.zeros(1)], lr=0.1))


def test_swapped_classes_in_sidecar(good, tmp_path):
    """Classes reordered in the sidecar (weights untouched, checksum intact) would flip predictions.

    The sidecar's ``meta_sha256`` (its canonical JSON without that field) catches the edit; it cannot stop
    a deliberate attacker (who would recompute it) but catches hand edits and merges.
    """
    stem = _copy(good, tmp_path)
    meta = json.loads(_j(stem).read_text())
    meta["classes"] = list(reversed(meta["classes"]))
    _j(stem).write_text(json.dumps(meta))
    msg = _refused(stem, "sidecar was edited after saving")
    assert str(_j(stem)) in msg


def test_huge_sidecar_not_read_whole(good, tmp_path, monkeypatch):
    """A multi-GB .json would be read into memory: the loader checks its size first."""
    stem = _copy(good, tmp_path)
    with open(_j(stem), "r+b") as fh:  # sparse: 3 GiB of nothing after the JSON object
        fh.seek(3 << 30)
        fh.write(b" ")
    real_open = Path.open

    def spy(self, *a, **k):
        if self.suffix == ".json" and self.stat().st_size > 64 << 20:
            raise AssertionError("opened a > 64 MiB sidecar to read it")
        return real_open(self, *a, **k)

    monkeypatch.setattr(Path, "open", spy)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: spy(self).read())
    msg = _refused(stem, "MiB")
    assert str(_j(stem)) in msg


def test_oversized_weights_refused_before_reading(good, tmp_path, monkeypatch):
    """Weights far larger than the sidecar's recorded size: refused from stat(), not after reading it all."""
    stem = _copy(good, tmp_path)
    with open(_w(stem), "r+b") as fh:
        fh.seek(8 << 30)  # sparse 8 GiB
        fh.write(b"\0")
    real_open, real_read = Path.open, Path.read_bytes

    def big(path: Path) -> bool:
        return path.suffix == ".safetensors" and path.stat().st_size > 1 << 30

    def spy_open(self, *a, **k):
        assert not big(self), "opened an 8 GiB weights file whose sidecar says ~100 MB"
        return real_open(self, *a, **k)

    def spy_read(self):
        assert not big(self), "read an 8 GiB weights file whose sidecar says ~100 MB"
        return real_read(self)

    monkeypatch.setattr(Path, "open", spy_open)
    monkeypatch.setattr(Path, "read_bytes", spy_read)
    _refused(stem, "truncated or replaced")


# --- special files and links ---------------------------------------------------------------------------
def test_weights_symlink_to_dev_zero_refused(good, tmp_path):
    stem = _copy(good, tmp_path)
    _w(stem).unlink()
    _w(stem).symlink_to("/dev/zero")
    _refused(stem)


def test_weights_fifo_does_not_hang(good, tmp_path):
    stem = _copy(good, tmp_path)
    _w(stem).unlink()
    os.mkfifo(_w(stem))
    _refused(stem)


def test_sidecar_fifo_does_not_hang(good, tmp_path):
    stem = _copy(good, tmp_path)
    _j(stem).unlink()
    os.mkfifo(_j(stem))
    _refused(stem)


def test_symlinked_checkpoint_to_other_weights(good, tmp_path):
    """A .safetensors symlinked to another model's weights: the sidecar's sha256 catches it."""
    torch.manual_seed(1)
    other = tmp_path / "other"
    checkpoint.save(other, create_model(2, image_size=75), {"classes": ["a", "b"], "task": "multiclass"})
    stem = _copy(good, tmp_path)
    _w(stem).unlink()
    _w(stem).symlink_to(_w(other))
    _refused(stem, "sha256", "size")


def test_symlinked_stem_loads_its_target(good, tmp_path):
    """Both files symlinked to a good checkpoint: loads (links are the user's choice), same weights."""
    stem = tmp_path / "alias"
    _w(stem).symlink_to(_w(good))
    _j(stem).symlink_to(_j(good))
    ck = checkpoint.load(stem)
    assert ck.classes == ["normal", "pneumonia"]


def test_folder_named_like_weights(good, tmp_path):
    stem = _copy(good, tmp_path)
    _w(stem).unlink()
    _w(stem).mkdir()
    _refused(stem)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin"])
def test_pickle_suffix_given_directly(tmp_path, suffix):
    f = tmp_path / f"model{suffix}"
    torch.save({"x": torch.zeros(1)}, f)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        checkpoint.load(f)


def test_cli_refuses_pickle_as_checkpoint(tmp_path, capsys):
    from medclass.cli import main

    f = tmp_path / "model.pth"
    torch.save({"x": torch.zeros(1)}, f)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (32, 32)).save(img)
    for argv in (["score", "--checkpoint", str(f), str(img), "--out", str(tmp_path / "s.csv"), "--workers", "0"],
                 ["explain", "--checkpoint", str(f), str(img), "--out", str(tmp_path / "e")]):  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "unpickle" in err and "internal error" not in err
