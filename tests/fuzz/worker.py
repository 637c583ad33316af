"""Fuzz worker: reads one file per request with ``medclass.ingest.read`` and says what happened.

Started by :class:`fuzzlib.Worker`; not meant to be run by hand. stdin: ``{"path": ...}`` lines;
stdout: one JSON :class:`fuzzlib.Result` per request (first line ``{"ready": true}``).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import tracemalloc

import numpy as np


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _check(images) -> tuple[str, str, list]:
    shapes = []
    for im in images:
        px = im.pixels
        shapes.append(list(px.shape))
        if not isinstance(px, np.ndarray) or px.dtype != np.float32:
            return "bad-image", "dtype", shapes
        if not (px.ndim == 2 or (px.ndim == 3 and px.shape[2] == 3)):
            return "bad-image", "shape", shapes
        if min(px.shape[:2]) < 1 or max(px.shape[:2]) > 65535:
            return "bad-image", "shape", shapes
        if not np.isfinite(px).all():
            return "bad-image", "non-finite", shapes
    if not images:
        return "bad-image", "no-images", shapes
    return "ok", "", shapes[:4]


def main() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a native abort must not spend seconds dumping core
    limit = int(os.environ.get("FUZZ_AS_LIMIT", "0"))
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    timeout = int(os.environ.get("FUZZ_CASE_TIMEOUT", "10"))
    from medclass import ingest
    from medclass.errors import MedclassError

    signal.signal(signal.SIGALRM, _alarm)
    hooks = os.environ.get("FUZZ_TEST_HOOKS") == "1"  # lets the harness test its crash detection
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    tracemalloc.start()
    for line in sys.stdin:
        path = json.loads(line)["path"]
        if hooks and path.endswith("__abort__"):
            os.abort()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        res: dict = {"outcome": "ok", "kind": "", "message": ""}
        images = None
        try:
            signal.alarm(timeout)
            try:
                images = ingest.read(path)
            finally:
                signal.alarm(0)
            res["outcome"], res["kind"], res["shapes"] = _check(images)
        except _Timeout:
            res.update(outcome="timeout", kind="alarm", message=f"over {timeout}s")
        except MedclassError as exc:
            msg = str(exc)
            res.update(outcome="medclass", kind=exc.kind, message=msg[:300])
            if "\n" in msg or os.path.basename(path) not in msg:
                res.update(outcome="other", kind=f"bad-message:{exc.kind}")
        except MemoryError as exc:
            res.update(outcome="memory", kind="MemoryError", message=str(exc)[:300])
        except Exception as exc:  # a finding
            res.update(
                outcome="other", kind=type(exc).__qualname__, message=f"{type(exc).__module__}: {exc}"[:300]
            )
        res["seconds"] = round(time.perf_counter() - t0, 4)
        _, peak = tracemalloc.get_traced_memory()
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
        res["rss_growth_kb"] = int(grew)
        res["alloc_peak_kb"] = int(peak // 1024)
        del images
        out.write(json.dumps(res) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
