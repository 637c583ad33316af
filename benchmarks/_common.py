"""Helpers shared by the benchmarks: timing with medians, peak memory, environment line, results JSON.

Benchmarks compare variants *in the same run*, interleaved (A B B A ...), and report medians; absolute
numbers depend on the machine, ratios much less. Results go to ``benchmarks/results/`` (git-ignored).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Timing:
    """Seconds per repetition; ``median`` and ``spread`` (min–max) summarise them."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.seconds), max(self.seconds)) if self.seconds else (float("nan"), float("nan"))


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` once; returns (seconds, result)."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleaved(variants: dict[str, Callable[[], Any]], repeat: int) -> dict[str, Timing]:
    """Time each variant ``repeat`` times, alternating the order every round (ABBA...) to cancel drift."""
    names = list(variants)
    timings = {name: Timing() for name in names}
    for r in range(repeat):
        for name in names if r % 2 == 0 else reversed(names):
            seconds, _ = time_call(variants[name])
            timings[name].seconds.append(seconds)
    return timings


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float | None:
    """Current resident memory of this process in MiB (Linux), else None."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mib() -> float | None:
    """Peak resident memory of this process in MiB since start or the last :func:`reset_peak_rss`."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0: write 5 to clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def environment() -> dict[str, Any]:
    """Machine and library versions, for the results file and the one-line header."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    for module in ("numpy", "torch", "timm", "monai", "pydicom", "medclass"):
        mod = sys.modules.get(module)
        if mod is None:
            try:
                mod = __import__(module)
            except ImportError:
                continue
        info[module] = getattr(mod, "__version__", "?")
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


def environment_line(info: dict[str, Any] | None = None) -> str:
    info = info or environment()
    libs = " ".join(f"{k} {info[k]}" for k in ("torch", "monai", "pydicom", "numpy") if k in info)
    threads = f", torch threads {info['torch_threads']}" if "torch_threads" in info else ""
    return f"{info['cpu']} ({info['affinity']} usable cores{threads}); Python {info['python']}; {libs}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus environment and timestamp) to ``benchmarks/results/<name>-<time>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    body = {"benchmark": name, "utc": stamp, "environment": environment(), **payload}
    path.write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain fixed-width text table."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
