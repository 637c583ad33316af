"""``medclass explain``: saliency overlays, clinician reports (HTML + PDF) and optional DICOM outputs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from medclass.cli import pacs_args
from medclass.cli.calibrate import add_no_calibration
from medclass.cli.gate_args import add_gate_argument, gate_line

HELP = "saliency maps and clinician reports (HTML, PDF, DICOM Secondary Capture) for images"
DESCRIPTION = """\
Explain a checkpoint's predictions on images with a Grad-CAM-family method (pytorch-grad-cam). PATHs are
files or folders (walked recursively; DICOM, NIfTI, PNG/JPEG). For each image OUT gets an overlay PNG
(with colour bar and the top-k% region outlined) and, with --dicom and a DICOM source, a Secondary
Capture in a new series of the source study; for each study a self-contained HTML report and a PDF;
plus OUT/explanations.json, OUT/explanations.csv and OUT/index.html. Each row names its source (the
path relative to the PATH it was found under) and frame; output names are unique per input image, also
when files share a SOPInstanceUID.

The default --layer is the deepest Inception block whose map is at least 7×7 at the checkpoint's input
size (Mixed_7c at 299 px, Mixed_6e at 224, Mixed_5d at 128); a coarser layer given by hand is warned
about, naming the one to use. The two-class positive class and the operating point that `evaluate`
stored in the checkpoint are shown in every report.

De-identified by default: reports, file names, tables and logs carry a pseudonym of the patient ID, never
the name, ID, birth date or accession number; --include-phi opts in. DICOM outputs keep the study's
StudyInstanceUID (so a PACS files them beside the original) and reference the source image's UIDs.

Not for diagnostic use: saliency shows what changed the model's output, not where disease is.

One image's failure (decode, preprocess, saliency, overlay, DICOM write, its study's report) is listed
with its kind and stage (explanations.json "errors") and the run goes on. Exit status: 0 all explained,
3 some failed, 1 none explained. Images from NIfTI/PNG/JPEG sources get no DICOM output (their row says so).

The input gate (--gate, default flag) checks every image against the checkpoint's training-data profile:
an out-of-scope image gets a prominent banner in its clinician report (HTML and PDF) and in_scope,
gate_reason, ood_score in explanations.json/csv; --gate refuse explains it not at all (listed under
"refused" in explanations.json and index.html; not a failure, the exit status is unchanged).

examples:
  medclass explain --checkpoint runs/r1/best scans/case1.dcm --out reports/r1/saliency
  medclass explain --checkpoint runs/r1/best scans/ --out sal --method gradcam++ --layer Mixed_6e --dicom
  medclass explain --checkpoint runs/r1/best scans/ --out sal --metrics reports/r1/metrics.json
  medclass explain --checkpoint runs/r1/best scans/ --out sal --regions --dicom --seg
  medclass explain --checkpoint runs/r1/best --dicomweb http://pacs:8042/dicom-web --study 1.2.3.4 \\
      --out sal --push --sr --pdf       # overlays (+ SR, + PDF) back into the source study

