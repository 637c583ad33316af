"""End-to-end scoring throughput: ``medclass score``'s pipeline vs a naive loop and vs forward-only.

Inputs are real files: the Kermany chest X-ray JPEGs (full resolution) and the 2D single-frame DICOM
samples that decode with the installed codecs, repeated (symlinked under distinct names) to ``--n`` items.
Three measurements in the same run, same model (random Inception V3, ``--size`` px, 2 classes):

- **pipeline**: :func:`medclass.score.score_items` — decode + preprocess in ``--workers`` processes,
  overlapped with batched inference (``--batch-size``, ``--precision``, channels_last), rows committed
  (append + fsync) to a CSV; worker start-up included. Also the whole :func:`run_scoring` wall time
  (checkpoint load, input expansion, summary) for reference.
- **naive**: what a first script does: pydicom ``pixel_array`` / PIL read, min-max scale, PIL bilinear
  resize, mean/std, ``model(x)`` at batch 1 in fp32, default NCHW layout, one image after the other.
- **forward-only**: the same backend as the pipeline (batch, precision, channels_last) on tensors already
  in memory: the ceiling the pipeline can approach.
- **decode-only**: the decode workers alone (read + preprocess, no model): the other ceiling. With
  overlap the pipeline approaches min(decode, forward); without it, their harmonic combination. On a
  machine with few cores both compete for the same cores.

Each of ``--precisions`` (fp32, bf16: the torch backend; int8: onnxruntime running an ``export --quantize
int8`` of the same weights; ov-fp32, ov-int8: OpenVINO running the fp32 or int8 export) is measured in turn; the naive loop runs before and after them (the mean is the
baseline).

    .venv/bin/python benchmarks/bench_score.py --n 96 --naive-n 16
    .venv/bin/python benchmarks/bench_score.py --n 40 --size 128 --workers 1 --naive-n 10 --precisions int8

Targets (2-core CPU): int8 pipeline ≥ 3× naive and ≥ 0.8× its forward-only; fp32 pipeline ≥ 1.5× naive. Writes ``benchmarks/results/score-<time>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import environment, environment_line, table, write_results  # noqa: E402

DATA = Path(os.environ.get("MEDCLASS_DATA_ROOT", HERE.parent.parent / "shared" / "data"))


def real_files() -> list[Path]:
    """Kermany JPEGs and the 2D single-frame DICOM samples that medclass can read."""
    from medclass import ingest

    files = sorted((DATA / "kermany_cxr_pneumonia_fullres" / "images").rglob("*.jpeg"))
    for f in sorted((DATA / "dicom_samples").rglob("*.dcm")):
        try:
            meta = ingest.read_meta(f)
            if meta.n_frames == 1 and len(meta.original_shape) >= 2:
                ingest.read_frame(f, 0)
                files.append(f)
        except Exception:  # not 2D or needs a missing codec: not part of the benchmark
            continue
    return files


def build_inputs(folder: Path, n: int, kind: str = "mixed") -> list[Path]:
    """``n`` links to real files under distinct names: JPEGs and DICOM interleaved (``mixed``), or only
    one ``kind`` (``jpeg``, ``dicom``)."""
    files = real_files()
    jpegs = [f for f in files if f.suffix == ".jpeg"]
    dicoms = [f for f in files if f.suffix != ".jpeg"]
    if kind == "jpeg":
        mixed = jpegs
    elif kind == "dicom":
        mixed = dicoms
    else:
        mixed = [
            f
            for pair in zip(jpegs, dicoms * (len(jpegs) // max(1, len(dicoms)) + 1), strict=False)
            for f in pair
        ]
    out = []
    for i in range(n):
        src = mixed[i % len(mixed)]
        link = folder / f"{i:05d}_{src.name}"
        link.symlink_to(src)
        out.append(link)
    return out


def make_checkpoint(stem: Path, size: int) -> Path:
    import torch

    from medclass import checkpoint
    from medclass.model import create_model
    from medclass.preprocess import input_spec

    torch.manual_seed(0)
    spec = input_spec(image_size=size)
    model = create_model(2, image_size=size).eval()
    meta = dict(
        classes=["a", "b"], task="multiclass", input=dataclasses.asdict(spec), window="auto", fit="letterbox"
    )
    checkpoint.save(stem, model, meta)
    return stem


def naive(files: list[Path], model, size: int, mean, std) -> float:
    """Images/s of the naive loop over ``files``."""
    import numpy as np
    import pydicom
    import torch
    from PIL import Image

    from medclass.model import MainLogits

    net = MainLogits(model).eval()
    m = np.array(mean, dtype=np.float32)[:, None, None]
    s = np.array(std, dtype=np.float32)[:, None, None]
    start = time.perf_counter()
    for f in files:
        if f.suffix == ".jpeg":
            arr = np.asarray(Image.open(f).convert("L"), dtype=np.float32)
        else:
            arr = pydicom.dcmread(f).pixel_array.astype(np.float32)
            arr = arr[..., 0] if arr.ndim == 3 else arr
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6)
        img = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR), dtype=np.float32)
        x = torch.from_numpy(((np.stack([img] * 3) - m) / s)[None].astype(np.float32))  # 1×3×S×S
        with torch.no_grad():
            torch.softmax(net(x), 1)
    return len(files) / (time.perf_counter() - start)


def int8_export(stem: Path, folder: Path, files: list[Path], calibration: int) -> Path:
    """``medclass export --quantize int8`` of the benchmark's checkpoint, calibrated on ``calibration`` of
    the benchmark's own real inputs (a one-class manifest: the guard's AUC is not measured, only |Δprob|;
    forced, since a random network is not what the guard is for)."""
    from medclass.export import Int8Options, export_onnx

    manifest = folder.parent / "calibration.csv"
    lines = ["path,patient_id,split,label"] + [
        f"{f.name},p{i},val,a" for i, f in enumerate(files[:calibration])
    ]
    manifest.write_text("\n".join(lines) + "\n")
    out = folder.parent / "model.int8.onnx"
    export_onnx(
        stem, out, int8=Int8Options(manifest, "val", folder, calibration, force=True, allow_outside_root=True)
    )
    return out


#: variant → (backend, exported graph or None for the checkpoint, precision)
VARIANTS = {
    "fp32": ("torch", None, "fp32"),
    "bf16": ("torch", None, "bf16"),
    "int8": ("onnxruntime", "int8", "fp32"),
    "ov-fp32": ("openvino", "fp32", "fp32"),
    "ov-int8": ("openvino", "int8", "fp32"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="items to score (real files repeated)")
    ap.add_argument("--naive-n", type=int, default=20, help="items for the naive loop (it is slow)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--precisions",
        default="fp32,bf16,int8,ov-fp32,ov-int8",
        help="comma-separated variants (fp32, bf16: torch; int8: onnxruntime running an export --quantize "
        "int8 calibrated on the inputs; ov-fp32, ov-int8: OpenVINO running the fp32 or int8 export), "
        "measured in turn in the same run",
    )
    ap.add_argument("--inputs", choices=("mixed", "jpeg", "dicom"), default="mixed", help="which real files")
    ap.add_argument(
        "--fast-decode",
        action="store_true",
        help="the pipeline decodes JPEGs at reduced scale (score --fast-decode)",
    )
    ap.add_argument("--workers", type=int, default=None, help="decode processes (default: medclass's)")
    ap.add_argument("--threads", type=int, default=None, help="model threads (default: medclass's)")
    ap.add_argument("--size", type=int, default=299)
    args = ap.parse_args()
    precisions = [p for p in args.precisions.split(",") if p]
    assert set(precisions) <= set(VARIANTS), precisions

    import numpy as np
    import torch

    from medclass import checkpoint
    from medclass.score import (
        DecisionRule,
        ScoreConfig,
        ScoreOutput,
        expand_inputs,
        make_backend,
        run_scoring,
        score_columns,
        score_items,
    )
    from medclass.score.pipeline import default_workers
    from medclass.score.runner import _threads, decode_min_size, make_preprocessor

    tmp = Path(tempfile.mkdtemp(prefix="bench_score."))
    folder = tmp / "in"
    folder.mkdir()
    files = build_inputs(folder, args.n, args.inputs)
    stem = make_checkpoint(tmp / "ck", args.size)
    ck = checkpoint.load(stem)
    pre = make_preprocessor(ck.meta)
    workers = default_workers() if args.workers is None else args.workers
    cfg = ScoreConfig(
        paths=[folder], out=tmp / "x.csv", workers=workers, threads=args.threads, fast_decode=args.fast_decode
    )
    min_size = decode_min_size(args.fast_decode, pre.spec.size)
    threads = _threads(cfg, workers)
    torch.set_num_threads(threads)
    rule = DecisionRule.from_meta(ck.meta)
    items = expand_inputs([folder])
    wanted = {VARIANTS[p][1] for p in precisions}
    graphs: dict[str | None, Path | None] = {None: None}
    if "int8" in wanted:
        graphs["int8"] = int8_export(stem, folder, files, args.batch_size)
    if "fp32" in wanted:
        from medclass.export import export_onnx

        graphs["fp32"] = export_onnx(stem, tmp / "model.onnx").path

    from medclass import ingest

    x = np.stack([pre(ingest.read_frame(f, 0)).array for f in files[: args.batch_size]])  # B×3×S×S
    reps = max(1, args.n // args.batch_size)

    def backend_of(variant: str):
        name, graph, precision = VARIANTS[variant]
        return make_backend(name, task="multiclass", model=ck.model, onnx_path=graphs[graph],
                            precision=precision, threads=threads)  # fmt: skip

    def forward_only(backend) -> float:  # same backend, batch, precision, layout on preloaded tensors
        backend(x)  # warm-up
        start = time.perf_counter()
        for _ in range(reps):
            backend(x)
        return reps * len(x) / (time.perf_counter() - start)

    def pipeline(backend, precision: str) -> float:
        out = ScoreOutput(tmp / f"scores-{precision}.csv", "csv", score_columns(rule.classes))
        out.open()
        start = time.perf_counter()
        counts = score_items(items, backend=backend, preprocessor=pre, append=out.append, rule=rule,
                             model_sha256=ck.meta["sha256"], batch_size=args.batch_size, workers=workers,
                             min_size=min_size)  # fmt: skip
        rate = len(items) / (time.perf_counter() - start)
        out.close()
        assert counts.failed == 0, counts.errors
        return rate

    def whole(variant: str) -> float:  # the whole command: checkpoint load, expansion, summary included
        name, graph, precision = VARIANTS[variant]
        extra = (
            {"backend": name, "onnx": graphs[graph], "checkpoint": None}
            if graph
            else {"precision": precision, "checkpoint": stem}
        )
        start = time.perf_counter()
        run_scoring(dataclasses.replace(cfg, out=tmp / f"run-{variant}.csv", batch_size=args.batch_size,
                                        device="cpu", **extra))  # fmt: skip
        return len(items) / (time.perf_counter() - start)

    def naive_rate() -> float:
        torch.set_num_threads(threads)
        return naive(files[: args.naive_n], ck.model, args.size, pre.spec.mean, pre.spec.std)

    # decode-only: the workers alone (what the pipeline can at most consume)
    from medclass.score import decode_stream

    naive_runs = [naive_rate()]
    start = time.perf_counter()
    prefetch = max(2 * args.batch_size, 4 * workers)
    n_dec = sum(1 for _ in decode_stream(items, pre, workers=workers, prefetch=prefetch, min_size=min_size))
    decode = n_dec / (time.perf_counter() - start)
    rates: dict[str, dict[str, float]] = {}
    for precision in precisions:  # interleaved: one precision's three measurements, then the next
        backend = backend_of(precision)
        rates[precision] = {
            "forward": forward_only(backend),
            "pipeline": pipeline(backend, precision),
            "run_scoring": whole(precision),
        }
    naive_runs.append(naive_rate())
    base = float(np.mean(naive_runs))

    info = environment()
    print(environment_line(info))
    print(f"{len(items)} items ({sum(f.suffix == '.jpeg' for f in files)} JPEG, "
          f"{sum(f.suffix != '.jpeg' for f in files)} DICOM) at {args.size} px, batch {args.batch_size}, "
          f"{workers} workers, {threads} model threads, "
          f"{'fast' if args.fast_decode else 'exact'} JPEG decode")  # fmt: skip
    rows = [["naive loop (batch 1 fp32)", f"{base:.1f}", "1.00", "—"]]
    for precision, r in rates.items():
        for name in ("pipeline", "run_scoring", "forward"):
            rows.append([f"{precision} {name}", f"{r[name]:.1f}", f"{r[name] / base:.2f}",
                         f"{r[name] / r['forward']:.2f}"])  # fmt: skip
    rows.append(["decode-only (workers)", f"{decode:.1f}", f"{decode / base:.2f}", "—"])
    print(table(rows, ["variant", "img/s", "× naive", "× its forward"]))
    print("naive runs (before, after): " + ", ".join(f"{v:.1f}" for v in naive_runs))
    path = write_results(
        "score",
        {
            "environment": info,
            "settings": vars(args) | {"workers": workers, "threads": threads, "items": len(items)},
            "images_per_s": {"naive": base, "naive_runs": naive_runs, "decode": decode, **rates},
            "ratios": {
                p: {
                    "pipeline_vs_naive": r["pipeline"] / base,
                    "pipeline_vs_forward": r["pipeline"] / r["forward"],
                }
                for p, r in rates.items()
            },
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
