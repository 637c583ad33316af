"""``medclass demo``: the whole pipeline offline, on generated DICOM, in one command.

Generates a synthetic chest-radiograph data set (real DICOM files), builds a patient-split manifest, trains
Inception V3 with its aux head from random init, evaluates it on the test split, explains a few test cases
with Grad-CAM (clinician reports and DICOM Secondary Captures), measures how often Grad-CAM points at the
recorded opacity, and writes ``OUT/index.html`` linking everything. Each stage is the real command
(``medclass manifest build``, ``train``, ``evaluate``, ``explain``) called as a user would call it.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medclass.cli import ExitCode
from medclass.names import DEVICE_NAMES

from .summary import dataset_facts, localise, print_summary, write_demo_index

log = logging.getLogger(__name__)

HELP = "run the whole pipeline offline on generated DICOM (data → train → evaluate → explain)"
DESCRIPTION = """\
Runs every stage of medclass on a synthetic chest-radiograph data set, with no network and no data of your
own, and writes OUT/index.html linking the results:

  OUT/data/            generated DICOM files (several images per patient, MONOCHROME1/2, 8–16 bit,
                       uncompressed and RLE), labels.csv and lesions.json (where each opacity is)
  OUT/manifest.csv     patient-split manifest (medclass manifest build)
  OUT/run/             training run: checkpoints, metrics.csv, config.yaml (medclass train)
  OUT/evaluation/      report.html, metrics.json, predictions.csv (medclass evaluate)
  OUT/explain/         clinician reports (HTML/PDF), DICOM Secondary Captures, region SR + SEG (medclass explain)
  OUT/heldout/         a held-out set of positives generated the same way (another seed), lesions.json
  OUT/localisation.json  where Grad-CAM peaks on each test positive vs the recorded lesion, and how its
                       regions score (pointing game, box IoU, each beside chance) on test and held-out
  OUT/index.html       what was run, how long each stage took, test AUC, Grad-CAM hit rate, links

