"""``medclass score``: batch-score folders, manifests or files with a checkpoint, resumable, exactly once."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from medclass.cli import ExitCode, pacs_args
from medclass.cli.calibrate import add_no_calibration
from medclass.cli.gate_args import add_gate_argument, gate_line
from medclass.names import (
    AGGREGATIONS,
    BACKEND_NAMES,
    DEVICE_NAMES,
    ENGINE_NAMES,
    PRECISION_NAMES,
    SCORE_FORMATS,
)

HELP = "score many images with a checkpoint (one row per slice/frame; resumable)"
DESCRIPTION = """\
Score every 2D image under PATH... with a checkpoint and write one row per slice/frame: source path,
frame, hashed patient id, study/series UIDs, prob:<class> per class, the predicted label(s) at the
checkpoint's operating point (else argmax / 0.5; the 'decision' column says which), the weights' sha256
and the error text (empty when fine). A study summary goes to <out stem>.studies.csv.

The input gate (--gate, default flag) checks every image against the checkpoint's training-data profile
and fills in_scope, gate_reason (e.g. 'modality CT not in training data (CR, DX)', 'looks inverted',
'feature distance 3.1× the validation 99th percentile') and ood_score (the feature distance over its
threshold). --gate refuse leaves out-of-scope rows without probabilities (decision 'refused'; not a
failure, the exit code is unchanged). A checkpoint trained before the gate existed gets a one-line
notice and no gate (add a profile with medclass profile).

PATH is a folder (walked recursively; DICOM recognised by content, slices of a series grouped), a
manifest (.csv with a path column, resolved against --data-root), or a file. Bad files become rows with
their error; the exit code is 3 (partial) when any row failed.

Rows are committed in batches (append, flush, fsync). After a crash or kill, run the same command
with --resume: done rows are skipped, a torn last line is dropped, every input ends up exactly once.

--engine ray scales out on a Ray cluster (pip install 'medclass[ray]'): decoding runs as Ray tasks on
the cluster's CPUs, the model in --actors actors (one per GPU by default), each block of --batch-size
inputs committed as <out>.parts/part-<block>.jsonl and merged into --out at the end. Without
--ray-address a Ray instance is started on this machine for the run. Every node must see the inputs,
the checkpoint and the folder of --out under the same paths.

Speed on a CPU: decoding runs in --workers processes while the model runs here. The defaults reproduce
'evaluate' exactly (fp32, full decode). Two opt-in trades: --precision bf16 (about 2x the model's speed;
probabilities move by up to ~0.1 on some images) and --fast-decode (JPEGs decoded at 1/2-1/8 scale in
the DCT domain; about 2x less decode work on radiographs; probabilities move by up to ~0.02). An
exported model (medclass export, fp32 or --quantize int8) runs with --backend onnxruntime or --backend
openvino --onnx MODEL.onnx; OpenVINO was the faster of the two on the development CPU, for both graphs.

From a PACS: --dicomweb URL reads the studies named by --study UID or matched by --query KEY=VALUE over
DICOMweb (QIDO-RS, WADO-RS), study by study, into the same rows (path: the instance's WADO-RS URL);
--push (STOW-RS to that root), --push-to URL or --push-dimse AET@HOST:PORT send one Comprehensive SR per
study back into the source study (per-class probabilities, the decision at the operating point, the
model and its weights' sha256; not for diagnostic use). A study the server cannot serve now is left for
--resume (exit 3); re-pushing stores nothing twice (the SR's UID derives from the study and the weights).

Examples:
  medclass score --checkpoint runs/r1/best scans/ --out scores.csv
  medclass score --checkpoint runs/r1/best --dicomweb http://pacs:8042/dicom-web \\
      --query ModalitiesInStudy=CR --query StudyDate=20260101-20260131 --out scores.csv --push
  medclass score --checkpoint runs/r1/best scans/ --out scores.csv --resume
  medclass score --checkpoint runs/r1/best data_manifests/kermany_cxr.csv --data-root ../shared/data \\
      --out scores.jsonl --precision bf16 --fast-decode --workers 2
  medclass export --checkpoint runs/r1/best --format onnx --out model.onnx
  medclass score --backend onnxruntime --onnx model.onnx scans/ --out scores.csv
  medclass score --backend openvino --onnx model.int8.onnx scans/ --out scores.csv
  medclass score --checkpoint runs/r1/best /shared/scans/ --out /shared/scores.csv \
      --engine ray --ray-address head-node:6379 --actors 4
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="folders, manifests (.csv) or image files")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint stem (or its .json/.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="scores file (.csv, .jsonl or .parquet)")
    parser.add_argument(
        "--format", choices=SCORE_FORMATS, help="output format (default: from --out's suffix)"
    )
    parser.add_argument("--data-root", type=Path, help="root of the paths in manifests")
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="manifests: score paths that leave the data root (absolute, '..', symlinks out) instead of "
        "reporting them as failed rows",
    )
    parser.add_argument(
        "--slice-policy", default="all", help="which slices of volumes/multi-frame files: all, middle, "
        "index:N, max-foreground",
    )  # fmt: skip
    run = parser.add_argument_group("how")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument(
        "--workers",
        type=int,
        help="decode processes (0: decode in the main process; default: one per core, at most 8)",
    )
    run.add_argument("--threads", type=int, help="model threads (default: the cores)")
    run.add_argument("--backend", choices=BACKEND_NAMES, default="torch")
    run.add_argument(
        "--onnx", type=Path, help="ONNX model from 'medclass export' (--backend onnxruntime or openvino)"
    )
    run.add_argument("--precision", choices=PRECISION_NAMES, default="fp32", help="bf16: autocast")
    run.add_argument("--device", choices=DEVICE_NAMES, default="auto")
    add_no_calibration(run)
    add_gate_argument(run)
    run.add_argument(
        "--fast-decode",
        action="store_true",
        help="decode JPEGs at 1/2-1/8 scale in the DCT domain (sides kept ≥ 2× the model input): about 2× "
        "less decode work on radiographs, probabilities within ~0.02 of the exact path that 'evaluate' uses",
    )
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--engine", choices=ENGINE_NAMES, default="local",
        help="local: decode workers and the model in this process; ray: on a Ray cluster",
    )  # fmt: skip
    engine.add_argument(
        "--ray-address", metavar="ADDR", help="a running Ray cluster (HOST:PORT of its head; default: start "
        "one on this machine for the run)",
    )  # fmt: skip
    engine.add_argument(
        "--actors", type=int, metavar="N", help="model replicas on the Ray engine (default: one per GPU "
        "of the cluster, else one)",
    )  # fmt: skip
    out = parser.add_argument_group("output")
    out.add_argument("--resume", action="store_true", help="continue an interrupted run on the same --out")
    out.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    out.add_argument(
        "--aggregate", choices=AGGREGATIONS, default="mean", help="how a study's images are combined"
    )
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    pacs_args.add_source_arguments(parser)
    pacs_args.add_push_arguments(parser)


