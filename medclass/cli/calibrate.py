"""``medclass calibrate``: fit (or refit) a checkpoint's probability calibration on a split and store it in
its sidecar; and the one ``--no-calibration`` flag of evaluate, score and explain."""

from __future__ import annotations

import argparse
from pathlib import Path

from medclass.cli import ExitCode
from medclass.names import CALIBRATION_METHODS

HELP = "fit a checkpoint's probability calibration on validation and store it in its sidecar"
DESCRIPTION = """\
Fit the calibration that turns the checkpoint's logits into probabilities (temperature scaling; Platt
scaling or isotonic regression for a two-class task) on one split of a manifest (default: val) and store it
in the checkpoint's sidecar (re-sealed; the weights file and its sha256 are not touched). `medclass train`
already does this for RUN/best; use this for older checkpoints or to choose another method.

--method auto (default) chooses by measurement: each candidate (none, temperature, and for two classes
platt and isotonic) is fitted on K-1 folds of the split and scored on the held-out fold (K <= 5, stratified);
the lowest held-out NLL wins. The sidecar records the choice, every candidate's held-out NLL/ECE/Brier, n,
and the raw vs calibrated NLL/ECE/Brier on the split. evaluate, score, explain and export then use the
calibrated probabilities; --no-calibration on evaluate, score and explain shows the raw ones. An operating
point stored by an earlier evaluate is removed (it was chosen on the old scale): run evaluate again.

examples:
  medclass calibrate --checkpoint runs/r1/best --manifest data_manifests/mine.csv
  medclass calibrate --checkpoint runs/r1/best --manifest m.csv --method temperature
"""


def add_no_calibration(parser: argparse._ActionsContainer) -> None:
    """The ``--no-calibration`` flag (``args.no_calibration``), shared by evaluate, score and explain."""
    parser.add_argument(
        "--no-calibration",
        action="store_true",
        help="show the model's raw probabilities instead of the checkpoint's calibrated ones "
        "(thresholds chosen on calibrated probabilities are then not applied)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint stem (or its .json/.safetensors)"
    )
    parser.add_argument("--manifest", type=Path, required=True, help="manifest CSV with the split's rows")
    parser.add_argument("--data-root", type=Path, help="folder the manifest's paths are relative to")
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept manifest paths that leave the data root; refused by default",
    )
    parser.add_argument("--split", default="val", help="split to fit on (never the test split)")
    parser.add_argument(
        "--method", choices=CALIBRATION_METHODS, default="auto", help="auto: chosen by cross-fitted NLL"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--dry-run", action="store_true", help="fit and report, but leave the sidecar alone")


def _f(x: object) -> str:
    return f"{x:.4f}" if isinstance(x, float) else "n/a"


def run(args: argparse.Namespace) -> ExitCode:
    from medclass.evaluate.predict import calibrate_checkpoint
    from medclass.weights import resolve

    stem = resolve(args.checkpoint)
    cal = calibrate_checkpoint(
        stem,
        args.manifest,
        args.split,
        args.data_root,
        args.batch_size,
        method=args.method,
        allow_outside_root=args.allow_outside_root,
        write=not args.dry_run,
    )
    rec = cal.record
    print(f"{args.split} split, n={rec['n']} (class counts {rec['class_counts']}): {cal.describe()}")
    for name, s in rec["selection"]["candidates"].items():
        print(f"  held-out ({rec['selection']['folds']} folds) {name:<11} NLL {_f(s['nll'])}  ECE {_f(s['ece'])}"
              f"  Brier {_f(s['brier'])}")  # fmt: skip
    if "reason" in rec["selection"]:
        print(f"  {rec['selection']['reason']}")
    raw, after = rec["validation"]["raw"], rec["validation"]["calibrated"]
    print(f"  {args.split} raw → calibrated (in-sample): NLL {_f(raw['nll'])} → {_f(after['nll'])}, "
          f"ECE {_f(raw['ece'])} → {_f(after['ece'])}, Brier {_f(raw['brier'])} → {_f(after['brier'])}")  # fmt: skip
    print("dry run: sidecar not changed" if args.dry_run else f"stored in {stem}.json")
    return ExitCode.OK
