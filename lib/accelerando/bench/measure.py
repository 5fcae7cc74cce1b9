"""Measuring one callable: latency, peak memory, FLOPs and real-time factor.

The rules every benchmark in the book follows:
- warm up before timing (first calls pay for allocation, lazy init and kernel selection);
- repeat and report the minimum (the least-disturbed run) and the median (the typical one);
- fix the thread count and record it;
- compare candidates interleaved (A B A B ...) in one process, so that drift of a shared machine
  hits all of them alike, and report their ratio rather than absolute times.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from ..machine import default_device, synchronize

# Fields every measurement record carries (the CLI prints one JSON object per measurement).
RECORD_FIELDS = (
    "component", "audio_seconds", "latency_s_min", "latency_s_median", "repeats",
    "peak_mem_bytes", "gflops", "rtf", "threads", "device",
)

MIN_REPEATS = 3  # timed calls a time budget cannot cut below: a spread needs at least three

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    """Peak memory of a block of code, in bytes.

    CUDA: `torch.cuda.max_memory_allocated` (tensors only). CPU: the process's peak resident set
    (Linux VmHWM, reset before the block through /proc/self/clear_refs), so it includes weights,
    activations and allocator slack: what a reader's machine must actually hold.
    `peak_bytes` is the absolute peak; `delta_bytes` the rise above the level at entry.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.delta_bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._start = _rss_bytes("VmRSS")
            try:
                _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                pass  # not Linux, or not permitted: the peak is then the process lifetime peak
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self.peak_bytes = _rss_bytes("VmHWM")
        if self.peak_bytes is not None and self._start is not None:
            self.delta_bytes = max(self.peak_bytes - self._start, 0)


def _rss_bytes(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    if field == "VmHWM" and sys.platform != "win32":
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return None


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of `fn`, counted by torch's FlopCounterMode.

    Counts matmuls, convolutions and attention (2 FLOPs per multiply-add); elementwise work is not
    counted. Run `fn` on the meta device: it counts a full-size model in milliseconds, and on CPU
    tensors torch 2.13 counts nothing for the fused attention kernel (scaled_dot_product_attention
    gives 0 FLOPs there, the true 4 L^2 d per head on meta).
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def time_call(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    repeats: int = 3,
    budget_s: float | None = None,
    device: torch.device | str | None = None,
    desc: str | None = None,
) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `fn` after `warmup` untimed calls.

    `budget_s` stops repeating once the timed calls have used that many seconds, but only after
    MIN_REPEATS calls (or `repeats`, if fewer are asked): a 60 s full-size forward is timed three
    times, a 10 ms one as often as asked. No figure rests on a single call unless asked for one.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = device or default_device()
    times: list[float] = []
    # tqdm's delay hides the bar for quick measurements; disable=None hides it off a terminal.
    with torch.no_grad(), tqdm(total=warmup + repeats, desc=desc, delay=5, disable=None, leave=False) as bar:
        for _ in range(warmup):
            fn()
            synchronize(device)
            bar.update()
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
            bar.update()
            if budget_s is not None and len(times) >= MIN_REPEATS and sum(times) >= budget_s:
                break
    return times


def measure(
    fn: Callable[[], object],
    *,
    component: str,
    audio_seconds: float | None = None,
    warmup: int = 1,
    repeats: int = 3,
    budget_s: float | None = None,
    flops: int | None = None,
    device: torch.device | str | None = None,
    **extra,
) -> dict:
    """One measurement record: latency (min, median over repeats), peak memory, FLOPs and RTF.

    rtf is the real-time factor: compute seconds per second of audio (below 1 is faster than real
    time), from the minimum latency. `flops` is passed in (see `count_flops`) because counting
    costs a forward of its own. Extra keyword arguments are copied into the record.
    """
    device = torch.device(device or default_device())
    with PeakMemory(device) as mem:
        times = time_call(fn, warmup=warmup, repeats=repeats, budget_s=budget_s, device=device, desc=component)
    lat_min = min(times)
    return {
        "component": component,
        "audio_seconds": audio_seconds,
        "latency_s_min": lat_min,
        "latency_s_median": statistics.median(times),
        "repeats": len(times),
        "peak_mem_bytes": mem.peak_bytes,
        "peak_mem_delta_bytes": mem.delta_bytes,
        "gflops": flops / 1e9 if flops is not None else None,
        "rtf": lat_min / audio_seconds if audio_seconds else None,
        "threads": torch.get_num_threads(),
        "device": device.type,
        # runnable processes averaged over the last minute: above the thread count, something else
        # competed for the cores and the latency is inflated
        "load_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **extra,
    }


def compare(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int = 5,
    warmup: int = 1,
    baseline: str | None = None,
    device: torch.device | str | None = None,
) -> dict[str, dict]:
    """Interleaved A/B timing: each round calls every candidate once, in turn.

    Returns per candidate its min and median latency and, when `baseline` names one of them,
    `speedup_vs_baseline` = baseline min / candidate min (above 1 means faster than the baseline).
    Ratios from one interleaved run are what the book reports; absolute times on a shared machine
    drift.
    """
    if baseline is not None and baseline not in candidates:
        raise ValueError(f"baseline {baseline!r} is not one of the candidates {sorted(candidates)}")
    device = device or default_device()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.no_grad():
        for fn in candidates.values():
            for _ in range(warmup):
                fn()
            synchronize(device)
        for _ in tqdm(range(rounds), desc="interleaved rounds", delay=5, disable=None, leave=False):
            for name, fn in candidates.items():
                start = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    results = {
        name: {"latency_s_min": min(t), "latency_s_median": statistics.median(t), "repeats": len(t)}
        for name, t in times.items()
    }
    if baseline is not None:
        for res in results.values():
            res["speedup_vs_baseline"] = results[baseline]["latency_s_min"] / res["latency_s_min"]
    return results