From a PACS (--dicomweb URL with --study/--query), studies are pulled over WADO-RS into OUT/.pull (removed
at the end) and explained like files; --push/--push-to/--push-dimse send the Secondary Captures (+ the SR
with --sr, + the PDF report as Encapsulated PDF with --pdf) into the source study.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint stem (or .json/.safetensors)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--method", default="gradcam", help="saliency method (gradcam, gradcam++, hirescam, ...)"
    )
    parser.add_argument(
        "--layer",
        default=None,
        help="target layer (Mixed_7c, Mixed_6e, Mixed_5d, ...; default: the deepest with a map ≥ 7×7)",
    )
    parser.add_argument("--target", help="class to explain, by name or index (default: the predicted class)")
    parser.add_argument("--dicom", action="store_true", help="also write DICOM Secondary Capture overlays")
    parser.add_argument(
        "--sr", action="store_true", help="with --dicom: also a Comprehensive SR of the scores"
    )
    parser.add_argument(
        "--include-phi", action="store_true", help="put patient name/ID/birth date/accession in outputs"
    )
    parser.add_argument("--opacity", type=float, default=0.4, help="weight of the colour layer (0..1)")
    parser.add_argument(
        "--top-percent", type=float, default=10.0, help="outline the top N%% of the map (0: none)"
    )
    parser.add_argument("--colormap", default="jet", help="jet, turbo, viridis, inferno, magma, plasma")
    parser.add_argument("--no-pdf", action="store_true", help="skip the PDF reports")
    parser.add_argument(
        "--faithfulness",
        default="road-morf",
        help="per-image faithfulness metric (road-morf, cam-mult, ...; none)",
    )
    parser.add_argument(
        "--sanity-check",
        action="store_true",
        help="model-randomisation check (Adebayo 2018) on the first batch",
    )
    parser.add_argument("--metrics", type=Path, help="metrics.json of `medclass evaluate` (operating points)")
    parser.add_argument("--slice-policy", default="middle", help="which slices of a volume to explain")
    parser.add_argument("--batch-size", type=int, default=8, help="images per saliency batch")
    add_no_calibration(parser)
    add_gate_argument(parser)
    regions = parser.add_argument_group(
        "regions (boxes and outlines of the map; not a segmentation of disease)"
    )
    regions.add_argument("--regions", action="store_true", help="ranked regions of each map into the outputs")
    regions.add_argument(
        "--region-threshold",
        type=float,
        default=None,
        metavar="T",
        help="keep the map ≥ T × its peak (0..1; default 0.5; the demo chooses it on lesions)",
    )
    regions.add_argument(
        "--max-regions", type=int, default=None, metavar="K", help="keep the K best (default 3)"
    )
    regions.add_argument(
        "--seg", action="store_true", help="with --regions --dicom: also a DICOM Segmentation"
    )
    pacs_args.add_source_arguments(parser)
    pacs_args.add_push_arguments(parser, explain=True)


