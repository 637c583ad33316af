"""int8 against fp32 for a trained checkpoint: accuracy on a held-out split, and forward speed.

``medclass export --quantize int8`` calibrates on the validation split and its guard compares the two
graphs on those same images; this benchmark measures what a user cares about afterwards, on the *test*
split the calibration never saw: AUC of each graph (the positive class; DeLong CI of the fp32 one), the
AUC change, the largest and mean |Δprob| (calibrated, as scoring reports them), how many test decisions
flip at the checkpoint's operating point (0.5 without one), and images/s of each graph on the preprocessed
test images (batch ``--batch-size``, onnxruntime, same threads, interleaved repeats).

    .venv/bin/python benchmarks/bench_int8.py --checkpoint runs/pmnist128/best \\
        --manifest data_manifests/pneumoniamnist.csv --data-root ../shared/data

Target (issue #16): int8 vs fp32 ΔAUC ≤ 0.002 on the test split. Writes ``benchmarks/results/int8-<time>.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import environment, environment_line, table, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--split", default="test", help="the held-out split to measure on")
    ap.add_argument("--calibration-images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per graph (interleaved)")
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from medclass import checkpoint, quantize
    from medclass.calibrate import from_meta
    from medclass.export import Int8Options, export_onnx
    from medclass.metrics.delong import compare, delong_auc
    from medclass.score.decide import DecisionRule

    tmp = Path(tempfile.mkdtemp(prefix="bench_int8."))
    ck = checkpoint.load(args.checkpoint)
    fp32_path, int8_path = tmp / "fp32.onnx", tmp / "int8.onnx"
    export_onnx(args.checkpoint, fp32_path)
    start = time.perf_counter()
    int8 = export_onnx(
        args.checkpoint,
        int8_path,
        int8=Int8Options(args.manifest, "val", args.data_root, args.calibration_images, force=True),
    )
    export_s = time.perf_counter() - start
    x, y = quantize.calibration_inputs(
        args.checkpoint, args.manifest, args.split, args.data_root, limit=10**9
    )
    positive = quantize.positive_index(ck.meta, ck.meta["classes"])
    held_out = quantize.guard(
        fp32_path.read_bytes(), int8_path.read_bytes(), x, y, task=ck.task, positive=positive,
        calibration=from_meta(ck.meta),
    )  # fmt: skip

    # decisions at the checkpoint's operating point (or arg-max), fp32 vs int8
    from medclass.model.predictor import OnnxPredictor

    cal = from_meta(ck.meta)
    rule = DecisionRule.from_meta(ck.meta)
    p32 = OnnxPredictor(fp32_path, ck.task, calibration=cal)(x)
    p8 = OnnxPredictor(int8_path, ck.task, calibration=cal)(x)
    flips = int(sum(a != b for a, b in zip(rule.predict(p32), rule.predict(p8), strict=True)))
    truth = (y == positive).astype(int)
    ci = delong_auc(truth, p32[:, positive])
    paired = compare(truth, p32[:, positive], p8[:, positive])

    threads = torch.get_num_threads()
    sessions = {}
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    batch = x[: args.batch_size]
    rates: dict[str, list[float]] = {"fp32": [], "int8": []}
    for s in sessions.values():
        s.run(None, {"image": batch})  # warm-up
    for _ in range(args.repeats):
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"image": batch})
            rates[name].append(len(batch) / (time.perf_counter() - t))
    med = {k: float(np.median(v)) for k, v in rates.items()}

    info = environment()
    print(environment_line(info))
    g = held_out
    print(f"{args.checkpoint}: {len(x)} {args.split} images at {x.shape[-1]} px; int8 calibrated on "
          f"{int8.meta['quantization']['guard']['images']} val images in {export_s:.0f} s")  # fmt: skip
    print("export's guard (val): " + quantize.describe(int8.meta["quantization"]))
    rows = [
        ["AUC fp32", f"{g['auc_fp32']:.4f}", f"DeLong 95% CI [{ci.ci_low:.4f}, {ci.ci_high:.4f}]"],
        ["AUC int8", f"{g['auc_int8']:.4f}", ""],
        [
            "AUC drop (fp32 − int8)",
            f"{g['auc_drop']:+.4f}",
            f"target ≤ 0.002; paired DeLong CI [{paired.diff_ci_low:+.4f}, {paired.diff_ci_high:+.4f}]",
        ],
        ["max |Δprob|", f"{g['max_abs_prob_diff']:.4f}", "guard limit 0.05 (on val)"],
        ["mean |Δprob|", f"{g['mean_abs_prob_diff']:.4f}", ""],
        ["decisions that flip", f"{flips} / {len(x)}", rule.name],
        ["fp32 forward img/s", f"{med['fp32']:.1f}", f"onnxruntime, {threads} threads, batch {len(batch)}"],
        ["int8 forward img/s", f"{med['int8']:.1f}", f"{med['int8'] / med['fp32']:.2f}× fp32"],
    ]
    print(table(rows, ["measure", "value", "note"]))
    path = write_results(
        "int8",
        {
            "environment": info,
            "settings": {k: str(v) for k, v in vars(args).items()},
            "held_out": held_out,
            "auc_fp32_delong_ci": [ci.ci_low, ci.ci_high],
            "paired_delong_diff_ci": [paired.diff_ci_low, paired.diff_ci_high],
            "flips": flips,
            "n": len(x),
            "export_guard": int8.meta["quantization"],
            "forward_images_per_s": rates,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
