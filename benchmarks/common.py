"""Shared benchmark helpers: timing with L2 flush, peak memory, bandwidth, CSV rows."""

from __future__ import annotations

import csv
import datetime as _dt
import os
import subprocess
from pathlib import Path

import torch

CSV_COLUMNS = ("op", "provider", "mode", "metric", "unit", "shape", "p50", "p20", "p80", "device", "git_sha",
               "timestamp")

# Peak HBM bandwidth in bytes/s by device-name substring (first match wins).
_PEAK_BW = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100", 2.0e12), ("L40S", 0.864e12))


def device_name() -> str:
    """CUDA device name, or ``cpu``."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def peak_bandwidth(name: str) -> float | None:
    """Peak memory bandwidth (bytes/s) for a known device name, else None."""
    for key, bw in _PEAK_BW:
        if key in name:
            return bw
    return None


def git_sha(default: str = "unknown") -> str:
    """Short sha from ``GIT_SHA`` or ``git rev-parse``; ``default`` when neither works."""
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or default
    except Exception:
        return default


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    """(p50, p20, p80) by linear interpolation."""
    t = torch.tensor(xs, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def bench(fn, *, warmup: int = 3, rep: int = 20, setup=None, flush_l2: bool = True) -> list[float]:
    """Milliseconds per call of ``fn``; ``setup`` runs untimed before each call.

    On CUDA each call is timed with events after writing a 256 MiB buffer to evict L2; on CPU
    with ``time.perf_counter``.
    """
    import time

    cuda = torch.cuda.is_available()
    flush = torch.empty(64 * 1024 * 1024, dtype=torch.int32, device="cuda") if cuda and flush_l2 else None
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    times = []
    for _ in range(rep):
        if setup:
            setup()
        if cuda:
            if flush is not None:
                flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def peak_extra_memory(fn, *, setup=None) -> float:
    """Peak bytes allocated by one call of ``fn`` above what was allocated before it (CUDA only, else nan)."""
    if not torch.cuda.is_available():
        return float("nan")
    if setup:
        setup()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - base)


class CsvWriter:
    """Collects rows with the project's benchmark columns and writes them to ``path``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: list[dict] = []
        self.device = device_name()
        self.sha = git_sha()
        self.stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def add(self, op, provider, mode, metric, unit, shape, p50, p20=None, p80=None):
        self.rows.append(dict(op=op, provider=provider, mode=mode, metric=metric, unit=unit, shape=shape,
                              p50=f"{p50:.6g}", p20=f"{(p50 if p20 is None else p20):.6g}",
                              p80=f"{(p50 if p80 is None else p80):.6g}", device=self.device, git_sha=self.sha,
                              timestamp=self.stamp))

    def write(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            w.writerows(self.rows)
        return self.path
