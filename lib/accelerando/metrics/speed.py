"""Real-time factor of a generator or codec: compute seconds per second of audio produced.

Timing follows the bench harness's rules (warm-up, repeats, min and median) by reusing
`accelerando.bench.time_call`; this helper only divides by the audio duration.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from ..bench.measure import time_call


def real_time_factor(fn: Callable[[], object], audio_seconds: float, *, warmup: int = 1, repeats: int = 3,
                     budget_s: float | None = None, device=None) -> dict:
    """RTF = wall-clock seconds of one call of `fn` / `audio_seconds` of audio it produces.

    Below 1 is faster than real time. Returns {"rtf_min", "rtf_median", "repeats",
    "audio_seconds"}: the minimum (least-disturbed run) is the figure to quote.
    """
    if not audio_seconds > 0:
        raise ValueError(f"audio_seconds must be > 0, got {audio_seconds}")
    times = time_call(fn, warmup=warmup, repeats=repeats, budget_s=budget_s, device=device)
    return {"rtf_min": min(times) / audio_seconds, "rtf_median": statistics.median(times) / audio_seconds,
            "repeats": len(times), "audio_seconds": audio_seconds}
