"""``medclass cv``: K-fold cross-validation of a training recipe on a manifest's train+val rows.

Here, in the CLI, is where training and evaluation meet (the stages never import each other): each fold
is a ``train`` run on a fold manifest written by :mod:`medclass.manifest.folds`, then the evaluation
library on that run's predictions; the fold results are drawn into files by :mod:`medclass.report.cv`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from medclass.cli import ExitCode
from medclass.cli import train as train_cli

log = logging.getLogger(__name__)

HELP = "cross-validate a training recipe: patient-grouped, stratified K folds over train+val (test untouched)"
DESCRIPTION = """\
Estimate how a training recipe does on data like yours, and how much that varies, before you touch the
test split. The manifest's train and val rows are pooled (its test rows are never read) and cut into K
folds by patient (--group-column), stratified by label, shuffled with --fold-seed. Fold i holds out
fold i, validates on fold i+1 (model selection, --select, and the threshold) and trains on the rest,
with exactly the recipe `medclass train` would use (same options, same --config file). The held-out
fold is then scored with the fold's best checkpoint (calibrated probabilities when the checkpoint carries
a calibration, as train fits one) and measured: AUC, ECE and Brier (also of the raw probabilities), the
threshold chosen on the fold's validation part (--threshold) and the sensitivity/specificity it gives on
the held-out part.

Use it to choose the recipe's defaults (epochs, lr, --select, --ema...) by the mean and spread over folds,
never by the test split; then train once on the original split and evaluate on test.

DIR receives:
  cv_folds.csv    one row per fold and reported class (failed folds: status failed + error)
  cv_summary.csv  mean, SD (over folds), min, max per class and metric
  cv.md           the same as a markdown table (per fold, then mean ± SD)
  cv.png          held-out ROC curve of every fold, and each metric per fold with mean ± SD
  cv.json         settings, per-fold rows and the summary
  cv_plan.json    the settings the folds were made with (a rerun must match them)
  fold-<i>/       manifest.csv (+ .meta.json), run/ (the train run), predictions.csv, metrics.json,
                  result.json (written last: the fold is done)

Resumable: rerun the same command and finished folds are kept (not retrained), an interrupted fold's
training continues from its 'last' checkpoint, and a failed fold is tried again. A fold that fails is
reported and the others go on (exit 3).

examples:
  # 5 folds of the default recipe at 128 px, 3 epochs each
  medclass cv --manifest data_manifests/kermany_cxr.csv --folds 5 --out cv/k128 --image-size 128 --epochs 3

  # compare a recipe change by its mean ± SD (same folds: same --fold-seed)
  medclass cv --manifest m.csv --out cv/ema --image-size 128 --epochs 3 --ema
  medclass cv --manifest m.csv --out cv/lr3 --config recipe.yaml --lr 3e-4

  # after an interruption: the same command again
  medclass cv --manifest m.csv --folds 5 --out cv/k128 --image-size 128 --epochs 3
