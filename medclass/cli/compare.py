"""``medclass compare``: paired DeLong test of two models' AUCs on the same images."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

HELP = "compare two models' AUCs on the same test images (paired DeLong test)"
DESCRIPTION = """\
Join two predictions.csv files (from `medclass evaluate`) on image_id and test whether their ROC AUCs
differ (paired DeLong, two-sided). The files must cover the same images with the same labels.

examples:
  medclass compare reports/r1/predictions.csv reports/r2/predictions.csv
  medclass compare a.csv b.csv --class PNEUMONIA --out comparison.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", type=Path, help="predictions.csv of model A")
    parser.add_argument("b", type=Path, help="predictions.csv of model B")
    parser.add_argument(
        "--class", dest="class_name", help="class to compare (default: the positive class, or all)"
    )
    parser.add_argument("--split", default="test", help="split to compare ('all' for every row)")
    parser.add_argument("--out", type=Path, help="write the comparison as JSON here")


def _f(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.0001" if p < 1e-4 else f"{p:.4f}")


def _select(rows: list[dict[str, str]], split: str, path: Path) -> list[dict[str, str]]:
    from medclass.errors import DataError

    if split == "all" or "split" not in rows[0]:
        return rows
    chosen = [r for r in rows if r.get("split") == split]
    if not chosen:
        present = ", ".join(sorted({r.get("split", "") for r in rows}))
        raise DataError(f"no rows in split {split!r} (splits present: {present}); use --split", path)
    return chosen


def run(args: argparse.Namespace) -> int:
    from medclass.cli import ExitCode
    from medclass.evaluate import compare_tables, join_predictions, read_predictions
    from medclass.fileio import atomic_write_text

    rows_a = _select(read_predictions(args.a), args.split, args.a)
    rows_b = _select(read_predictions(args.b), args.split, args.b)
    ta, tb = join_predictions(rows_a, rows_b, (str(args.a), str(args.b)))
    results = compare_tables(ta, tb, None if args.class_name is None else [args.class_name])
    out: dict[str, Any] = {
        "a": str(args.a),
        "b": str(args.b),
        "split": args.split,
        "n": len(ta),
        "classes": {},
    }
    print(
        f"A: {args.a}\nB: {args.b}\n{len(ta)} paired images ({args.split} split); paired DeLong test, two-sided"
    )
    for name, c in results.items():
        print(
            f"{name}: AUC A {_f(c.auc_a)}  B {_f(c.auc_b)}  difference A-B {_f(c.diff)} "
            f"[95% CI {_f(c.diff_ci_low)}, {_f(c.diff_ci_high)}]  z {_f(c.z)}  p {_p(c.p_value)}  "
            f"({c.n_pos} positives, {c.n_neg} negatives)"
        )
        out["classes"][name] = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in vars(c).items()
        }
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(out, indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.out}")
    return ExitCode.OK
