"""``medclass score --engine ray`` against the in-process engine on the same inputs: the cost of Ray.

Same inputs as ``bench_score.py`` (Kermany radiographs and 2D DICOM samples, linked to ``--n`` items),
same checkpoint (random Inception V3 at ``--size`` px), same settings (fp32, ``--batch-size``); each
variant is one whole :func:`medclass.score.run_scoring` (checkpoint load, input expansion, scoring,
merge, study summary) into a fresh output:

- **local**: the default engine: decode worker processes overlapped with the model in this process;
- **ray (warm)**: ``--engine ray`` on a Ray instance that is already up (started once by this script, as a
  long-lived cluster would be): tasks and actors are scheduled, the actor loads the checkpoint, every
  block goes through the object store and is committed as a part file, the parts are merged;
- **ray (cold)**: ``--engine ray`` without a cluster, once: the Ray instance is started and stopped by the
  run (what a one-off command on a laptop pays).

``local`` and ``ray (warm)`` alternate ``--repeat`` times (local, ray, ray, local, …); medians are compared.
Goal: ray (warm) ≥ 0.85× local.

    .venv/bin/python benchmarks/bench_score_ray.py --n 96 --repeat 2
    .venv/bin/python benchmarks/bench_score_ray.py --n 512 --ray-address HEAD:6379 --actors 4  # a cluster

Writes ``benchmarks/results/score_ray-<time>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import environment, environment_line, table, write_results  # noqa: E402
from bench_score import build_inputs, make_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="items to score (real files repeated)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--repeat", type=int, default=2, help="alternating local / ray (warm) runs")
    ap.add_argument("--inputs", choices=("mixed", "jpeg", "dicom"), default="mixed")
    ap.add_argument("--ray-address", help="a running cluster (default: a Ray instance on this machine)")
    ap.add_argument("--actors", type=int, help="model actors (default: medclass's)")
    ap.add_argument("--no-cold", action="store_true", help="skip the run that starts Ray itself")
    args = ap.parse_args()

    import logging

    from medclass.runtime import tune_cpu_malloc
    from medclass.score import ScoreConfig, run_scoring
    from medclass.score.ray_engine import connect

    logging.basicConfig(level=logging.WARNING)
    tune_cpu_malloc()
    tmp = Path(tempfile.mkdtemp(prefix="bench_score_ray_"))
    (tmp / "in").mkdir()
    build_inputs(tmp / "in", args.n, args.inputs)
    stem = make_checkpoint(tmp / "ck", args.size)
    base = ScoreConfig([tmp / "in"], tmp / "x.csv", checkpoint=stem, batch_size=args.batch_size)
    runs = 0

    def score(engine: str) -> float:
        nonlocal runs
        runs += 1
        cfg = dataclasses.replace(base, out=tmp / f"{engine}{runs}.csv", engine=engine)
        if engine == "ray":
            cfg = dataclasses.replace(cfg, ray_address=args.ray_address, actors=args.actors)
        t = time.perf_counter()
        report = run_scoring(cfg)
        elapsed = time.perf_counter() - t
        assert report.counts.scored + report.counts.failed == args.n, report.counts
        return elapsed

    info = environment()
    print(environment_line(info))
    cold = None if args.no_cold or args.ray_address else score("ray")
    started = connect(args.ray_address)  # the warm instance for the alternating runs
    times: dict[str, list[float]] = {"local": [], "ray": []}
    try:
        for i in range(args.repeat):
            for engine in ("local", "ray") if i % 2 == 0 else ("ray", "local"):
                times[engine].append(score(engine))
                print(f"  {engine}: {args.n / times[engine][-1]:.2f} img/s", flush=True)
    finally:
        if started:
            import ray

            ray.shutdown()

    def median(xs: list[float]) -> float:
        s = sorted(xs)
        return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2

    local_rate = args.n / median(times["local"])
    ray_rate = args.n / median(times["ray"])
    rows = [
        ["local (in-process)", f"{local_rate:.2f}", "1.00", f"{median(times['local']):.1f}"],
        ["ray (warm)", f"{ray_rate:.2f}", f"{ray_rate / local_rate:.2f}", f"{median(times['ray']):.1f}"],
    ]
    if cold is not None:
        rows.append(["ray (cold: starts Ray)", f"{args.n / cold:.2f}", f"{args.n / cold / local_rate:.2f}",
                     f"{cold:.1f}"])  # fmt: skip
    print(table(rows, ["variant", "img/s", "× local", "seconds"]))
    path = write_results(
        "score_ray",
        {
            "environment": info,
            "settings": vars(args) | {"cpus": os.cpu_count()},
            "seconds": times | {"ray_cold": cold},
            "img_per_s": {"local": local_rate, "ray_warm": ray_rate},
            "ratio_ray_warm_to_local": ray_rate / local_rate,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
