"""``medclass export``: a checkpoint → ONNX (main logits, dynamic batch; fp32 or int8) + a JSON sidecar."""

from __future__ import annotations

import argparse
from pathlib import Path

from medclass.cli import ExitCode
from medclass.names import QUANTIZE_NAMES
from medclass.quantize import DEFAULT_IMAGES, MAX_AUC_DROP, MAX_PROB_DIFF, QUANTIZERS

HELP = "export a checkpoint to ONNX, fp32 or int8 (for medclass score --backend onnxruntime)"
DESCRIPTION = f"""\
Export the checkpoint's main head (the aux head is left out) to ONNX with a dynamic batch axis:
input 'image' N×3×S×S (preprocessed as the sidecar's 'input' says), output 'logits' N×C. A sidecar
<out>.json records classes, task, input spec, window, fit, operating point, calibration, the weights'
sha256 and the .onnx file's own sha256 (scoring refuses a .onnx that does not match it). The fp32 graph is
checked against torch on a random batch (max |dlogit| / max(1, max |logit|) <= 1e-4) before anything is
written; while the two files are replaced, the previous export is kept as <out stem>.prev.onnx (+ .json).

--quantize int8 writes an int8 graph instead (QDQ, run by onnxruntime), its activation ranges measured on
real images (--calibration MANIFEST --split val); by default both NNCF's and onnxruntime's post-training
quantizers run and the one the guard prefers is kept (--quantizer). About 1.6-2x faster than fp32 on a
CPU with VNNI/AMX. Accuracy guard: int8 and fp32 are compared on those images
and the export is refused when the AUC drops by more than {MAX_AUC_DROP} or any probability moves by more
than {MAX_PROB_DIFF} (--force keeps it anyway, marked as forced). The figures go into the sidecar's 'quantization' and
medclass score prints them. Calibrate on validation images, never on the test split you report.

Examples:
  medclass export --checkpoint runs/r1/best --out model.onnx
  medclass export --checkpoint runs/r1/best --out model.int8.onnx --quantize int8 \\
      --calibration data_manifests/mine.csv --data-root data/
  medclass score --backend onnxruntime --onnx model.int8.onnx scans/ --out scores.csv
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint stem (or .json/.safetensors)"
    )
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    q = parser.add_argument_group("int8 quantization")
    q.add_argument("--quantize", choices=QUANTIZE_NAMES, help="write an int8 graph (needs --calibration)")
    q.add_argument("--calibration", type=Path, metavar="MANIFEST", help="manifest of the calibration images")
    q.add_argument("--split", default="val", help="the manifest's split to calibrate on")
    q.add_argument("--data-root", type=Path, help="folder the manifest's paths are relative to")
    q.add_argument(
        "--allow-outside-root", action="store_true", help="accept manifest paths that leave the data root"
    )
    q.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_IMAGES,
        metavar="N",
        help="images used at most",
    )
    q.add_argument(
        "--quantizer",
        choices=("auto", *QUANTIZERS),
        default="auto",
        help="auto: run each and keep the one the guard prefers (neither wins on every model)",
    )
    q.add_argument("--force", action="store_true", help="keep an int8 model the accuracy guard refuses")


def run(args: argparse.Namespace) -> ExitCode:
    from medclass.errors import ConfigError
    from medclass.export import Int8Options, export_onnx
    from medclass.quantize import describe

    int8 = None
    if args.quantize:
        if args.calibration is None:
            raise ConfigError(
                "--quantize int8 needs --calibration MANIFEST (real images to measure ranges on)"
            )
        if args.calibration_images < 1:
            raise ConfigError("--calibration-images must be at least 1")
        int8 = Int8Options(
            args.calibration, args.split, args.data_root, args.calibration_images, args.force,
            args.allow_outside_root, args.quantizer,
        )  # fmt: skip
    elif args.calibration is not None or args.force:
        raise ConfigError("--calibration and --force go with --quantize int8")
    result = export_onnx(args.checkpoint, args.out, opset=args.opset, int8=int8)
    rel = result.meta.get("parity_max_rel_logit_diff")
    diff = (
        "not checked"
        if result.max_abs_logit_diff is None
        else f"{result.max_abs_logit_diff:.1e} (relative {rel:.1e})"
    )
    print(f"exported {result.path} (+ {result.sidecar.name}); fp32 graph's max |Δlogit| vs torch: {diff}")
    if "quantization" in result.meta:
        print(describe(result.meta["quantization"]))
    return ExitCode.OK
