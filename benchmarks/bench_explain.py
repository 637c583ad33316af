"""Saliency maps per second: medclass's batched Explainer against a per-image pytorch-grad-cam loop.

    .venv/bin/python benchmarks/bench_explain.py [--n 16] [--batch-size 8] [--repeat 3] [--layer Mixed_7c]

- **Images**: the first ``--n`` Kermany chest radiographs (``../shared/data/kermany_cxr_pneumonia_fullres``,
  read with ``medclass.ingest`` and preprocessed at 299 with ``Preprocessor(input_spec())``), or random
  normalised inputs with ``--synthetic`` (or when the data are absent).
- **Model**: ``create_model(2)`` (random init, no download) with BatchNorm statistics measured on the
  images, so activations and maps look like a trained model's rather than random-init's 1e10 logits.
- **grad-cam loop** (baseline): ``GradCAM(model=MainLogits(model), target_layers=[layer])`` called once
  per image with ``targets=None`` (default settings: the predicted class; gradients for every weight).
- **medclass**: ``Explainer(model, layer=..., batch_size=B).explain(images)`` (gradients only from the
  logits down to the target layer, ``--batch-size`` images per pass).
- Interleaved repetitions (ABBA), medians. Map agreement: relative L2 per map, max over images, against
  the loop (batch 1) and against plain grad-cam at the same batch size (which isolates the gradient gate
  from the convolutions' batch-size-dependent summation order).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment_line, interleaved, table, write_results

REPO = Path(__file__).resolve().parents[1]
KERMANY = REPO.parent / "shared" / "data" / "kermany_cxr_pneumonia_fullres" / "images"


def load_images(n: int, synthetic: bool) -> tuple[torch.Tensor, str]:
    from medclass import ingest
    from medclass.preprocess import Preprocessor, input_spec

    files = sorted(KERMANY.rglob("*.jpeg"))[:n] if KERMANY.is_dir() and not synthetic else []
    if len(files) < n:
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, 3, 299, 299, generator=g), "random normalised inputs"
    prep = Preprocessor(input_spec())
    arrays = [prep(ingest.read(f)[0]).array for f in files]
    return torch.from_numpy(np.stack(arrays)), f"{n} Kermany JPEGs preprocessed at 299"


def calibrated_model(images: torch.Tensor) -> torch.nn.Module:
    from medclass.model import MainLogits, create_model

    torch.manual_seed(0)
    model = create_model(2)
    for bn in model.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None
    model.train()
    with torch.no_grad():
        MainLogits(model)(images[:8])
    return model.eval()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="images")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--layer", default="Mixed_7c")
    ap.add_argument("--synthetic", action="store_true", help="random inputs instead of Kermany")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pytorch_grad_cam import GradCAM

    from medclass.explain import Explainer
    from medclass.model import MainLogits

    images, what = load_images(args.n, args.synthetic)
    model = calibrated_model(images)
    layer = getattr(model, args.layer)
    print(environment_line())
    print(f"{what}; Inception V3 random init, calibrated BatchNorm; layer {args.layer}")

    def loop() -> np.ndarray:
        cam = GradCAM(model=MainLogits(model), target_layers=[layer])
        try:
            return np.concatenate(
                [cam(input_tensor=images[i : i + 1], targets=None) for i in range(len(images))]
            )
        finally:
            cam.activations_and_grads.release()

    explainer = Explainer(model, layer=args.layer, batch_size=args.batch_size)

    def ours() -> np.ndarray:
        return explainer.explain(images).maps

    plain_batched = Explainer(model, layer=args.layer, batch_size=args.batch_size, fast=False)
    ref_loop, ref_ours, ref_plain = loop(), ours(), plain_batched.explain(images).maps  # warm-up + maps
    timings = interleaved(
        {"grad-cam loop (batch 1)": loop, f"medclass Explainer (batch {args.batch_size})": ours}, args.repeat
    )
    rows, rates = [], {}
    for name, t in timings.items():
        rates[name] = len(images) / t.median
        lo, hi = t.spread
        rows.append(
            [name, f"{rates[name]:.2f}", f"{1000 * t.median / len(images):.0f}", f"{lo:.1f}–{hi:.1f}"]
        )
    print(table(rows, ["variant", "maps/s", "ms/map", "pass s (min–max)"]))
    base, fast = rates.values()
    vs_loop = max(rel(a, b) for a, b in zip(ref_ours, ref_loop, strict=True))
    vs_plain = max(rel(a, b) for a, b in zip(ref_ours, ref_plain, strict=True))
    print(f"speed-up {fast / base:.2f}× (target ≥ 2×)")
    print(
        f"max relative L2 of maps: vs the grad-cam loop {vs_loop:.2e}; vs plain grad-cam at the same batch {vs_plain:.2e}"
    )
    path = write_results(
        "bench_explain",
        {
            "images": what,
            "layer": args.layer,
            "batch_size": args.batch_size,
            "maps_per_s": rates,
            "speedup": fast / base,
            "max_rel_l2_vs_loop": vs_loop,
            "max_rel_l2_vs_plain_same_batch": vs_plain,
            "seconds": {k: v.seconds for k, v in timings.items()},
        },
    )
    print(f"results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