def run(args: argparse.Namespace) -> int:
    import json

    from medclass import checkpoint, ingest
    from medclass.calibrate import from_meta
    from medclass.cli import ExitCode
    from medclass.errors import ConfigError, look_up
    from medclass.explain import CAM_METHODS, FAITHFULNESS_METRICS, TARGET_LAYERS, Explainer
    from medclass.explain.cam import choose_layer
    from medclass.explain.regions import DEFAULT_MAX_REGIONS, DEFAULT_THRESHOLD
    from medclass.explain.runner import ExplainRun, Settings

    if not args.regions and (args.region_threshold is not None or args.max_regions is not None or args.seg):
        raise ConfigError("--region-threshold, --max-regions and --seg need --regions")
    if args.seg and not args.dicom:
        raise ConfigError("--seg writes DICOM: add --dicom")
    pacs_args.check_paths(args, "explain")
    pushers = pacs_args.pushers(args)
    look_up(CAM_METHODS, args.method, "saliency method")
    if args.layer is not None:
        look_up(TARGET_LAYERS, args.layer, "target layer")
    if args.faithfulness != "none":
        look_up(FAITHFULNESS_METRICS, args.faithfulness, "faithfulness metric")
    ingest.get_slice_policy(args.slice_policy)  # an unknown name is a bad command line, before any work
    sources = None if args.dicomweb else ingest.discover(args.paths)
    if sources is not None and not sources:  # like score and inspect: nothing to do is an error, early
        raise ConfigError(f"no images found in {', '.join(map(str, args.paths))}")
    ckpt = checkpoint.load(args.checkpoint)
    args.layer = choose_layer(ckpt, args.layer)
    classes = ckpt.classes or [str(i) for i in range(int(ckpt.meta.get("num_classes", 0)))]
    target = None
    if args.target is not None:
        if args.target in classes:
            target = classes.index(args.target)
        elif args.target.isdigit() and int(args.target) < len(classes):
            target = int(args.target)
        else:
            raise ConfigError(f"unknown --target {args.target!r}; classes: {', '.join(classes)}")
    metrics_doc = None
    if args.metrics is not None:
        try:
            metrics_doc = json.loads(args.metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read metrics ({exc})", args.metrics) from exc
    settings = Settings(
        method=args.method,
        layer=args.layer,
        target=target,
        dicom=args.dicom or bool(pushers),  # pushed overlays are written to OUT first (de-identified)
        sr=args.sr and (args.dicom or bool(pushers)),
        include_phi=args.include_phi,
        opacity=args.opacity,
        top_percent=args.top_percent or None,
        colormap=args.colormap,
        pdf=not args.no_pdf,
        faithfulness=None if args.faithfulness == "none" else args.faithfulness,
        sanity_check=args.sanity_check,
        slice_policy=args.slice_policy,
        batch_size=args.batch_size,
        regions=args.regions,
        region_threshold=DEFAULT_THRESHOLD if args.region_threshold is None else args.region_threshold,
        max_regions=DEFAULT_MAX_REGIONS if args.max_regions is None else args.max_regions,
        seg=args.seg,
        raise_internal=args.traceback,
        gate=args.gate,
    )
    explainer = Explainer(
        ckpt.model, method=args.method, layer=args.layer, batch_size=args.batch_size, task=ckpt.task,
        calibration=from_meta(ckpt.meta, enabled=not args.no_calibration),
    )  # fmt: skip
    job = ExplainRun(ckpt, explainer, settings, args.out, metrics_doc, inputs=[Path(p) for p in args.paths])
    pacs = _pull_from_pacs(args, job, pushers) if args.dicomweb else None
    if sources is None:  # pulled from a PACS into OUT/.pull
        sources = ingest.discover(args.paths)
    for source in sources:  # decode failures are per image: a corrupt slice fails alone
        for item in ingest.load_each(source, slice_policy=args.slice_policy):
            if isinstance(item, ingest.Failed):
                where = item.path if item.index is None or source.format == "dicom-series" else (
                    f"{item.path} (frame {item.index})")  # fmt: skip
                job.fail(where, item.error, "decode")
            else:
                job.add(item)
    job.finish()
    if pacs is not None:
        pacs.push(job, on_study=lambda r: print(r.line(), file=sys.stderr, flush=True))
    n_ok, n_err = len(job.rows), len(job.errors)
    shown = 5  # the first few failures, then a count (a wrong folder can fail hundreds)
    for err in job.errors[:shown]:
        print(f"failed: {err['where']}: {err['kind']}: {err['message']}")
    if n_err > shown:
        print(f"... and {n_err - shown} more failed (listed in {args.out / 'explanations.json'})")
    no_dicom = sum(1 for r in job.rows if r.get("dicom_note"))
    if job.gate.active:
        flagged = sum(1 for r in job.rows if r.get("in_scope") is False) + len(job.refused)
        print(gate_line(flagged, n_ok + len(job.refused), len(job.refused)))
    print(
        f"explained {n_ok} image(s) in {len(job.studies)} report(s), {n_err} failed "
        f"({args.method} at {args.layer}) → {args.out}"
        + (f"; {no_dicom} image(s) from non-DICOM sources have no DICOM output" if no_dicom else "")
    )
    if n_err and not n_ok:
        return ExitCode.ERROR
    return ExitCode.PARTIAL if n_err or (pacs is not None and pacs.incomplete) else ExitCode.OK


def _pull_from_pacs(args: argparse.Namespace, job: Any, pushers: list[Any]) -> Any:
    from medclass.pacs.explain import PacsExplain

    pacs = PacsExplain(
        pacs_args.source(args), pushers, weights_sha256=str(job.ckpt.meta.get("sha256", "")),
        slice_policy=args.slice_policy, push_sr=args.sr, push_pdf=args.pdf,
    )  # fmt: skip
    pacs.pull(job)
    return pacs
