"""Uncertainty for every reported metric: bootstrap confidence intervals and paired comparisons.

Every metric the suite reports is an `Estimate`: a value, a 95% interval and the sample count n it
rests on (clips for per-clip metrics, embedding vectors for FAD and KAD). Intervals are percentile
bootstraps (Efron & Tibshirani 1993, ch. 13), seeded, so a rerun prints the same numbers.

Sentinels: a per-clip metric returns None (with a logged reason) when it is undefined for a clip,
e.g. a clip shorter than the metric's window. Aggregation drops them and counts them in
`n_skipped`; NaN is never passed on silently (`require_finite` raises).

JSON: strict JSON has no infinity, and SI-SDR of identical signals is +inf by definition. The
suite writes +inf and -inf as the strings "inf" and "-inf" (`json_safe`); `float("inf")` reads
them back. NaN cannot reach the JSON: it raises before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
N_RESAMPLES = 2000


@dataclass
class Estimate:
    """A metric value with its interval. `n` counts the units it averages (clips or vectors);
    `n_skipped` the clips whose metric was undefined (None); `extra` holds metric-specific details
    (FAD's n_ref, FAD-inf's slope and fit, KAD's bandwidth...)."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    n_skipped: int = 0
    method: str = "bootstrap-percentile"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return json_safe(asdict(self))

    def text(self, digits: int = 2) -> str:
        """'value [low, high]' (just the value when there is no interval)."""
        if self.ci_low is None or self.ci_high is None:
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"


def require_finite(value: float, what: str) -> float:
    """Return `value` as float, raising ValueError if it is NaN (infinities pass: SI-SDR uses +inf)."""
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{what} is NaN: this is a bug or an unchecked input, not a score")
    return value


def json_safe(value):
    """Recursively make plain JSON: numpy scalars to Python, +-inf to the strings "inf"/"-inf"."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        require_finite(value, "a value written to JSON")
        return value
    if isinstance(value, np.integer):
        return int(value)
    return value


def _valid(values: Sequence[float | None]) -> tuple[np.ndarray, int]:
    """Drop None sentinels; return (float64 array, number dropped). NaN raises."""
    kept = [float(v) for v in values if v is not None]
    for v in kept:
        require_finite(v, "a per-clip metric value")
    return np.asarray(kept, dtype=np.float64), len(values) - len(kept)


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """(lower, upper) percentile interval of bootstrap samples [resamples] at `confidence`."""
    # "inverted_cdf" picks observed bootstrap values instead of interpolating between them:
    # with +inf among them (SI-SDR) interpolation would compute inf - inf = NaN.
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha], method="inverted_cdf")
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float | None],
    *,
    statistic: Callable[..., np.ndarray] = np.mean,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap interval of `statistic` over per-clip values.

    values: [clips] floats, None for clips where the metric is undefined (dropped, counted).
    statistic: called as statistic(x, axis=-1); the mean by default.
    Resamples clips with replacement `n_resamples` times (seeded) and takes the (1-c)/2 and
    (1+c)/2 quantiles. One clip gives a degenerate interval [v, v] (logged).
    """
    x, skipped = _valid(values)
    if x.size == 0:
        raise ValueError(f"no valid values to aggregate ({skipped} clips were undefined for this metric)")
    with np.errstate(invalid="ignore"):  # mean of [inf, inf] is inf, not an error
        value = float(statistic(x, axis=-1))
    if x.size == 1:
        log.warning("one clip only: the confidence interval is degenerate")
        return Estimate(value, value, value, n=1, n_skipped=skipped)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))  # [resamples, clips]
    with np.errstate(invalid="ignore"):
        boot = statistic(x[idx], axis=-1)
    lo, hi = percentile_interval(boot, confidence)
    return Estimate(require_finite(value, "bootstrap statistic"), lo, hi, n=int(x.size), n_skipped=skipped)


@dataclass
class PairedComparison:
    """a - b over paired clips: bootstrap interval of the mean difference and a Wilcoxon
    signed-rank p-value (two-sided). p is 1.0 when every difference is zero (logged)."""

    mean_diff: Estimate
    wilcoxon_p: float
    n: int

    def to_dict(self) -> dict:
        return json_safe({"mean_diff": self.mean_diff.to_dict(), "wilcoxon_p": self.wilcoxon_p, "n": self.n})


def paired_comparison(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> PairedComparison:
    """Compare two systems on the same clips: differences d_i = a_i - b_i.

    Pairs where either side is None are dropped. Equal values count as a zero difference, also
    when both are +inf (SI-SDR of two perfect systems), where plain subtraction gives NaN.
    """
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs equal-length lists, got {len(a)} and {len(b)}")
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        raise ValueError("no clip has a defined value on both sides")
    d = [0.0 if x == y else x - y for x, y in pairs]
    est = bootstrap_ci(d, n_resamples=n_resamples, confidence=confidence, seed=seed)
    est.n_skipped = len(a) - len(pairs)
    diffs = np.asarray(d)
    if not np.any(diffs):
        log.info("all paired differences are zero: Wilcoxon p reported as 1.0")
        p = 1.0
    elif not np.all(np.isfinite(diffs)):
        raise ValueError("an infinite paired difference (one side +inf, the other finite) has no rank test")
    else:
        p = float(sps.wilcoxon(diffs, zero_method="wilcox").pvalue)
    return PairedComparison(est, p, len(pairs))
