"""A simulated listening panel, to try the analysis before people rate anything, and the panel size a
difference needs.

    rows = simulate_mushra({"hidden_reference": 98, "svdquant w4a4": 80, "rtn w4a4": 55, "anchor_3.5k": 20},
                           trials=6, assessors=20, careless=0.15, seed=0)
    kept, excluded = post_screen(rows)          # catches the careless assessors (accelerando.listening.analysis)
    assessors_needed(difference=5, sd=12)       # assessors for a paired t-test to see 5 points, 80% power

Everything here is simulated and every output says so: no human rated these. The panel's true
scores are the caller's assumptions; what the simulation tests is the analysis (does post-screening
remove random raters, how wide are the intervals for a panel of this size), not the audio.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from .experiment import HIDDEN_REFERENCE


def simulate_mushra(true_scores: dict[str, float], trials: int, assessors: int, *, assessor_sd: float = 8.0,
                    noise_sd: float = 10.0, careless: float = 0.0, seed: int = 0) -> list[dict]:
    """Rating rows (participant_id, trial_id, condition, score, simulated=True) of a panel where
    assessor a rates condition c in trial t as true_scores[c] + bias_a + noise (rounded, clipped to
    0-100): bias ~ N(0, assessor_sd), noise ~ N(0, noise_sd). A `careless` share of assessors
    rates uniformly at random; the hidden reference is rated near 100 by the others as real
    listeners do (its noise is one-sided)."""
    if not 0 <= careless < 1:
        raise ValueError(f"careless={careless}: a share of the assessors, in [0, 1)")
    if trials < 1 or assessors < 1:
        raise ValueError(f"trials={trials}, assessors={assessors}: at least one of each")
    rng = np.random.default_rng(seed)
    random_raters = set(rng.choice(assessors, size=int(round(careless * assessors)), replace=False).tolist())
    rows = []
    for a in range(assessors):
        bias = rng.normal(0, assessor_sd)
        for t in range(trials):
            for condition, mean in true_scores.items():
                if a in random_raters:
                    score = rng.uniform(0, 100)
                elif condition == HIDDEN_REFERENCE:
                    score = mean - abs(rng.normal(0, noise_sd / 3))
                else:
                    score = mean + bias + rng.normal(0, noise_sd)
                rows.append({"participant_id": f"simulated-{a:03d}", "trial_id": f"trial-{t}", "condition": condition,
                             "score": int(np.clip(round(score), 0, 100)), "simulated": True,
                             "careless": a in random_raters})
    return rows


def simulate_choices(kind: str, trials: int, assessors: int, p_correct: float, options: int = 2,
                     seed: int = 0) -> list[dict]:
    """Forced-choice rows (kind, participant_id, trial_id, correct, options, simulated=True): each
    answer right with probability `p_correct` (1 / options: nobody hears a difference)."""
    if not 0 <= p_correct <= 1:
        raise ValueError(f"p_correct={p_correct}: a probability")
    rng = np.random.default_rng(seed)
    return [{"kind": kind, "participant_id": f"simulated-{a:03d}", "trial_id": f"{kind}-{t}",
             "correct": bool(rng.random() < p_correct), "options": options, "simulated": True}
            for a in range(assessors) for t in range(trials)]


def paired_power(n: int, difference: float, sd: float, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test on `n` assessors' mean differences (sd of those
    differences `sd`) to detect a true `difference` (MUSHRA points)."""
    if n < 2:
        return 0.0
    df, nc = n - 1, difference / sd * np.sqrt(n)
    crit = sps.t.ppf(1 - alpha / 2, df)
    return float(1 - sps.nct.cdf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))


def assessors_needed(difference: float, sd: float, power: float = 0.8, alpha: float = 0.05,
                     most: int = 1000) -> int | None:
    """Fewest assessors for a paired t-test to detect `difference` with `power` (None: over `most`)."""
    for n in range(2, most + 1):
        if paired_power(n, difference, sd, alpha) >= power:
            return n
    return None
