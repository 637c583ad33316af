"""``medclass manifest build|check``: make a patient-split manifest, or check one for leaks and gaps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from medclass.cli import ExitCode

HELP = "build a patient-split data manifest (CSV), or check one"
DESCRIPTION = """\
Build a manifest (one CSV row per image: path, patient_id, split, label or finding:<name> columns) from
one source, split train/val/test by patient (stratified, seeded), or check an existing one.

Sources (pick one):
  --from-folders ROOT                 ROOT/<class>/**/<image>; patient id by --patient RULE
  --labels-csv FILE                   a table of image paths and labels (--path-column, --label-column,
                                      --finding-columns a,b,c for multi-label, --patient-column)
  --dicom-tree ROOT --labels-csv FILE DICOM files found by content, joined to FILE by PatientID
                                      (--key patient) or StudyInstanceUID (--key study)
  --from-npz FILE                     a MedMNIST .npz; official splits kept, frame = image index

Paths are written relative to --data-root (default: the source folder), which is recorded beside the
manifest (OUT.meta.json, relative to OUT's folder) together with the positive class of a two-class
manifest. When loading a manifest the data root is --data-root, else $MEDCLASS_DATA_ROOT, else the
recorded root, else the manifest's own folder.

Examples:
  medclass manifest build --from-folders data/xray --patient kermany --out data_manifests/xray.csv
  medclass manifest build --labels-csv ../shared/data/kermany_cxr_pneumonia_fullres/labels.csv \\
      --path-column relpath --label-column class_name --keep-columns pneumonia_type \\
      --data-root ../shared/data --out data_manifests/kermany_cxr.csv
  medclass manifest build --dicom-tree scans/ --labels-csv labels.csv --key study --out m.csv
  medclass manifest check data_manifests/kermany_cxr.csv --data-root ../shared/data
"""


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)
    fmt = parser.formatter_class

    b = sub.add_parser(
        "build", help="make a manifest from a source", description=DESCRIPTION, formatter_class=fmt
    )
    src = b.add_argument_group("source")
    src.add_argument("--from-folders", type=Path, metavar="ROOT", help="folder-per-class tree")
    src.add_argument(
        "--labels-csv", type=Path, metavar="FILE", help="table of labels (alone, or with --dicom-tree)"
    )
    src.add_argument(
        "--dicom-tree", type=Path, metavar="ROOT", help="DICOM files found by content under ROOT"
    )
    src.add_argument("--from-npz", type=Path, metavar="FILE", help="MedMNIST .npz (official splits kept)")
    cols = b.add_argument_group("labels CSV columns")
    cols.add_argument("--path-column", default="path")
    cols.add_argument("--label-column", default="label")
    cols.add_argument(
        "--finding-columns",
        type=_csv_list,
        default=[],
        metavar="A,B,C",
        help="0/1 columns for a multi-label manifest (instead of --label-column)",
    )
    cols.add_argument("--patient-column", default="patient_id", help="'' = each file is its own patient")
    cols.add_argument("--study-column", default=None)
    cols.add_argument(
        "--keep-columns",
        type=_csv_list,
        default=[],
        metavar="A,B",
        help="extra columns copied into the manifest (sex, view, site...)",
    )
    cols.add_argument(
        "--images-root",
        type=Path,
        default=None,
        help="folder that relative paths in --labels-csv start from (default: the CSV's folder)",
    )
    other = b.add_argument_group("per-source options")
    other.add_argument(
        "--patient",
        default="stem",
        metavar="RULE",
        help="--from-folders patient id: stem, parent, kermany, or regex:PATTERN",
    )
    other.add_argument("--key", choices=("patient", "study"), default="patient", help="--dicom-tree join key")
    other.add_argument("--key-column", default=None, help="labels column to join on (patient_id / study_uid)")
    other.add_argument(
        "--label-names",
        type=_csv_list,
        default=None,
        metavar="A,B",
        help="--from-npz: names of label values 0,1,... (or of the multi-label columns)",
    )
    other.add_argument("--id-prefix", default=None, help="--from-npz: per-image patient id prefix")
    out = b.add_argument_group("output and split")
    out.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    out.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="paths are written relative to it; recorded in OUT's .meta.json so later commands find it",
    )
    out.add_argument(
        "--positive-class",
        default=None,
        metavar="NAME",
        help="two-class manifests: the class scored as positive (default: the class whose name is not "
        "normal/negative/healthy/benign/control/no finding/0; refused when the names do not tell)",
    )
    out.add_argument("--val", type=float, default=0.15, help="fraction of patients for validation")
    out.add_argument("--test", type=float, default=0.15, help="fraction of patients for test")
    out.add_argument("--seed", type=int, default=0)
    out.add_argument(
        "--group", choices=("patient", "study"), default="patient", help="unit kept in one split"
    )
    b.set_defaults(_action=_build)

    c = sub.add_parser(
        "check",
        help="check a manifest against its files",
        formatter_class=fmt,
        description="Exit 1 and list the lines of: missing files, unknown labels, paths "
        "escaping the data root, duplicate images across splits (by path+frame and by file "
        "content), patients (or studies) in two splits. Exit 0 with a summary when fine.",
    )
    c.add_argument("manifest", type=Path)
    c.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="default: $MEDCLASS_DATA_ROOT, the root recorded at build time, or the manifest's folder",
    )
    c.add_argument("--classes", type=_csv_list, default=None, metavar="A,B", help="the allowed labels")
    c.add_argument("--no-hash", action="store_true", help="skip the file-content comparison")
    c.add_argument(
        "--group",
        choices=("patient", "study"),
        default="patient",
        help="unit that must stay in one split (study: a patient's studies may differ)",
    )
    c.add_argument("--max-problems", type=int, default=50, help="list at most this many problems")
    c.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept paths that leave the data root (absolute, '..', symlinks out); refused by default",
    )
    c.set_defaults(_action=_check)


def run(args: argparse.Namespace) -> ExitCode:
    return args._action(args)


def _build(args: argparse.Namespace) -> ExitCode:
    from medclass.errors import ConfigError
    from medclass.manifest import (
        data_warnings,
        from_dicom_tree,
        from_folders,
        from_labels_csv,
        from_npz,
        load_manifest,
        positive_class,
        with_splits,
        write_manifest,
        write_meta,
    )

    chosen = [n for n in ("from_folders", "dicom_tree", "from_npz") if getattr(args, n)]
    if len(chosen) > 1 or ((args.from_npz or args.from_folders) and args.labels_csv):
        raise ConfigError(
            "give one source: --from-folders, --labels-csv, --dicom-tree with --labels-csv, or --from-npz"
        )
    finding = {
        "label_column": None if args.finding_columns else args.label_column,
        "finding_columns": args.finding_columns,
        "keep_columns": args.keep_columns,
    }
    if args.from_folders:
        root = args.data_root or args.from_folders
        collected = from_folders(args.from_folders, root, patient=args.patient)
    elif args.dicom_tree:
        if not args.labels_csv:
            raise ConfigError("--dicom-tree needs --labels-csv FILE with the labels")
        root = args.data_root or args.dicom_tree
        collected = from_dicom_tree(
            args.dicom_tree, args.labels_csv, root, key=args.key, key_column=args.key_column, **finding
        )
    elif args.from_npz:
        root = args.data_root or args.from_npz.parent
        collected = from_npz(args.from_npz, root, label_names=args.label_names, id_prefix=args.id_prefix)
    elif args.labels_csv:
        root = args.data_root or args.labels_csv.parent
        collected = from_labels_csv(
            args.labels_csv,
            root,
            path_column=args.path_column,
            patient_column=args.patient_column or None,
            study_column=args.study_column,
            images_root=args.images_root,
            **finding,
        )
    else:
        raise ConfigError("no source: give --from-folders, --labels-csv, --dicom-tree or --from-npz")

    records = collected.records
    if not args.from_npz:  # .npz files keep their official split
        group = "study_id" if args.group == "study" else "patient_id"
        records = with_splits(records, val=args.val, test=args.test, seed=args.seed, group=group)
    findings = [k for k in records[0] if k.startswith("finding:")] if records else []
    classes = [k.removeprefix("finding:") for k in findings] or sorted({str(r["label"]) for r in records})
    task = "multilabel" if findings else "multiclass"
    try:  # a bad --positive-class is refused before anything is written
        positive = positive_class(classes, args.positive_class, task=task)
    except ConfigError:
        if args.positive_class is not None:
            raise
        positive = None  # undecided: train asks for --positive-class
    write_manifest(args.out, records)
    write_meta(args.out, data_root=Path(root), classes=classes, positive=positive)
    _print_skipped(collected.skipped)
    _print_summary(records, title=f"{args.out} ({len(records)} images, paths relative to {root})")
    if positive is not None:
        print(f"positive class: {positive} (recorded in {args.out.stem}.meta.json)")
    elif task == "multiclass" and len(classes) == 2:
        print(
            f"warning: which of {', '.join(classes)} is positive? the names do not tell; give "
            "--positive-class NAME here (or to train)",
            file=sys.stderr,
        )
    for w in data_warnings(load_manifest(args.out, root)):
        print(f"warning: {w}", file=sys.stderr)
    return ExitCode.OK


def _check(args: argparse.Namespace) -> ExitCode:
    from medclass.manifest import check_files, check_manifest, data_warnings, load_manifest

    manifest = load_manifest(args.manifest, args.data_root, allow_outside_root=args.allow_outside_root)
    check_files(manifest, warn=False)  # a wrong data root is one error, not a problem per line
    report = check_manifest(manifest, classes=args.classes, hash_content=not args.no_hash, group=args.group)
    for w in data_warnings(manifest):
        print(f"{manifest.path}: warning: {w}", file=sys.stderr)
    if not report.ok:
        print(
            f"{manifest.path}: {len(report.problems)} problem(s) (data root {manifest.data_root})",
            file=sys.stderr,
        )
        for p in report.problems[: args.max_problems]:
            print(f"  {manifest.path}: {p}", file=sys.stderr)
        if len(report.problems) > args.max_problems:
            print(f"  ... and {len(report.problems) - args.max_problems} more", file=sys.stderr)
        return ExitCode.ERROR
    from medclass.manifest import row_to_record

    _print_summary(
        [row_to_record(r) for r in manifest.rows],
        title=f"{manifest.path}: OK ({len(manifest)} images, {manifest.task}, "
        f"{report.files_hashed} same-size files hashed, sha256 {manifest.sha256[:12]})",
    )
    print(f"data root: {manifest.data_root} ({manifest.root_source})")
    if manifest.positive_class is not None:
        print(f"positive class: {manifest.positive_class} (recorded)")
    return ExitCode.OK


def _print_skipped(skipped: list[tuple[str, str]], limit: int = 20) -> None:
    if not skipped:
        return
    print(f"left out {len(skipped)} file(s):", file=sys.stderr)
    for path, reason in skipped[:limit]:
        print(f"  {path}: {reason}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more", file=sys.stderr)


def _print_summary(records: list[dict[str, Any]], title: str) -> None:
    """Images per class × split (positives per finding for multi-label), and patients per split."""
    from rich.console import Console
    from rich.table import Table

    from medclass.manifest import FINDING_PREFIX, SPLITS

    findings = sorted({k for r in records for k in r if k.startswith(FINDING_PREFIX)})
    classes = findings or sorted({str(r["label"]) for r in records})
    counts = {c: dict.fromkeys(SPLITS, 0) for c in classes}
    patients: dict[str, set[str]] = {s: set() for s in SPLITS}
    images = dict.fromkeys(SPLITS, 0)
    for r in records:
        s = r["split"]
        images[s] += 1
        patients[s].add(str(r["patient_id"]))
        if findings:
            for f in findings:
                counts[f][s] += int(r[f])
        else:
            counts[str(r["label"])][s] += 1
    table = Table()
    table.add_column("positives" if findings else "class")
    for s in (*SPLITS, "total"):
        table.add_column(s, justify="right")
    for c in classes:
        row = [counts[c][s] for s in SPLITS]
        table.add_row(c, *map(str, row), str(sum(row)))
    table.add_section()
    table.add_row("images", *(str(images[s]) for s in SPLITS), str(sum(images.values())))
    table.add_row(
        "patients", *(str(len(patients[s])) for s in SPLITS), str(len(set().union(*patients.values())))
    )
    console = Console(width=120)
    console.print(title, highlight=False, soft_wrap=True)
    console.print(table)
