"""``medclass profile``: add the input gate's training-data profile to an existing checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from medclass.cli import ExitCode
from medclass.names import DEVICE_NAMES

HELP = "add the input gate's training-data profile to a checkpoint (trained before the gate existed)"
DESCRIPTION = """\
Run the checkpoint over the 'train' rows of a manifest (the ones it was trained on) and its 'val' rows,
and store in its sidecar what they looked like: modalities, photometric interpretations, body parts, view
positions, size and pixel-spacing ranges, intensity statistics and the average layout after
preprocessing, and a Mahalanobis model of the pooled penultimate features with its threshold at the 99th
percentile of the validation images. score, explain and evaluate then gate every image (--gate). The
weights are not touched; the sidecar is replaced atomically and sealed again. `medclass train` does this
for its 'best' checkpoint by itself (unless --no-profile).

Examples:
  medclass profile --checkpoint runs/r1/best --manifest data_manifests/kermany_cxr.csv --data-root ../shared/data
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint stem (or run folder)")
    parser.add_argument("--manifest", type=Path, required=True, help="the manifest the model was trained on")
    parser.add_argument("--data-root", type=Path, help="folder the manifest's paths are relative to")
    parser.add_argument(
        "--allow-outside-root", action="store_true", help="accept manifest paths that leave the data root"
    )
    parser.add_argument("--device", choices=DEVICE_NAMES, default="auto", help="auto: CUDA when present")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, help="decoding processes (default min(2, cpus))")


def run(args: argparse.Namespace) -> ExitCode:
    from medclass.score.backends import pick_device
    from medclass.train.profiling import profile_from_manifest

    path = profile_from_manifest(
        args.checkpoint, args.manifest, data_root=args.data_root, allow_outside_root=args.allow_outside_root,
        device=pick_device(args.device), batch_size=args.batch_size, workers=args.workers,
    )  # fmt: skip
    print(f"input-gate profile written to {path}")
    return ExitCode.OK
