"""Hardening: mutated real DICOM / NIfTI / PNG / JPEG bytes fed to ``medclass.ingest.read``.

The only allowed outcomes are a good image (finite float32 pixels, sane shape) or a
:class:`~medclass.errors.MedclassError` subclass whose one-line message names the file. No other
exception, no hang (``signal.alarm`` in the worker + a hard deadline in the parent), no crash of the
process (each case runs in a worker subprocess, see ``tests/fuzz/fuzzlib.py``), no memory blow-up (peak
RSS growth per case bounded; the worker runs under ``RLIMIT_AS``).

Short run here (~420 cases); the long run is ``python tests/fuzz/run_long.py --cases N`` (see
``tests/fuzz/README.md``). Run with ``-s`` to see the tally (cases, outcomes, error kinds).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
import fuzzlib as F

pytestmark = pytest.mark.slow

SEEDS = F.seed_corpus()
BY_FMT = {fmt: [s for s in SEEDS if s.fmt == fmt] for fmt in ("dicom", "nifti", "png", "jpeg")}
TALLY = F.Tally()
_SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same cases on every CI run; the long runner explores
    database=None,
)


@pytest.fixture(scope="module")
def worker():
    w = F.Worker()
    yield w
    w.close()
    print("\n[hardening-fuzz] " + TALLY.summary().replace("\n", "\n[hardening-fuzz] "))
    print(f"[hardening-fuzz] worker restarts: {w.restarts}")


def _run(
    worker, tmp_path: Path, seed: F.Seed, names: list[str], rng_seed: int, *, noext: bool = False
) -> F.Result:
    data = F.mutate(seed, names, rng_seed)
    name = "case" if noext else f"case_{seed.name}"
    f = tmp_path / name
    f.write_bytes(data)
    res = worker.run(f)
    case_id = f"{seed.name} {names} seed={rng_seed}{' noext' if noext else ''}"
    TALLY.add(case_id, res)
    if not res.allowed:
        keep = F.findings_dir()
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{res.outcome}-{res.kind}-{seed.name}-{rng_seed}".replace("/", "_")).write_bytes(data)
    assert res.allowed, f"{case_id}: {res.outcome} {res.kind}: {res.message}"
    assert res.rss_growth_kb <= F.MAX_RSS_GROWTH_KB, f"{case_id}: RSS grew {res.rss_growth_kb} KiB"
    return res


def _strategy(fmt_seeds: list[F.Seed]):
    return st.sampled_from(fmt_seeds).flatmap(
        lambda s: st.tuples(
            st.just(s),
            st.lists(st.sampled_from(sorted(F.mutators_for(s.fmt))), min_size=1, max_size=3),
            st.integers(0, 2**31 - 1),
            st.booleans(),
        )
    )


def test_seed_corpus_is_real_and_reads_clean(worker, tmp_path):
    """The unmutated seeds: every format present; each reads or fails with a MedclassError."""
    assert all(BY_FMT[f] for f in BY_FMT), {f: len(v) for f, v in BY_FMT.items()}
    for s in SEEDS:
        _run(worker, tmp_path, s, [], 0)


@settings(max_examples=220, **_SETTINGS)
@given(case=_strategy(BY_FMT["dicom"]))
def test_fuzz_dicom(worker, tmp_path, case):
    seed, names, rng_seed, noext = case
    _run(worker, tmp_path, seed, names, rng_seed, noext=noext)


@settings(max_examples=90, **_SETTINGS)
@given(case=_strategy(BY_FMT["nifti"]))
def test_fuzz_nifti(worker, tmp_path, case):
    seed, names, rng_seed, _ = case
    _run(worker, tmp_path, seed, names, rng_seed)


@settings(max_examples=90, **_SETTINGS)
@given(case=_strategy(BY_FMT["png"] + BY_FMT["jpeg"]))
def test_fuzz_png_jpeg(worker, tmp_path, case):
    seed, names, rng_seed, noext = case
    _run(worker, tmp_path, seed, names, rng_seed, noext=noext)


# --- targeted absurd sizes: must be refused as too-large (or corrupt), before allocating -------------
def _dicom_with(seed: F.Seed, tag_values: dict[int, int]) -> F.Seed:
    d = bytearray(seed.data)
    els = {e.tag: e for e in F.dicom_elements(bytes(d))}
    for tag, v in tag_values.items():
        struct.pack_into("<H", d, els[tag].value_at, v)
    return F.Seed(seed.name, seed.fmt, bytes(d))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm"])
def test_absurd_dicom_dimensions_refused_before_allocating(worker, tmp_path, name):
    seed = next(s for s in SEEDS if s.name == name)
    big = _dicom_with(seed, {F.ROWS: 65535, F.COLS: 65535})
    res = _run(worker, tmp_path, big, [], 0)
    assert res.outcome == "medclass" and res.kind in ("too-large", "corrupt"), res
    for i in range(3):  # NumberOfFrames 65535 / 99999999 / 1000 inserted or replaced
        res = _run(worker, tmp_path, seed, ["dicom-add-frames"], i)
        assert res.outcome == "medclass", res
    assert res.rss_growth_kb < 300_000


def test_absurd_nifti_dims_refused(worker, tmp_path):
    seed = next(s for s in SEEDS if s.name == "standard.nii.gz")
    import gzip

    raw = bytearray(gzip.decompress(seed.data))
    struct.pack_into("<8h", raw, 40, 3, 32767, 32767, 32767, 1, 1, 1, 1)
    res = _run(worker, tmp_path, F.Seed("absurd.nii.gz", "nifti", gzip.compress(bytes(raw))), [], 0)
    assert res.outcome == "medclass" and res.kind == "too-large", res
    assert res.rss_growth_kb < 300_000


@pytest.mark.parametrize("wh", [(0x7FFFFFFF, 1), (65535, 65535), (100000, 100000), (0, 5)])
def test_absurd_png_ihdr_refused(worker, tmp_path, wh):
    seed = next(s for s in SEEDS if s.name == "grey8.png")
    d = bytearray(seed.data)
    struct.pack_into(">II", d, 16, *wh)
    F._png_fix_crc(d, 8, 13)
    res = _run(worker, tmp_path, F.Seed("absurd.png", "png", bytes(d)), [], 0)
    assert res.outcome == "medclass", res
    assert res.rss_growth_kb < 300_000


def test_absurd_jpeg_sof_refused(worker, tmp_path):
    seed = next(s for s in SEEDS if s.name == "small.jpeg")
    d = bytearray(seed.data)
    i = d.find(b"\xff\xc0")
    struct.pack_into(">HH", d, i + 5, 65500, 65500)
    res = _run(worker, tmp_path, F.Seed("absurd.jpeg", "jpeg", bytes(d)), [], 0)
    assert res.outcome == "medclass", res
    assert res.rss_growth_kb < 300_000


def test_worker_detects_crash_and_hang(tmp_path, monkeypatch):
    """The harness itself: a worker that dies is reported as a crash, one that hangs as a hang."""
    monkeypatch.setenv("FUZZ_TEST_HOOKS", "1")
    w = F.Worker(hard_timeout=3)
    try:
        f = tmp_path / "x.png"
        f.write_bytes(BY_FMT["png"][0].data)
        assert w.run(f).outcome == "ok"
        import os
        import signal

        os.kill(w.proc.pid, signal.SIGSTOP)  # silent: looks hung
        assert w.run(f).outcome == "hang"
        assert w.run(f).outcome == "ok"  # restarted
        w.hard_timeout = 60  # a loaded machine: the abort below must be seen as a crash, not a hang
        res = w.run(tmp_path / "__abort__")  # the worker's test hook calls os.abort() mid-case, like gdcm
        assert (res.outcome, res.kind) == ("crash", "SIGABRT"), res
        assert w.run(f).outcome == "ok"
    finally:
        w.close()


def test_error_messages_carry_no_control_characters(tmp_path):
    """Header bytes echoed in a message must not carry newlines or terminal escapes (ESC [ ...)."""
    import re

    import pydicom
    from pydicom.data import get_testdata_file

    from medclass import ingest
    from medclass.errors import MedclassError

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.SOPClassUID = "1.2.3\n\x1b[31mRED\x1b[0m"
    del ds.PixelData
    f = tmp_path / "evil.dcm"
    ds.save_as(f)
    with pytest.raises(MedclassError) as err:
        ingest.read(f)
    msg = str(err.value)
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", msg), repr(msg)
    assert len(msg.splitlines()) == 1 and "evil.dcm" in msg, msg
    assert "\\x1b[31mRED" in msg or "\\n" in msg, msg  # escaped, still legible


def test_error_messages_escape_control_characters_centrally():
    """Any MedclassError (message and path) is one line without control characters; pickling keeps it."""
    import pickle

    from medclass.errors import CorruptFileError, escape_control

    exc = CorruptFileError("uid 1.2\n\x1b[2J\x00\u2028é", "dir\nname/a.dcm")
    text = str(exc)
    assert text == "dir\\nname/a.dcm: uid 1.2\\n\\x1b[2J\\x00\\u2028é", text
    assert len(text.splitlines()) == 1
    assert str(pickle.loads(pickle.dumps(exc))) == text
    assert escape_control("plain text: ok") == "plain text: ok"


def test_png_with_fewer_rows_than_ihdr_declares(tmp_path):
    """IHDR says 4× the rows the IDAT stream holds: the image must not come back zero-padded."""
    from medclass import ingest
    from medclass.errors import MedclassError

    seed = next(s for s in SEEDS if s.name == "grey8.png")
    d = bytearray(seed.data)
    w, h = struct.unpack(">II", d[16:24])
    struct.pack_into(">II", d, 16, w, 4 * h)
    F._png_fix_crc(d, 8, 13)
    f = tmp_path / "short.png"
    f.write_bytes(bytes(d))
    with pytest.raises(MedclassError) as err:
        ingest.read(f)
    assert err.value.kind == "corrupt", err.value
    assert "short.png" in str(err.value) and f"{h} of {4 * h} rows" in str(err.value), err.value
    ok = tmp_path / "ok.png"  # the seed itself is complete
    ok.write_bytes(seed.data)
    assert ingest.read(ok)[0].pixels.shape[0] == h


def test_png_completeness_check_interlaced(tmp_path):
    """Adam7 images: a complete one reads right, one whose data stops early is refused as corrupt."""
    import zlib

    import numpy as np

    from medclass import ingest
    from medclass.errors import CorruptFileError
    from medclass.ingest.image import png_missing_rows

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    def png(raw: bytes, h: int, w: int) -> bytes:
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 1)  # 8-bit grey, Adam7
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b"")
        )

    h, w = 37, 29
    pixels = np.random.default_rng(0).integers(0, 256, (h, w), dtype=np.uint8)
    raw = b"".join(
        b"\x00" + pixels[y, x0::dx].tobytes()
        for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
        if x0 < w
        for y in range(y0, h, dy)
    )  # fmt: skip
    full = tmp_path / "adam7.png"
    full.write_bytes(png(raw, h, w))
    assert png_missing_rows(full.read_bytes()) is None
    assert np.array_equal(ingest.read(full)[0].pixels, pixels.astype(np.float32))
    short = tmp_path / "adam7_short.png"
    short.write_bytes(png(raw[: len(raw) // 2], h, w))
    assert "interlaced" in (png_missing_rows(short.read_bytes()) or "")
    with pytest.raises(CorruptFileError, match=r"adam7_short\.png: "):  # Pillow itself notices this one
        ingest.read(short)
