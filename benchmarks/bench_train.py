"""Training throughput: medclass's step loop vs a bare timm training loop, same batch, same machine.

Both train Inception V3 with its aux head (loss = main + 0.4 × aux, AdamW) on identical in-memory random
tensors. medclass runs its real code path (``medclass.train.steps.StepRunner`` with the model from
``medclass.model.create_model``, ``apply_mode('full')``, its optimizer/scheduler builders, label
smoothing, gradient clipping and augmentation as ``medclass train`` uses them); the bare loop is what a
timm user would write. Each (implementation, precision) measurement runs in its own process so that
its peak RSS is its own; measurements are interleaved (medclass, bare, medclass, bare, ...) and
summarised by medians of per-step throughput.

    .venv/bin/python benchmarks/bench_train.py --steps 4 --batch-size 16 --image-size 299
    .venv/bin/python benchmarks/bench_train.py --device cuda --batch-size 64 --steps 20

Writes ``benchmarks/results/train-<time>.json`` and prints a table with the medclass/bare ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "8589934592"}


def _batch(batch_size: int, image_size: int, num_classes: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=g)  # B×3×S×S
    y = torch.randint(0, num_classes, (batch_size,), generator=g)
    return x, y


def _medclass_step_fn(args, device, precision):
    import torch

    from medclass.model import apply_mode, create_model, to_device
    from medclass.train.augment import build_augment
    from medclass.train.config import TrainConfig
    from medclass.train.loop import build_optimizer, lr_lambda
    from medclass.train.objective import InceptionLoss
    from medclass.train.setup import backbone_lr_scale
    from medclass.train.steps import StepRunner

    cfg = TrainConfig(manifest="-", out="-", lr=1e-3, precision=precision, image_size=args.image_size)
    model = create_model(2, aux_logits=True, image_size=args.image_size)
    groups = apply_mode(model, "full", backbone_lr_scale=backbone_lr_scale(cfg))
    to_device(model, device, channels_last=True)
    opt = build_optimizer(cfg, groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(10_000, 100, cfg.min_lr_ratio))
    loss = InceptionLoss("multiclass", aux_weight=0.4, label_smoothing=cfg.label_smoothing).to(device)
    aug = build_augment(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) if args.augment else None
    runner = StepRunner(
        model,
        opt,
        loss,
        device=device,
        scheduler=sched,
        precision=precision,
        channels_last=True,
        grad_clip=cfg.grad_clip,
        augment=aug,
    )
    gen = torch.Generator().manual_seed(0)

    def step(x, y):
        runner.run([(x, y)], gen)

    return step


def _bare_step_fn(args, device, precision):
    import timm
    import torch
    import torch.nn.functional as F

    model = timm.create_model("inception_v3", pretrained=False, num_classes=2, aux_logits=True)
    if args.image_size < 299:  # the stock aux head needs ≥ 299 px: use the adapted one (same layers)
        from medclass.model import AdaptiveInceptionAux

        model.AuxLogits = AdaptiveInceptionAux.from_aux(model.AuxLogits)
    model.to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x, y):
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        y = y.to(device)
        opt.zero_grad(set_to_none=True)
        if precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                main, aux = model(x)
        else:
            main, aux = model(x)
        loss = F.cross_entropy(main.float(), y) + 0.4 * F.cross_entropy(aux.float(), y)
        loss.backward()
        opt.step()
        float(loss)  # one sync per step, as a loop that logs its loss does

    return step


def measure(args) -> dict:
    """One process: warm up, time ``args.steps`` steps of one implementation; returns a result dict."""
    import resource

    import torch

    from medclass.train.distributed import pick_device

    device = pick_device(args.device)
    torch.manual_seed(0)
    impl, precision = args.worker.split(",")
    build = _medclass_step_fn if impl == "medclass" else _bare_step_fn
    step = build(args, device, precision)
    x, y = _batch(args.batch_size, args.image_size, 2, seed=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step(x, y)
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    out = {
        "impl": impl,
        "precision": precision,
        "step_seconds": times,
        "img_per_s": args.batch_size / statistics.median(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=299)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds (medians over all steps)")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="medclass side applies its default augmentation (as `medclass train` does)",
    )
    p.add_argument(
        "--malloc-tuning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="set MALLOC_MMAP/TRIM thresholds for both (PERF-NOTES)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="JSON file (default benchmarks/results/train-<time>.json)"
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return 0

    env = dict(os.environ)
    if args.malloc_tuning:
        env.update(MALLOC_ENV)
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    runs: list[dict] = []
    base = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        "--image-size",
        str(args.image_size),
        "--device",
        args.device,
        "--augment" if args.augment else "--no-augment",
    ]
    for r in range(args.repeats):
        for prec in precisions:
            order = ("medclass", "bare") if r % 2 == 0 else ("bare", "medclass")
            for impl in order:
                proc = subprocess.run(
                    [*base, "--worker", f"{impl},{prec}"], capture_output=True, text=True, env=env
                )
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.stderr.write(proc.stderr[-3000:])
                    raise SystemExit(f"measurement {impl},{prec} failed (exit {proc.returncode})")
                res = json.loads(line[7:])
                res["round"] = r
                runs.append(res)
                print(
                    f"round {r} {prec:5s} {impl:9s} {res['img_per_s']:7.2f} img/s  "
                    f"peak RSS {res['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
    summary = {}
    for prec in precisions:
        row = {}
        for impl in ("medclass", "bare"):
            steps = [
                t for x in runs if x["impl"] == impl and x["precision"] == prec for t in x["step_seconds"]
            ]
            row[impl] = {
                "img_per_s_median": args.batch_size / statistics.median(steps),
                "peak_rss_mib": max(
                    x["peak_rss_mib"] for x in runs if x["impl"] == impl and x["precision"] == prec
                ),
            }
        row["ratio"] = row["medclass"]["img_per_s_median"] / row["bare"]["img_per_s_median"]
        summary[prec] = row
    print(
        f"\n{'precision':9s} {'medclass':>10s} {'bare':>10s} {'ratio':>7s}   peak RSS medclass / bare (MiB)"
    )
    for prec, row in summary.items():
        print(
            f"{prec:9s} {row['medclass']['img_per_s_median']:10.2f} {row['bare']['img_per_s_median']:10.2f} "
            f"{row['ratio']:7.3f}   {row['medclass']['peak_rss_mib']:.0f} / {row['bare']['peak_rss_mib']:.0f}"
        )
    out = args.out or HERE / "results" / f"train-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "train",
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "summary": summary,
        "runs": runs,
    }
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
