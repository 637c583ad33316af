"""``medclass evaluate``: metrics with confidence intervals, figures and an HTML report for a test split."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from medclass.cli.calibrate import add_no_calibration
from medclass.cli.gate_args import add_gate_argument, gate_line
from medclass.names import AGGREGATIONS

HELP = "measure a model on the test split: AUC with CIs, operating point from validation, report"
DESCRIPTION = """\
Evaluate a checkpoint on a manifest's test split (or an earlier run's predictions.csv) and write
OUT/metrics.json, OUT/predictions.csv, one PNG per figure, a self-contained OUT/report.html and the
operating point as OUT/operating_point.json and OUT/operating_point.md (a markdown table); with a
calibrated checkpoint, OUT/calibration.md (raw vs calibrated NLL, ECE, Brier).

Probabilities are the checkpoint's calibrated ones (fitted on validation by train or `medclass
calibrate`; --no-calibration: raw); metrics.json also reports NLL, ECE and Brier of the raw and the
calibrated probabilities on both splits (checkpoint_calibration). The decision threshold (and, with
--temperature-scaling, the temperature) is chosen on the validation split only, on the same probabilities,
and applied unchanged to the test split. AUCs get a stratified-bootstrap and a DeLong 95% CI.
Whether the threshold transfers: a bootstrap re-chooses it on resampled validation sets, giving a 95% CI
for the threshold and for the test sensitivity/specificity at it; a validation set with fewer than 20
cases of a class is warned about (its threshold rarely holds on new patients).
The image-level operating point is then stored in the checkpoint's sidecar (re-sealed; --no-attach to
skip), so `score`'s decision column and `explain` use it. A two-class task reports its positive class:
--positive-class, else the checkpoint's, else the class not named like a negative (normal, negative...).

The input gate (--gate, default flag; see medclass score --help) judges every val and test image against
the checkpoint's training-data profile: predictions.csv gains in_scope, gate_reason and ood_score, the
report says how many were out of scope, and when some test images were, the metrics are also given on
the in-scope images alone (metrics.json: "in_scope"). --gate refuse measures the in-scope images only.

examples:
  medclass evaluate --checkpoint runs/r1/best --manifest data_manifests/mine.csv --out reports/r1
  medclass evaluate --checkpoint runs/r1/best --manifest m.csv --by sex --threshold sens:0.9 --out reports/r1
  medclass evaluate --predictions reports/r1/predictions.csv --level patient --aggregate max --out reports/r1b
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("what to evaluate (a checkpoint and a manifest, or predictions)")
    src.add_argument("--checkpoint", type=Path, help="checkpoint stem (or its .json/.safetensors)")
    src.add_argument("--manifest", type=Path, help="manifest CSV with val and test rows")
    src.add_argument("--data-root", type=Path, help="folder the manifest's paths are relative to")
    src.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept manifest paths that leave the data root (absolute, '..', symlinks out); "
        "refused by default",
    )
    src.add_argument("--predictions", type=Path, help="predictions.csv of an earlier run (no model needed)")
    src.add_argument("--split", default="test", help="split to measure")
    src.add_argument("--val-split", default="val", help="split the threshold/temperature are chosen on")
    src.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    src.add_argument(
        "--run-dir", type=Path, help="training run folder with metrics.csv (default: the checkpoint's)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--by", action="append", default=[], metavar="COLUMN", help="subgroup column (repeatable)"
    )
    parser.add_argument(
        "--level", choices=("image", "patient", "both"), default="both", help="image and/or patient level"
    )
    parser.add_argument(
        "--aggregate", choices=AGGREGATIONS, default="mean", help="patient score from its images"
    )
    parser.add_argument(
        "--group-column", default="patient_id", help="column that groups images (patient_id or study_id)"
    )
    parser.add_argument(
        "--threshold", default="youden", help="youden, sens:T or spec:T (chosen on validation)"
    )
    parser.add_argument(
        "--positive-class",
        help="class scored as positive in a two-class task (default: the checkpoint's, else the class not "
        "named normal/negative/healthy/benign/control/no finding/0)",
    )
    parser.add_argument(
        "--no-attach",
        action="store_true",
        help="do not store the validation-chosen operating point in the checkpoint's sidecar",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the CIs")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--bins", type=int, default=10, help="calibration bins")
    parser.add_argument("--temperature-scaling", action="store_true", help="fit a temperature on validation")
    add_no_calibration(parser)
    add_gate_argument(parser)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _training_rows(path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _splits(rows: list[Any]) -> str:
    return ", ".join(sorted({str(r.get("split", "")) for r in rows})) or "none"


def _get_rows(args: argparse.Namespace, facts: dict[str, Any]) -> list[Any]:
    from medclass.errors import ConfigError
    from medclass.evaluate import predict_manifest, read_predictions, write_predictions

    if args.predictions is not None:
        if args.checkpoint is not None:
            raise ConfigError("give either --predictions or --checkpoint/--manifest, not both")
        rows = read_predictions(args.predictions)
        facts |= {"predictions file": str(args.predictions), "predictions sha256": _sha256(args.predictions)}
        return rows
    if args.checkpoint is None or args.manifest is None:
        raise ConfigError("give --checkpoint and --manifest (or --predictions FILE from an earlier run)")
    from medclass.manifest import load_manifest

    manifest = load_manifest(args.manifest, args.data_root, allow_outside_root=args.allow_outside_root)
    missing = [c for c in args.by if c not in manifest.columns]
    if missing:  # before any prediction
        raise ConfigError(
            f"--by {', '.join(missing)}: no such column in the manifest; columns: {', '.join(manifest.columns)}",
            args.manifest,
        )
    rows = predict_manifest(
        args.checkpoint,
        args.manifest,
        (args.val_split, args.split),
        args.data_root,
        args.batch_size,
        allow_outside_root=args.allow_outside_root,
        calibrated=not args.no_calibration,
        gate=args.gate,
    )
    write_predictions(args.out / "predictions.csv", rows)
    from medclass.weights import read_meta

    meta = read_meta(args.checkpoint)
    facts |= {
        "checkpoint": str(args.checkpoint),
        "architecture": meta["architecture"],  # read_meta refuses any other
        "input": meta.get("input", ""),
        "window / fit": f"{meta.get('window', '')} / {meta.get('fit', '')}",
        "training seed": meta.get("seed", ""),
        "manifest": str(args.manifest),
        "manifest sha256": _sha256(args.manifest),
        "manifest sha256 at training": meta.get("manifest_sha256", ""),
        "probabilities": _calibration_fact(meta, not args.no_calibration),
    }
    return rows


def _calibration_fact(meta: dict[str, Any], enabled: bool) -> str:
    from medclass.calibrate import Calibration

    doc = meta.get("calibration")
    if doc is None:
        return "raw (the checkpoint holds no calibration; add one with medclass calibrate)"
    if not enabled:
        return "raw (--no-calibration)"
    cal = Calibration.from_dict(doc)
    return f"calibrated: {cal.describe()}, fitted on {doc.get('split')!r} (n={doc.get('n')})"


def _calibration_block(args: argparse.Namespace, val: list[Any], test: list[Any], positive: Any) -> Any:
    """metrics.json's ``checkpoint_calibration``: the method and raw vs calibrated NLL/ECE/Brier per split."""
    from medclass.evaluate.calibrated import raw_vs_calibrated
    from medclass.weights import read_meta

    per_split = raw_vs_calibrated({args.val_split: val, args.split: test}, positive)
    doc = read_meta(args.checkpoint).get("calibration") if args.checkpoint is not None else None
    if per_split is None and doc is None:
        return None
    block: dict[str, Any] = {"applied": per_split is not None, "splits": per_split}
    if isinstance(doc, dict):
        block |= {k: doc.get(k) for k in ("method", "params", "split", "n", "selection")}
    return block


def _attach(args: argparse.Namespace, result: Any, metrics: dict[str, Any]) -> None:
    """Store the image-level operating point in the checkpoint's sidecar (see DESCRIPTION)."""
    from medclass import checkpoint

    block = metrics["levels"].get("image")
    if args.no_attach or args.checkpoint is None:
        return
    from medclass.calibrate import scale
    from medclass.weights import read_meta

    default_scale = scale(read_meta(args.checkpoint))  # what score and explain apply by default
    why = (
        "no image level was measured"
        if block is None
        else "its thresholds are on temperature-scaled scores"
        if result.temperature is not None
        else f"its thresholds are on {metrics['probability_scale']} probabilities, score applies {default_scale}"
        if metrics["probability_scale"] != default_scale
        else None
    )
    if why or block is None:
        print(f"operating point not stored in the checkpoint: {why}")
        return
    op = {}
    for name, c in block["classes"].items():
        p = c["operating_point"]
        if p.get("threshold") is None:
            continue
        op[name] = {
            "threshold": p["threshold"],
            "rule": str(result.rule),
            "chosen_on": args.val_split,
            "sensitivity": p.get("sensitivity"),
            "specificity": p.get("specificity"),
            "scale": metrics["probability_scale"],  # score and explain apply it to these probabilities only
            "source": f"evaluate: threshold chosen on {args.val_split!r}, rates measured on {args.split!r}",
        }
    if op:
        try:
            path = checkpoint.update_meta(args.checkpoint, {"operating_point": op})
        except OSError as exc:  # a read-only run folder: the evaluation itself stands
            print(f"operating point not stored in the checkpoint: {exc.strerror or exc} ({args.checkpoint})")
            return
        print(f"operating point stored in {path} (used by score and explain)")


def _print_in_scope(block: dict[str, Any] | None) -> None:
    if not block:
        return
    if "note" in block:
        print(block["note"])
        return
    for level, part in block["levels"].items():
        aucs = ", ".join(
            f"{name} AUC {'n/a' if c['auc'] is None else format(c['auc'], '.3f')}"
            for name, c in part["classes"].items()
        )
        print(f"in-scope images only, {level} level (test n={part['n_test']}): {aucs}")


def _print_summary(metrics: dict[str, Any]) -> None:
    def f(x: Any) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    if metrics.get("positive_class"):
        negative = [c for c in metrics["classes"] if c != metrics["positive_class"]]
        print(f"positive class: {metrics['positive_class']} (negative: {', '.join(negative)})")
    print(f"threshold rule: {metrics['threshold_rule']['rule']} (chosen on validation)")
    for level, block in metrics["levels"].items():
        print(f"{level} level (test n={block['n_test']}):")
        for name, c in block["classes"].items():
            op = c["operating_point"]
            print(
                f"  {name}: AUC {f(c['auc'])} [{f(c['auc_ci_low'])}, {f(c['auc_ci_high'])}] "
                f"(DeLong [{f(c['auc_delong_ci_low'])}, {f(c['auc_delong_ci_high'])}]); "
                f"threshold {f(op['threshold'])}: sensitivity {f(op['sensitivity'])}, specificity {f(op['specificity'])}, "
                f"accuracy {f(op['accuracy'])} [{f(op['accuracy_ci_low'])}, {f(op['accuracy_ci_high'])}]"
            )
            b = op.get("threshold_bootstrap")
            if b and b.get("threshold_ci_low") is not None:
                print(
                    f"    bootstrap 95% CI: threshold [{b['threshold_ci_low']:.4g}, {b['threshold_ci_high']:.4g}], "
                    f"sensitivity [{f(b['sensitivity_ci_low'])}, {f(b['sensitivity_ci_high'])}], "
                    f"specificity [{f(b['specificity_ci_low'])}, {f(b['specificity_ci_high'])}] "
                    f"(threshold re-chosen on each validation resample)"
                )
        mc = block.get("multiclass")
        if mc:
            print(
                f"  arg-max accuracy {f(mc['accuracy'])} [{f(mc['accuracy_ci_low'])}, {f(mc['accuracy_ci_high'])}]"
            )
        m = block["macro"]
        if len(block["classes"]) > 1:
            print(f"  macro AUC {f(m['auc'])} [{f(m['auc_ci_low'])}, {f(m['auc_ci_high'])}]")
        mi = block.get("micro")
        if mi:
            print(f"  micro AUC {f(mi['auc'])} [{f(mi['auc_ci_low'])}, {f(mi['auc_ci_high'])}]")
    cal = metrics.get("checkpoint_calibration") or {}
    for split, s in (cal.get("splits") or {}).items():
        r, c = s["raw"], s["calibrated"]
        print(f"{split} probabilities raw → calibrated ({cal.get('method')}): NLL {f(r['nll'])} → {f(c['nll'])}, "
              f"ECE {f(r['ece'])} → {f(c['ece'])}, Brier {f(r['brier'])} → {f(c['brier'])}")  # fmt: skip
    for w in metrics.get("warnings", []):
        print(f"warning: {w}")


def run(args: argparse.Namespace) -> int:
    from medclass.cli import ExitCode
    from medclass.errors import DataError
    from medclass.evaluate import (
        EvaluationConfig,
        evaluate_predictions,
        find_training_metrics,
        split_rows,
        to_dict,
    )
    from medclass.evaluate.gated import gate_summary, in_scope_metrics
    from medclass.fileio import atomic_write_text
    from medclass.report import write_evaluation
    from medclass.report.markdown import calibration_markdown, threshold_markdown
    from medclass.weights import read_meta, resolve

    if args.checkpoint is not None:
        args.checkpoint = resolve(args.checkpoint)  # a run folder means RUN/best (logged)
    positive = args.positive_class
    if args.checkpoint is not None and args.predictions is None:  # settled before any prediction
        from medclass.manifest import positive_class

        meta = read_meta(args.checkpoint)
        classes, task = list(meta.get("classes") or []), str(meta.get("task", "multiclass"))
        positive = positive_class(classes, positive, recorded=meta.get("positive_class"), task=task)
    config = EvaluationConfig(
        threshold=args.threshold,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        level=args.level,
        aggregate=args.aggregate,
        group_column=args.group_column,
        by=tuple(args.by),
        n_bins=args.bins,
        temperature_scaling=args.temperature_scaling,
        positive_class=positive,
    )
    config.validate()  # bad settings fail before any model work
    facts: dict[str, Any] = {}
    rows = _get_rows(args, facts)
    val, test = split_rows(rows, args.val_split), split_rows(rows, args.split)
    for name, part in ((args.val_split, val), (args.split, test)):
        if not part:
            raise DataError(f"no rows in split {name!r} (splits present: {_splits(rows)})")
    val, test, gate = gate_summary(val, test, args.gate)
    if gate is not None:
        n_out, n = gate["out_of_scope"], gate["images"]
        facts["input gate"] = (
            f"{gate_line(n_out['test'], n['test'])} in the test split, {n_out['validation']} of "
            f"{n['validation']} in validation (--gate {args.gate})"
        )
    for name, part in ((args.val_split, val), (args.split, test)):
        if not part:
            raise DataError(f"no in-scope rows in split {name!r} (--gate refuse); try --gate flag")
    facts |= {"validation rows": len(val), "test rows": len(test)}
    result = evaluate_predictions(val, test, config=config)
    metrics = to_dict(result)
    if gate is not None:
        metrics["gate"] = gate
        if args.gate == "flag" and gate["out_of_scope"]["test"]:
            metrics["in_scope"] = in_scope_metrics(val, test, config)
    metrics["splits"] = {"validation": args.val_split, "test": args.split}
    metrics["checkpoint_calibration"] = _calibration_block(args, val, test, positive)
    metrics["probability_scale"] = (
        "calibrated" if (metrics["checkpoint_calibration"] or {}).get("applied") else "raw"
    )
    training = find_training_metrics(args.checkpoint, args.run_dir)
    paths = write_evaluation(metrics, args.out, facts=facts, training_rows=_training_rows(training))
    first = next(iter(result.levels.values()))
    operating = {
        "rule": str(result.rule),
        "chosen_on": args.val_split,
        "level": first.level,
        "thresholds": {
            c: (None if math.isnan(r.threshold) else r.threshold) for c, r in first.classes.items()
        },
        "temperature": result.temperature,
        "scale": metrics["probability_scale"],
        "threshold_bootstrap": {  # how well each threshold transfers (see metrics.json)
            c: b["operating_point"].get("threshold_bootstrap")
            for c, b in metrics["levels"][first.level]["classes"].items()
        },
    }
    atomic_write_text(args.out / "operating_point.json", json.dumps(operating, indent=2) + "\n")
    table = threshold_markdown(metrics)
    if table:
        atomic_write_text(args.out / "operating_point.md", table)
    calibrated = calibration_markdown(metrics)
    if calibrated:
        atomic_write_text(args.out / "calibration.md", calibrated)
    _print_summary(metrics)
    if gate is not None:
        print(facts["input gate"])
        _print_in_scope(metrics.get("in_scope"))
    _attach(args, result, metrics)
    print(f"report: {paths['report']}")
    return ExitCode.OK
