"""Long mutation-fuzzing run of ``medclass.ingest.read`` (seeded random; see README.md).

    python tests/fuzz/run_long.py --cases 20000 --seed 1 [--formats dicom,nifti] [--as-limit-gib 2]

Prints a tally every ``--every`` cases and at the end; inputs that gave a forbidden outcome (another
exception, bad image, timeout, hang, crash, MemoryError, RSS blow-up) are saved under
``--findings`` (default ``$FUZZ_FINDINGS`` or ``<tmp>/medclass-fuzz-findings``) with the outcome in the file name. Exit code 1 if there was any finding.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzzlib as F


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formats", default="dicom,nifti,png,jpeg")
    ap.add_argument("--max-mutations", type=int, default=4)
    ap.add_argument("--every", type=int, default=500, help="print the tally every N cases")
    ap.add_argument("--case-timeout", type=int, default=F.CASE_TIMEOUT_S)
    ap.add_argument("--as-limit-gib", type=float, default=None,
                    help="RLIMIT_AS of the worker (default 6); lower it to see transient allocations fail")  # fmt: skip
    ap.add_argument(
        "--findings", type=Path, default=F.findings_dir(), help="default: $FUZZ_FINDINGS or a temp folder"
    )
    args = ap.parse_args(argv)
    if args.as_limit_gib:
        F.WORKER_AS_LIMIT = int(args.as_limit_gib * 2**30)
    formats = set(args.formats.split(","))
    seeds = [s for s in F.seed_corpus() if s.fmt in formats]
    if not seeds:
        print("no seeds for", formats, file=sys.stderr)
        return 2
    rnd = random.Random(args.seed)
    worker = F.Worker(case_timeout=args.case_timeout, hard_timeout=args.case_timeout + 15)
    tally = F.Tally()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="medclass-fuzz-") as tmp:
        try:
            for i in range(args.cases):
                seed = rnd.choice(seeds)
                names = rnd.choices(sorted(F.mutators_for(seed.fmt)), k=rnd.randint(1, args.max_mutations))
                case_seed = rnd.randrange(2**31)
                data = F.mutate(seed, names, case_seed)
                f = Path(tmp) / (f"case_{seed.name}" if rnd.random() < 0.8 else "case")
                f.write_bytes(data)
                res = worker.run(f)
                cid = f"{seed.name} {names} seed={case_seed} as={f.name}"
                tally.add(cid, res)
                if not res.allowed or res.rss_growth_kb > F.MAX_RSS_GROWTH_KB:
                    args.findings.mkdir(parents=True, exist_ok=True)
                    keep = args.findings / f"{res.outcome}-{res.kind}-{seed.name}-{case_seed}".replace(
                        "/", "_"
                    )
                    keep.write_bytes(data)
                    print(
                        f"FINDING {cid}: {res.outcome} {res.kind} {res.message[:200]} -> {keep}", flush=True
                    )
                if (i + 1) % args.every == 0:
                    print(f"--- {i + 1} cases, {time.time() - t0:.0f} s\n{tally.summary()}", flush=True)
        finally:
            worker.close()
    print(f"=== done: {time.time() - t0:.0f} s, worker restarts {worker.restarts}\n{tally.summary()}")
    return 1 if tally.findings else 0


if __name__ == "__main__":
    sys.exit(main())