"""

PLAN = "cv_plan.json"
RESULT = "result.json"
# Settings that may change between a run and its continuation (they do not change the numbers).
_FREE = ("out", "progress", "workers", "cache", "cache_dir", "cache_dtype", "tensorboard", "device", "data_root",
         "manifest", "allow_outside_root", "allow_empty_class", "profile")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cv = parser.add_argument_group("cross-validation")
    cv.add_argument("--out", dest="cv_out", type=Path, required=True, metavar="DIR", help="output folder")
    cv.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds (≥ 3)")
    cv.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment")
    cv.add_argument(
        "--group-column",
        choices=("patient_id", "study_id"),
        default="patient_id",
        help="what a fold keeps whole",
    )
    cv.add_argument(
        "--threshold", default="youden", help="youden, sens:T or spec:T (chosen on each fold's val part)"
    )
    cv.add_argument("--bins", type=int, default=10, help="calibration bins for ECE")
    cv.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per fold (threshold CI)")
    recipe = parser.add_argument_group("training recipe (as for medclass train)")
    recipe.add_argument("--config", metavar="YAML", help="settings file (defaults ← this file ← options)")
    train_cli.add_recipe_options(recipe, skip=("out",))


def _settings(args: argparse.Namespace, config: Any, manifest: Any) -> dict[str, Any]:
    recipe = {k: v for k, v in config.to_dict().items() if k not in _FREE}
    return {
        "schema": "medclass.cv/1",
        "manifest": str(manifest.path),
        "manifest_sha256": manifest.sha256,
        "folds": args.folds,
        "fold_seed": args.fold_seed,
        "group_column": args.group_column,
        "threshold": args.threshold,
        "n_bins": args.bins,
        "recipe": recipe,
    }


def _check_plan(out: Path, settings: dict[str, Any]) -> None:
    """Write ``cv_plan.json``, or refuse (ConfigError) when ``out`` holds a CV made with other settings."""
    from medclass.errors import ConfigError
    from medclass.fileio import atomic_write_text

    path = out / PLAN
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read the cross-validation plan ({exc}); choose another --out", path
            ) from None
        now = json.loads(json.dumps(settings))  # tuples as lists, as they were saved
        flat_old = {**old, **{f"recipe.{k}": v for k, v in old.get("recipe", {}).items()}}
        flat_now = {**now, **{f"recipe.{k}": v for k, v in now["recipe"].items()}}
        diffs = [f"{k}: {flat_old.get(k)!r} → {v!r}" for k, v in flat_now.items()
                 if k not in ("recipe", "manifest") and flat_old.get(k) != v]  # fmt: skip
        if diffs:
            raise ConfigError(
                f"holds a cross-validation made with other settings ({'; '.join(diffs)}); rerun with the same "
                "settings to continue it, or choose another --out",
                out,
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _raw_calibration(rows: list[Any], classes: list[str], n_bins: int) -> dict[str, dict[str, float]]:
    """ECE and Brier of the raw (uncalibrated) probabilities per class, from the ``raw:<class>`` columns
    predictions rows carry when the checkpoint calibrates; {} when they have none (nothing was calibrated)."""
    from medclass.evaluate import prediction_table
    from medclass.metrics import calibration
    from medclass.names import RAW_PROB_PREFIX

    table = prediction_table(rows, what="held-out fold")
    out = {}
    for name in classes:
        column = f"{RAW_PROB_PREFIX}{name}"
        if column in rows[0]:
            y = table.y[:, table.classes.index(name)]
            result = calibration(y, [float(r[column]) for r in rows], n_bins=n_bins, what=name)
            out[name] = {"ece_raw": result.ece, "brier_raw": result.brier}
    return out


def _fold_rows(
    fold: Any, metrics: dict[str, Any], counts: dict[str, int], extra: dict[str, Any], raw: dict[str, Any]
) -> list[dict]:
    """One row per reported class from the fold's metrics.json dict (``raw``: :func:`_raw_calibration`)."""
    rows = []
    for name, c in metrics["levels"]["image"]["classes"].items():
        op, cal = c["operating_point"], c.get("calibration") or {}
        boot = op.get("threshold_bootstrap") or {}
        before = raw.get(name, {"ece_raw": cal.get("ece"), "brier_raw": cal.get("brier")})  # raw = served
        rows.append(counts | before | {
            "fold": fold.index, "class": name, "status": "ok", "n_test_pos": c.get("n_pos"),
            "n_test_neg": c.get("n_neg"), "auc": c.get("auc"), "ece": cal.get("ece"), "brier": cal.get("brier"),
            "threshold": op.get("threshold"), "sensitivity": op.get("sensitivity"),
            "specificity": op.get("specificity"), "val_sensitivity": op["validation"].get("sensitivity"),
            "val_specificity": op["validation"].get("specificity"),
            "threshold_ci_low": boot.get("threshold_ci_low"), "threshold_ci_high": boot.get("threshold_ci_high"),
        } | extra)  # fmt: skip
    return rows