def _progress(enabled: bool | None) -> Callable[[int, int], Callable[[int], None]] | None:
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None

    def start(total: int, done: int) -> Callable[[int], None]:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=done, unit="img", desc="score", dynamic_ncols=True)
        return bar.update

    return start


def _per_node(counts: dict[str, int]) -> str:
    return " ".join(f"{node}:{n}" for node, n in sorted(counts.items()))


def run(args: argparse.Namespace) -> ExitCode:
    from medclass.runtime import tune_cpu_malloc
    from medclass.score import ScoreConfig, run_scoring

    pacs_args.check_paths(args, "score")
    tune_cpu_malloc()  # PERF-NOTES: large batches at 299 px page-fault fresh memory every step without it
    config = ScoreConfig(
        paths=[str(p) for p in args.paths],
        out=args.out,
        checkpoint=args.checkpoint,
        format=args.format,
        workers=args.workers,
        batch_size=args.batch_size,
        resume=args.resume,
        overwrite=args.overwrite,
        backend=args.backend,
        onnx=args.onnx,
        precision=args.precision,
        device=args.device,
        slice_policy=args.slice_policy,
        data_root=args.data_root,
        allow_outside_root=args.allow_outside_root,
        aggregate=args.aggregate,
        threads=args.threads,
        fast_decode=args.fast_decode,
        engine=args.engine,
        ray_address=args.ray_address,
        actors=args.actors,
        calibrated=not args.no_calibration,
        gate=args.gate,
    )
    if args.dicomweb:
        return _run_pacs(args, config)
    report = run_scoring(config, progress=_progress(args.progress))
    c = report.counts
    where = f"{report.out}" + (
        f" (+ {report.summary.name}: {report.n_studies} studies)" if report.summary else ""
    )
    earlier = report.failed_in_output - c.failed
    more = f" ({earlier} more failed in earlier runs)" if earlier > 0 else ""
    print(f"scored {c.scored}, skipped {c.skipped} (already done), failed {c.failed}{more} → {where}")
    if "scored_by_node" in report.settings:
        s = report.settings
        print(
            f"ray: {len(s['decoded_by_node'])} node(s) decoded, {len(s['scored_by_node'])} scored; blocks "
            f"decoded per node {_per_node(s['decoded_by_node'])}, scored per node {_per_node(s['scored_by_node'])}"
        )
    print(report.decision)
    if args.gate != "off":
        print(gate_line(report.flagged_in_output, report.n_items, report.refused_in_output))
    for err in c.errors[:3]:
        print(f"  failed: {err}", file=sys.stderr)
    return ExitCode.PARTIAL if report.failed_in_output else ExitCode.OK


def _run_pacs(args: argparse.Namespace, config: object) -> ExitCode:
    from medclass.pacs import score_from_pacs

    pacs = score_from_pacs(
        config,  # type: ignore[arg-type]
        pacs_args.source(args),
        pacs_args.pushers(args),
        on_study=lambda r: print(r.line(), file=sys.stderr, flush=True),
    )
    c, report = pacs.score.counts, pacs.score
    print(
        f"scored {c.scored}, skipped {c.skipped} instance(s) already done, failed {c.failed}, "
        f"{len(pacs.studies)} studies ({pacs.incomplete} left to do) → {report.out}"
    )
    for err in c.errors[:3]:
        print(f"  failed: {err}", file=sys.stderr)
    return ExitCode.PARTIAL if report.failed_in_output or pacs.incomplete else ExitCode.OK
