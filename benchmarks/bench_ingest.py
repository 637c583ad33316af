"""DICOM files → normalised 3×299×299 tensors: medclass (ingest.read + Preprocessor) against MONAI.

MONAI baseline: ``LoadImage(image_only=True, ensure_channel_first=True)`` → ``ScaleIntensity()`` →
``Resize((299, 299))`` → ``RepeatChannel(3)`` (it does no VOI windowing, no MONOCHROME1 inversion and
no aspect-preserving fit: medclass does more work per image). ``monai`` runs with torch's default
threads, ``monai-1thread`` with one (medclass resizes each image single-threaded, see
``medclass.preprocess.geometry.resize``), so the ratio is shown both ways.

Each variant runs in its own worker process (clean peak RSS, imports paid once); the parent sends
"run one pass over all files" to the workers in alternating order (A B B A ...), so both see the same
machine state. A file is benchmarked only if both variants turn it into a 3×299×299 tensor; the others
are listed with the reason. Prints a table and writes ``benchmarks/results/bench_ingest-<time>.json``.

Usage::

    .venv/bin/python benchmarks/bench_ingest.py [--repeat N] [--data DIR] [--no-pydicom-testdata]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    environment,
    environment_line,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
    table,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dicom_samples"
VARIANTS = ("medclass", "monai", "monai-1thread")
SIZE = 299


# --- choosing the files ------------------------------------------------------------------------------
def candidates(data: Path | None, pydicom_testdata: bool) -> dict[str, bool]:
    """2D single-frame greyscale DICOM files with pixel data (by header), sorted → compressed or not.

    Decoding is probed later, by the workers."""
    import pydicom

    roots: list[Path] = []
    if data is not None:
        roots.append(data)
    if pydicom_testdata:
        roots.append(Path(pydicom.data.__file__).parent / "test_files")
    found: dict[str, bool] = {}
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's test files are malformed on purpose
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
                    compressed = bool(ds.file_meta.TransferSyntaxUID.is_compressed)
                    ok = (
                        ds.get("SamplesPerPixel", 1) == 1
                        and int(ds.get("NumberOfFrames", 1) or 1) == 1
                        and str(ds.get("PhotometricInterpretation", "")) in ("MONOCHROME1", "MONOCHROME2")
                        and bool(ds.get("Rows"))
                        and bool(ds.get("Columns"))
                        and str(ds.get("Modality", "")) not in ("SEG", "RTSTRUCT", "SR", "PR")
                    )
                except Exception:
                    continue
            if ok:
                found[str(path)] = compressed
    return found


# --- worker side ---------------------------------------------------------------------------------------
def _pipeline(variant: str):
    if variant == "medclass":
        import torch

        from medclass.ingest import read
        from medclass.preprocess import Preprocessor, input_spec

        prep = Preprocessor(input_spec(), window="auto", fit="letterbox")

        def medclass_pipeline(path: str):
            return torch.from_numpy(prep(read(path)[0]).array)  # 3×299×299

        return medclass_pipeline
    if variant.startswith("monai"):
        import torch
        from monai.transforms import Compose, LoadImage, RepeatChannel, Resize, ScaleIntensity

        if variant == "monai-1thread":  # MONAI with the same one-thread setting medclass uses per image
            torch.set_num_threads(1)
        return Compose(
            [
                LoadImage(image_only=True, ensure_channel_first=True),
                ScaleIntensity(),
                Resize((SIZE, SIZE)),
                RepeatChannel(3),
            ]
        )
    raise SystemExit(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")


def worker(variant: str, files: list[str]) -> None:
    """Serve commands from stdin (probe / run / quit); answers are JSON lines on the real stdout."""
    warnings.simplefilter("ignore")  # library chatter would only slow the loop down; this is a benchmark
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr  # anything a library prints goes to stderr, not into the protocol
    rss_start = rss_mib()
    pipeline = _pipeline(variant)
    rss_imported = rss_mib()
    active = list(files)
    for line in sys.stdin:
        command = line.strip()
        if command == "probe":
            failures: dict[str, str] = {}
            for path in files:
                try:
                    out = pipeline(path)
                    if tuple(out.shape) != (3, SIZE, SIZE):
                        failures[path] = f"output shape {tuple(out.shape)}"
                except Exception as exc:
                    failures[path] = (
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                    )
            reply.write(json.dumps({"failures": failures}) + "\n")
        elif command.startswith("use "):
            active = json.loads(command[4:])
            reply.write(json.dumps({"n": len(active)}) + "\n")
        elif command == "run":
            reset_ok = reset_peak_rss()
            before = rss_mib()
            per_file = []
            start = time.perf_counter()
            for path in active:
                t0 = time.perf_counter()
                pipeline(path)
                per_file.append(time.perf_counter() - t0)
            seconds = time.perf_counter() - start
            reply.write(
                json.dumps(
                    {
                        "seconds": seconds,
                        "per_file": per_file,
                        "rss_before_mib": before,
                        "peak_rss_mib": peak_rss_mib() if reset_ok else None,
                        "rss_start_mib": rss_start,
                        "rss_imported_mib": rss_imported,
                    }
                )
                + "\n"
            )
        elif command == "quit":
            break


# --- parent side -----------------------------------------------------------------------------------------
class Worker:
    def __init__(self, variant: str, files: list[str]) -> None:
        self.variant = variant
        listing = REPO / "benchmarks" / "results" / f".files-{os.getpid()}.json"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text(json.dumps(files))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", variant, "--files", str(listing)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.variant} worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def _subset_rate(used: list[str], per_file: list[float], compressed: dict[str, bool], want: bool) -> float:
    """Files/s over the files whose transfer syntax is (not) compressed, from per-file medians."""
    times = [t for f, t in zip(used, per_file, strict=True) if compressed[f] is want]
    return len(times) / sum(times) if times else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed passes per variant (after one probe pass)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of DICOM files to include")
    parser.add_argument("--no-pydicom-testdata", action="store_true", help="skip pydicom's own test files")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--files", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, json.loads(args.files.read_text()))
        return 0

    data = args.data if args.data and args.data.exists() else None
    if data is None:
        print(f"note: {args.data} not found; using pydicom's test files only", file=sys.stderr)
    compressed = candidates(data, not args.no_pydicom_testdata)
    files = list(compressed)
    if not files:
        print("no candidate DICOM files found", file=sys.stderr)
        return 1
    workers = {v: Worker(v, files) for v in VARIANTS}
    listing = REPO / "benchmarks" / "results" / f".files-{os.getpid()}.json"
    try:
        probes = {v: w.ask("probe")["failures"] for v, w in workers.items()}  # also the warm-up pass
        excluded = {f: {v: probes[v][f] for v in VARIANTS if f in probes[v]} for f in files}
        excluded = {f: why for f, why in excluded.items() if why}
        used = [f for f in files if f not in excluded]
        for w in workers.values():
            w.ask("use " + json.dumps(used))
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for r in range(args.repeat):
            for v in VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS)):
                runs[v].append(workers[v].ask("run"))
    finally:
        for w in workers.values():
            w.close()
        listing.unlink(missing_ok=True)

    summary: dict[str, dict[str, Any]] = {}
    for v in VARIANTS:
        secs = [run["seconds"] for run in runs[v]]
        per_file = [statistics.median(x) for x in zip(*(run["per_file"] for run in runs[v]), strict=True)]
        peaks = [run["peak_rss_mib"] for run in runs[v] if run["peak_rss_mib"] is not None]
        summary[v] = {
            "pass_seconds": secs,
            "median_pass_s": statistics.median(secs),
            "files_per_s": len(used) / statistics.median(secs),
            "median_file_ms": 1e3 * statistics.median(per_file),
            "per_file_median_ms": dict(zip(used, (1e3 * x for x in per_file), strict=True)),
            "uncompressed_files_per_s": _subset_rate(used, per_file, compressed, False),
            "compressed_files_per_s": _subset_rate(used, per_file, compressed, True),
            "rss_after_imports_mib": runs[v][0]["rss_imported_mib"],
            "peak_rss_mib": max(peaks) if peaks else None,
            "peak_rss_over_imports_mib": (max(peaks) - runs[v][0]["rss_before_mib"]) if peaks else None,
        }
    ratio = summary["medclass"]["files_per_s"] / summary["monai"]["files_per_s"]
    ratio_1t = summary["medclass"]["files_per_s"] / summary["monai-1thread"]["files_per_s"]
    n_compressed = sum(compressed[f] for f in used)
    rows = [
        [
            v,
            f"{summary[v]['files_per_s']:.1f}",
            f"{summary[v]['median_pass_s']:.2f} ({min(summary[v]['pass_seconds']):.2f}–{max(summary[v]['pass_seconds']):.2f})",
            f"{summary[v]['median_file_ms']:.1f}",
            f"{summary[v]['uncompressed_files_per_s']:.1f}",
            f"{summary[v]['compressed_files_per_s']:.1f}",
            f"{summary[v]['rss_after_imports_mib']:.0f}",
            "-"
            if summary[v]["peak_rss_over_imports_mib"] is None
            else f"{summary[v]['peak_rss_over_imports_mib']:.0f}",
        ]
        for v in VARIANTS
    ]
    info = environment()
    print(environment_line(info))
    print(
        f"{len(used)} DICOM files ({n_compressed} compressed: JPEG 2000/JPEG/RLE...), 2D greyscale that all "
        f"variants load; {args.repeat} interleaved passes, medians"
    )
    print(
        table(
            rows,
            [
                "variant",
                "files/s",
                "pass s (min–max)",
                "file ms (median)",
                "uncompr. f/s",
                "compr. f/s",
                "RSS MiB",
                "peak +MiB",
            ],
        )
    )
    print(
        f"medclass / MONAI throughput: {ratio:.2f}× (MONAI default threads), {ratio_1t:.2f}× (MONAI 1 thread)"
    )
    for kind in ("uncompressed", "compressed"):
        rates = {v: summary[v][f"{kind}_files_per_s"] for v in VARIANTS}
        print(
            f"  {kind} files: {rates['medclass'] / rates['monai']:.2f}× / "
            f"{rates['medclass'] / rates['monai-1thread']:.2f}× (from per-file medians)"
        )
    if excluded:
        print(f"{len(excluded)} candidate file(s) excluded:")
        for f, why in excluded.items():
            print(f"  {Path(f).name}: " + "; ".join(f"{v}: {msg[-120:]}" for v, msg in why.items()))
    path = write_results(
        "bench_ingest",
        {
            "files": used,
            "excluded": excluded,
            "repeat": args.repeat,
            "ratio_medclass_over_monai": ratio,
            "ratio_medclass_over_monai_1thread": ratio_1t,
            "variants": summary,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
