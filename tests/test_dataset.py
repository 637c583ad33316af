"""CachedDataset: decode once, cache in memory / on disk, skip unreadable files, targets per task.

Also provides :func:`make_png_set`, the tiny generated data set the training tests use.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from medclass.errors import ConfigError, DataError, MedclassError
from medclass.preprocess.dataset import CachedDataset, decode_row


def make_png_set(
    root: Path,
    *,
    n_train: int = 8,
    n_val: int = 4,
    size: int = 64,
    multilabel: bool = False,
    corrupt: int = 0,
    seed: int = 0,
    positives: float = 0.5,
) -> Path:
    """Write small grey PNGs (class ``opacity``: a bright blob; ``normal``: none) and a manifest CSV.

    Multilabel: findings ``blob`` (bright disk) and ``line`` (bright horizontal bar), independently.
    ``corrupt`` extra training rows point at files that are not images. Returns the manifest path.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[:size, :size]
    n = n_train + n_val
    n_pos = round(positives * n_train)
    for i in range(n):
        split = "train" if i < n_train else "val"
        k = i if i < n_train else i - n_train
        pos = (k < n_pos) if split == "train" else (k % 2 == 0)
        img = 40 + rng.normal(0, 8, (size, size))
        rec: dict[str, object] = {"path": f"img{i:02d}.png", "patient_id": f"p{i:02d}", "split": split}
        if multilabel:
            blob, line = int(i % 2 == 0), int(i % 3 == 0)
            if blob:
                img += 150 * (((yy - size / 3) ** 2 + (xx - size / 2) ** 2) < (size / 6) ** 2)
            if line:
                img[int(size * 0.75) : int(size * 0.75) + 4, 8:-8] += 150
            rec["finding:blob"], rec["finding:line"] = blob, line
        else:
            if pos:
                cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
                img += 160 * (((yy - cy) ** 2 + (xx - cx) ** 2) < (size / 7) ** 2)
            rec["label"] = "opacity" if pos else "normal"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / rec["path"])
        rows.append(rec)
    for j in range(corrupt):
        bad = root / f"broken{j}.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 3)
        rec = {"path": bad.name, "patient_id": f"q{j}", "split": "train"}
        if multilabel:
            rec["finding:blob"], rec["finding:line"] = 0, 0
        else:
            rec["label"] = "normal"
        rows.append(rec)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _preprocessor(size: int = 80):
    from medclass.preprocess import Preprocessor, input_spec

    return Preprocessor(input_spec("inception_v3", size))


def _manifest(path: Path):
    from medclass.manifest import load_manifest

    return load_manifest(path, path.parent)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> Path:
    return make_png_set(tmp_path_factory.mktemp("pngs"), corrupt=1)


def test_items_shapes_targets_and_memory_cache(pngs):
    m = _manifest(pngs)
    ds = CachedDataset(m, "train", _preprocessor(80), workers=0).load()
    assert len(ds) == 8 and len(ds.errors) == 1  # the broken file is skipped
    x, y = ds[0]
    assert x.shape == (3, 80, 80) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert ds.decoded_ == 9 - 1
    # the cached tensor equals a fresh decode of the same file
    row = ds.rows[0]
    fresh = decode_row(m.resolve(row), row.frame, ds.preprocessor)
    assert np.array_equal(x.numpy(), fresh)
    assert ds.targets().tolist() == [m.classes.index(r.label) for r in ds.rows if r.path != "broken0.png"]
    assert ds.nbytes() == 9 * 3 * 80 * 80 * 4


def test_corrupt_file_is_skipped_with_a_warning_naming_it(pngs, caplog):
    with caplog.at_level(logging.WARNING, logger="medclass"):
        ds = CachedDataset(_manifest(pngs), "train", _preprocessor(80), workers=0).load()
    assert [e.path.endswith("broken0.png") for e in ds.errors] == [True]
    assert "broken0.png" in caplog.text and "skipped" in caplog.text
    assert ds.errors[0].error  # the reason is kept


def test_all_rows_failing_is_a_clear_error(tmp_path):
    path = make_png_set(tmp_path, n_train=2, n_val=2)
    for p in tmp_path.glob("img0[01].png"):
        p.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"all 2 images of split 'train' failed.*img0"):
        CachedDataset(_manifest(path), "train", _preprocessor(80), workers=0).load()


def test_disk_cache_is_reused_and_keyed_by_file_and_settings(pngs, tmp_path):
    m = _manifest(pngs)
    cache = tmp_path / "cache"
    first = CachedDataset(m, "val", _preprocessor(80), cache="disk", cache_dir=cache, workers=0).load()
    assert first.decoded_ == 4 and len(list(cache.rglob("*.npy"))) == 4
    assert not list(cache.rglob("*.tmp"))  # written atomically
    second = CachedDataset(m, "val", _preprocessor(80), cache="disk", cache_dir=cache, workers=0).load()
    assert second.decoded_ == 0  # every image came from the disk cache
    assert all(torch.equal(first[i][0], second[i][0]) for i in range(4))
    other = CachedDataset(m, "val", _preprocessor(96), cache="disk", cache_dir=cache, workers=0).load()
    assert other.decoded_ == 4  # another input size is another key


def test_half_precision_storage_halves_memory(pngs):
    m = _manifest(pngs)
    full = CachedDataset(m, "val", _preprocessor(80), workers=0).load()
    half = CachedDataset(m, "val", _preprocessor(80), dtype="float16", workers=0).load()
    assert half.nbytes() * 2 == full.nbytes()
    x16, _ = half[1]
    assert x16.dtype == torch.float32
    assert torch.allclose(x16, full[1][0], atol=1e-2)


def test_parallel_decoding_matches_serial(tmp_path):
    path = make_png_set(tmp_path, n_train=34, n_val=2, size=32, corrupt=1)
    m = _manifest(path)
    serial = CachedDataset(m, "train", _preprocessor(75), workers=0).load()
    parallel = CachedDataset(m, "train", _preprocessor(75), workers=2).load()
    assert len(parallel) == len(serial) == 34 and len(parallel.errors) == 1
    assert all(torch.equal(serial[i][0], parallel[i][0]) for i in (0, 17, 33))


def test_multilabel_targets_are_float_vectors(tmp_path):
    path = make_png_set(tmp_path, n_train=6, n_val=2, multilabel=True)
    ds = CachedDataset(_manifest(path), "train", _preprocessor(75), workers=0)
    _, y = ds[0]
    assert y.dtype == torch.float32 and y.tolist() == [1.0, 1.0]  # image 0: blob and line
    assert ds.targets().shape == (6, 2)


def test_bad_settings():
    with pytest.raises(ConfigError, match="unknown cache 'ram'; valid: memory, disk, none"):
        CachedDataset(None, "train", lambda i: i, cache="ram")
    with pytest.raises(ConfigError, match="cache_dir"):
        CachedDataset(None, "train", lambda i: i, cache="disk")


def test_no_cache_decodes_on_access_and_names_a_broken_file(pngs):
    ds = CachedDataset(_manifest(pngs), "train", _preprocessor(75), cache="none").load()
    assert len(ds) == 9 and ds.nbytes() == 0  # nothing decoded up front
    x, _ = ds[0]
    assert x.shape == (3, 75, 75)
    broken = next(i for i, r in enumerate(ds.rows) if r.path == "broken0.png")
    with pytest.raises(MedclassError, match=r"broken0\.png"):
        ds[broken]