def _run_fold(args: argparse.Namespace, config: Any, manifest: Any, plan: Any, fold: Any) -> dict[str, Any]:
    """Train fold ``fold`` (or continue its training) and measure its held-out part; returns its record
    (also written as ``fold-<i>/result.json``). Raises whatever the stages raise."""
    from medclass import calibrate
    from medclass.evaluate import (
        EvaluationConfig,
        evaluate_predictions,
        predict_manifest,
        split_rows,
        to_dict,
        write_predictions,
    )
    from medclass.fileio import atomic_write_text
    from medclass.manifest.folds import write_fold_manifest
    from medclass.train import train
    from medclass.train.distributed import pick_device
    from medclass.weights import read_meta

    start = time.monotonic()
    folder = args.cv_out / f"fold-{fold.index}"
    fold_manifest = folder / "manifest.csv"
    if not fold_manifest.is_file():
        write_fold_manifest(fold_manifest, manifest, plan, fold)
    run_dir = folder / "run"
    root = str(manifest.data_root.resolve())
    fold_config = dataclasses.replace(config, manifest=str(fold_manifest), out=str(run_dir), data_root=root)
    trained = folder / "trained.json"
    if not trained.is_file():
        resume = (run_dir / "last.json").is_file()
        if not resume:  # stopped before its first epoch ended: start that fold again
            (run_dir / "config.yaml").unlink(missing_ok=True)
        result = train(fold_config, resume=resume)
        summary = {
            "best_epoch": result.best_epoch,
            "last_epoch": result.last_epoch,
            "skipped": len(result.skipped),
        }
        atomic_write_text(trained, json.dumps(summary, indent=2) + "\n")
    info = json.loads(trained.read_text(encoding="utf-8"))
    best = run_dir / "best"
    meta = read_meta(best)
    rows = predict_manifest(best, fold_manifest, ("val", "test"), root, config.batch_size,
                            device=str(pick_device(config.device)), workers=config.workers,
                            allow_outside_root=config.allow_outside_root)  # fmt: skip
    write_predictions(folder / "predictions.csv", rows)
    ev_config = EvaluationConfig(threshold=args.threshold, n_bootstrap=args.bootstrap, seed=args.fold_seed,
                                 level="image", n_bins=args.bins, positive_class=meta.get("positive_class"))  # fmt: skip
    metrics = to_dict(
        evaluate_predictions(split_rows(rows, "val"), split_rows(rows, "test"), config=ev_config)
    )
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    counts = {"n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test)}
    raw = _raw_calibration(split_rows(rows, "test"), list(metrics["levels"]["image"]["classes"]), args.bins)
    extra = {
        "best_epoch": info.get("best_epoch"),
        "probabilities": calibrate.scale(meta),  # calibrated (train fitted one for best) or raw
        "seconds": round(time.monotonic() - start, 1),
        "error": "",
    }
    record = {
        "fold": fold.index,
        "status": "ok",
        "rows": _fold_rows(fold, metrics, counts, extra, raw),
        "curves": {
            name: {"fpr": c["curves"]["roc"]["fpr"], "tpr": c["curves"]["roc"]["tpr"]}
            for name, c in metrics["levels"]["image"]["classes"].items()
            if c["curves"].get("roc")
        },
    }
    atomic_write_text(folder / RESULT, json.dumps(record, indent=2) + "\n")  # the fold is done
    return record


def _failed(fold: Any, exc: BaseException, start: float) -> dict[str, Any]:
    from medclass.errors import describe

    row = {"fold": fold.index, "class": "", "status": "failed", "n_train": len(fold.train), "n_val": len(fold.val),
           "n_test": len(fold.test), "seconds": round(time.monotonic() - start, 1), "error": describe(exc)}  # fmt: skip
    return {"fold": fold.index, "status": "failed", "rows": [row], "curves": {}}


def _line(rec: dict[str, Any]) -> str:
    def f(x: Any, spec: str = ".3f") -> str:
        return "n/a" if _num(x) is None else format(x, spec)

    return "; ".join(
        f"{r['class']}: AUC {f(r['auc'])}, ECE {f(r['ece'])}, threshold {f(r['threshold'], '.4g')} → sensitivity "
        f"{f(r['sensitivity'])}, specificity {f(r['specificity'])}"
        for r in rec["rows"]
    )


def run(args: argparse.Namespace) -> ExitCode:
    from medclass.errors import ConfigError
    from medclass.manifest import load_manifest
    from medclass.manifest.folds import cv_plan
    from medclass.metrics import parse_threshold_rule
    from medclass.report.cv import summarize_folds, write_cv
    from medclass.train.config import resolve_config

    parse_threshold_rule(args.threshold)  # bad settings fail before any work
    if args.bins < 1 or args.bootstrap < 0:
        raise ConfigError("--bins must be ≥ 1 and --bootstrap ≥ 0")
    config = resolve_config(args.config, train_cli.flags_given(args) | {"out": str(args.cv_out)})
    manifest = load_manifest(
        Path(config.manifest), config.data_root, allow_outside_root=config.allow_outside_root
    )
    plan = cv_plan(manifest, args.folds, seed=args.fold_seed, group=args.group_column)
    _check_plan(args.cv_out, _settings(args, config, manifest))
    n_test = sum(r.split == "test" for r in manifest.rows)
    print(f"{args.folds}-fold cross-validation of {len(plan.pool)} train+val images "
          f"({len({getattr(r, args.group_column) for r in plan.pool})} {args.group_column} values); "
          f"{n_test} test images left untouched")  # fmt: skip
    records = []
    for fold in plan.folds:
        head = f"fold {fold.index}/{args.folds}"
        done = args.cv_out / f"fold-{fold.index}" / RESULT
        if done.is_file():
            rec = json.loads(done.read_text(encoding="utf-8"))
            print(f"{head}: finished earlier, kept — {_line(rec)}", flush=True)
            records.append(rec)
            continue
        print(f"{head}: training on {len(fold.train)} images, validating on {len(fold.val)}, "
              f"holding out {len(fold.test)}", flush=True)  # fmt: skip
        start = time.monotonic()
        try:
            rec = _run_fold(args, config, manifest, plan, fold)
        except Exception as exc:  # one fold's failure is that fold's result; the others go on
            log.debug("fold %d failed", fold.index, exc_info=True)
            rec = _failed(fold, exc, start)
            print(f"{head}: FAILED — {rec['rows'][0]['error']}", flush=True)
        else:
            print(f"{head}: done in {rec['rows'][0]['seconds']:.0f} s — {_line(rec)}", flush=True)
        records.append(rec)
    rows = [r for rec in records for r in rec["rows"]]
    curves: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        for name, c in rec.get("curves", {}).items():
            curves.setdefault(name, []).append({"fold": rec["fold"], **c})
    settings = json.loads((args.cv_out / PLAN).read_text(encoding="utf-8"))
    intro = (f"{args.folds}-fold patient-grouped cross-validation of `{manifest.path.name}` (train+val only; "
             f"fold seed {args.fold_seed}); threshold `{args.threshold}` chosen on each fold's validation part, "
             "rates on its held-out part.")  # fmt: skip
    paths = write_cv(args.cv_out, settings, rows, curves, intro=intro)
    for s in summarize_folds(rows):
        if s["metric"] in ("auc", "ece", "threshold", "sensitivity", "specificity") and s["mean"] is not None:
            sd = "n/a" if s["sd"] is None else f"{s['sd']:.3f}"
            print(f"{s['class']}: {s['metric']} {s['mean']:.3f} ± {sd} over {s['n_folds']} folds")
    print(f"results: {paths['markdown']}, {paths['folds']}, {paths['figure']}, {paths['json']}")
    failed = [rec["fold"] for rec in records if rec["status"] != "ok"]
    if failed:
        print(
            f"{len(failed)} of {args.folds} folds failed ({', '.join(map(str, failed))}); rerun to retry them"
        )
        return ExitCode.ERROR if len(failed) == len(records) else ExitCode.PARTIAL
    return ExitCode.OK