The model starts from random weights (nothing is downloaded). Profiles:
  quick   128 px input, a few hundred images, ~15 epochs: a few minutes on 2 CPU cores
  full    299 px input (the model's own), more data and epochs: about an hour on 2 CPU cores

For speed on CPU start it with glibc's malloc tuned (scripts/demo.sh does):
  MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=8589934592 medclass demo

Examples:
  medclass demo                                 # quick profile into ./demo_out
  medclass demo --out /tmp/demo --seed 3
  medclass demo --profile full --out demo_full
"""

STAGES = ("data", "manifest", "train", "evaluate", "localisation", "explain", "index")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medclass.demo.profiles import PROFILES

    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--profile", choices=list(PROFILES), default="quick", help="how big a run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the training")
    parser.add_argument(
        "--force", action="store_true", help="replace the results of an earlier demo in --out"
    )
    tune = parser.add_argument_group("overrides of the profile (for experiments)")
    tune.add_argument("--patients", type=int, default=None, help="number of synthetic patients")
    tune.add_argument("--epochs", type=int, default=None)
    tune.add_argument("--image-size", type=int, default=None, help="model input side in px")
    tune.add_argument("--lr", type=float, default=None)
    tune.add_argument("--cam-layer", default=None, help="Grad-CAM target layer (e.g. Mixed_5d, Mixed_6e)")
    tune.add_argument(
        "--device",
        choices=DEVICE_NAMES,
        default="auto",
        help="training device (auto: CUDA if present)",
    )
    tune.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


# --- small helpers -----------------------------------------------------------------------------------


def tune_malloc() -> str:
    """Tune glibc malloc as PERF-NOTES recommends (see :func:`medclass.runtime.tune_cpu_malloc`), unless
    the environment already did (scripts/demo.sh sets the variables); returns what was done."""
    from medclass.runtime import tune_cpu_malloc

    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return "MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ from the environment"
    if tune_cpu_malloc():
        return "mallopt: mmap threshold raised, trim threshold 2 GiB"
    return "not tuned (not glibc, or mallopt refused)"


class StageFailed(Exception):
    """A stage's command returned a non-zero exit code (its own message is already on stderr)."""

    def __init__(self, stage: str, code: int) -> None:
        self.stage, self.code = stage, code
        super().__init__(f"stage {stage!r} failed with exit code {code}")


def _call(stage: str, argv: Sequence[object], traceback: bool) -> int:
    """Run ``medclass <argv>`` in this process, as a user would; raises :class:`StageFailed` on failure."""
    from medclass.cli import main

    words = [str(a) for a in argv]
    log.debug("medclass %s", " ".join(words))
    code = main(["--traceback", *words] if traceback else words)
    if code not in (ExitCode.OK,):
        raise StageFailed(stage, code)
    return code


def _command_available(name: str) -> bool:
    from medclass.cli import COMMANDS

    return name in COMMANDS and importlib.util.find_spec(f"medclass.cli.{COMMANDS[name]}") is not None


def _split_counts(manifest: Path) -> dict[str, dict[str, int]]:
    """split → {"images", "patients", "<label>": images}."""
    out: dict[str, dict[str, Any]] = {}
    with manifest.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            s = out.setdefault(row["split"], {"images": 0, "patients": set()})
            s["images"] += 1
            s["patients"].add(row["patient_id"])
            s[row["label"]] = s.get(row["label"], 0) + 1
    return {k: {**v, "patients": len(v["patients"])} for k, v in out.items()}


def _pick_cases(manifest: Path, n_pos: int, n_neg: int, positive: str, seed: int) -> list[str]:
    """Paths (relative to the data root) of a few test positives and negatives, one image per patient."""
    import random

    pos: dict[str, str] = {}
    neg: dict[str, str] = {}
    with manifest.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "test":
                (pos if row["label"] == positive else neg).setdefault(row["patient_id"], row["path"])
    rng = random.Random(seed)
    chosen = rng.sample(sorted(pos.values()), min(n_pos, len(pos)))
    return chosen + rng.sample(sorted(neg.values()), min(n_neg, len(neg)))


def _auc_summary(metrics_json: Path, positive: str) -> dict[str, Any]:
    """Test AUC (bootstrap and DeLong CIs) per level from metrics.json."""
    metrics = json.loads(metrics_json.read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    for level, block in metrics.get("levels", {}).items():
        classes = block.get("classes", {})
        c = classes.get(positive) or next(iter(classes.values()), None)
        if c is None:
            continue
        op = c.get("operating_point", {})
        out[level] = {
            "n_test": block.get("n_test"),
            "auc": c.get("auc"),
            "ci_low": c.get("auc_ci_low"),
            "ci_high": c.get("auc_ci_high"),
            "delong_low": c.get("auc_delong_ci_low"),
            "delong_high": c.get("auc_delong_ci_high"),
            "threshold": op.get("threshold"),
            "sensitivity": op.get("sensitivity"),
            "specificity": op.get("specificity"),
        }
    return out


# --- the run -----------------------------------------------------------------------------------------


class _Stages:
    """Stage headers, spinners and timings on the terminal."""

    def __init__(self, console: Any, total: int) -> None:
        self.console = console
        self.total = total
        self.index = 0
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, key: str, title: str, spinner: bool = False) -> Iterator[None]:
        self.index += 1
        self.console.rule(f"[bold]{self.index}/{self.total} {title}")
        t0 = time.perf_counter()
        try:
            if spinner:
                with self.console.status(f"{title}…"):
                    yield
            else:
                yield
        finally:
            self.seconds[key] = time.perf_counter() - t0
        self.console.print(f"[green]✓[/green] {title}: {self.seconds[key]:.1f} s")


def _prepare_out(out: Path, force: bool) -> None:
    from medclass.errors import ConfigError

    ours = [
        "data",
        "run",
        "evaluation",
        "explain",
        "manifest.csv",
        "localisation.json",
        "heldout",
        "demo.json",
        "index.html",
    ]
    if out.exists() and not out.is_dir():
        raise ConfigError("--out must be a folder", out)
    present = [n for n in ours if (out / n).exists()]
    others = [p.name for p in out.iterdir() if p.name not in ours] if out.is_dir() else []
    if others and not present:
        raise ConfigError(f"folder is not empty and holds no earlier demo ({', '.join(sorted(others)[:3])}…); "
                          "choose another --out", out)  # fmt: skip
    if present and not force:
        raise ConfigError("holds an earlier demo; pass --force to replace it, or choose another --out", out)
    for name in present:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from medclass import __version__
    from medclass.demo.profiles import get_profile

    t_start = time.perf_counter()
    malloc = tune_malloc()
    profile = get_profile(args.profile).with_overrides(
        n_patients=args.patients, epochs=args.epochs, image_size=args.image_size, lr=args.lr,
        cam_layer=args.cam_layer,
    )  # fmt: skip
    out: Path = args.out
    _prepare_out(out, args.force)
    console = Console(highlight=False)
    console.print(
        f"[bold]medclass demo[/bold] {__version__}: profile [bold]{profile.name}[/bold] "
        f"({profile.n_patients} patients, {profile.image_size} px, {profile.epochs} epochs, seed {args.seed}) "
        f"→ {out}"
    )
    console.print(f"malloc: {malloc}")
    stages = _Stages(console, len(STAGES))
    state: dict[str, Any] = {"warnings": [], "malloc": malloc}
    try:
        _run_stages(args, profile, out, stages, state)
    except StageFailed as exc:
        console.print(f"[red]demo stopped: {exc}[/red] (its message is above; --traceback shows more)")
        return exc.code
    total = time.perf_counter() - t_start
    print_summary(console, out, state, stages.seconds, total)
    return ExitCode.PARTIAL if state["warnings"] else ExitCode.OK


def _run_stages(
    args: argparse.Namespace, profile: Any, out: Path, stages: _Stages, state: dict[str, Any]
) -> None:
    tb = bool(args.traceback)
    seed = args.seed
    data, manifest, run_dir = out / "data", out / "manifest.csv", out / "run"
    eval_dir, explain_dir = out / "evaluation", out / "explain"
    positive = "opacity"

    with stages.stage("data", "generating synthetic DICOM chest radiographs", spinner=True):
        from medclass.synth import generate_cxr_dataset

        ds = generate_cxr_dataset(
            data,
            n_patients=profile.n_patients,
            images_per_patient=profile.images_per_patient,
            seed=seed,
            sizes=profile.sizes,
            lesion_contrast=profile.lesion_contrast,
        )
        state["dataset"] = dataset_facts(ds)
    stages.console.print(
        f"  {len(ds.records)} DICOM images of {len(ds.patients)} patients in {data} "
        f"({state['dataset']['photometric']}; {state['dataset']['bits']}; {state['dataset']['syntaxes']})"
    )

    with stages.stage("manifest", "building the patient-split manifest (medclass manifest build)"):
        _call("manifest", ["manifest", "build", "--labels-csv", ds.labels_csv, "--data-root", data,
                           "--study-column", "study_id", "--keep-columns", "sex,view",
                           "--out", manifest, "--seed", seed], tb)  # fmt: skip
        state["splits"] = _split_counts(manifest)

    with stages.stage("train", "training Inception V3 + aux head from random init (medclass train)"):
        argv: list[object] = ["train", "--manifest", manifest, "--data-root", data, "--out", run_dir,
                "--image-size", profile.image_size, "--epochs", profile.epochs,
                "--batch-size", profile.batch_size, "--lr", profile.lr, "--mode", profile.mode,
                "--backbone-lr-scale", profile.backbone_lr_scale, "--warmup-epochs", profile.warmup_epochs,
                "--patience", profile.patience, "--seed", seed, "--device", args.device]  # fmt: skip
        for flag, value in profile.train.items():
            argv += [flag, value]
        if args.no_progress:
            argv.append("--no-progress")
        _call("train", argv, tb)
    checkpoint = run_dir / "best"

    with stages.stage("evaluate", "evaluating on the test split (medclass evaluate)"):
        _call("evaluate", ["evaluate", "--checkpoint", checkpoint, "--manifest", manifest, "--data-root", data,
                           "--out", eval_dir, "--bootstrap", profile.bootstrap, "--seed", seed,
                           "--by", "sex", "--by", "view"], tb)  # fmt: skip
        state["auc"] = _auc_summary(eval_dir / "metrics.json", positive)

    with stages.stage("localisation", "measuring where Grad-CAM points (test positives vs recorded lesions)"):
        state["localisation"] = localise(stages.console, checkpoint, manifest, data, ds.lesions_json, profile,
                                          positive, out, not args.no_progress, seed)  # fmt: skip

    with stages.stage("explain", "explaining test cases with Grad-CAM (medclass explain)"):
        cases = _pick_cases(manifest, profile.n_explain_positive, profile.n_explain_negative, positive, seed)
        state["explained"] = cases
        if _command_available("explain"):
            _call("explain", ["explain", "--checkpoint", checkpoint, *[data / c for c in cases],
                              "--out", explain_dir, "--layer", profile.cam_layer, "--method", profile.cam_method,
                              "--metrics", eval_dir / "metrics.json", "--dicom", "--regions", "--seg",
                              "--region-threshold", state["localisation"]["regions"]["threshold"]], tb)  # fmt: skip
        else:
            msg = "the explain command is not available in this installation: no clinician reports"
            state["warnings"].append(msg)
            log.warning(msg)

    state["seconds"] = dict(stages.seconds)
    with stages.stage("index", "writing index.html"):
        write_demo_index(out, profile, args, state, stages.seconds)
