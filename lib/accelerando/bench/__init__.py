"""Benchmark harness: latency (warm-up, repeats, min and median), peak memory, FLOPs, real-time
factor, interleaved A/B comparisons, and the baseline suites of Chapter 1.

Command line: `python -m accelerando.bench baseline --preset tiny --json`.
"""

from .measure import RECORD_FIELDS, PeakMemory, compare, count_flops, measure, time_call

__all__ = ["RECORD_FIELDS", "PeakMemory", "compare", "count_flops", "measure", "time_call"]
