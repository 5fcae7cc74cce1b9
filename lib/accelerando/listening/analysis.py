"""The statistics of a listening test: MUSHRA scores per condition after BS.1534-3 post-screening,
and forced choices (ABX, remix) against chance.

    kept, excluded = post_screen(rows)              # assessors who missed the hidden reference too often
    mushra_summary(kept)                            # per condition: n, median, IQR, mean [95% CI]
    choice_summary(answers)                         # per trial and overall: correct / n, one-sided binomial p

`rows` are rating rows as the store exports them (participant_id, trial_id, condition, score).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from ..metrics.stats import CONFIDENCE, Estimate
from .experiment import HIDDEN_REFERENCE

SCREEN_SCORE = 90          # BS.1534-3 section 4.1.2: a hidden reference rated below this ...
SCREEN_SHARE = 0.15        # ... in more than this share of an assessor's trials excludes the assessor


def post_screen(rows: list[dict], score: int = SCREEN_SCORE, share: float = SCREEN_SHARE
                ) -> tuple[list[dict], dict[str, float]]:
    """(the rows of assessors kept, {excluded participant: share of trials with the hidden reference
    below `score`}). An assessor is excluded when that share exceeds `share`."""
    hidden: dict[str, list[int]] = {}
    for r in rows:
        if r["condition"] == HIDDEN_REFERENCE:
            hidden.setdefault(r["participant_id"], []).append(r["score"])
    excluded = {}
    for pid, scores in hidden.items():
        missed = float(np.mean(np.array(scores) < score))
        if missed > share:
            excluded[pid] = missed
    return [r for r in rows if r["participant_id"] not in excluded], excluded


def mean_ci(values: np.ndarray, confidence: float = CONFIDENCE) -> Estimate:
    """Mean with a Student-t interval (the interval BS.1534-3 section 9.3 reports)."""
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return Estimate(mean, None, None, n=n, method="t")
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / np.sqrt(n))
    return Estimate(mean, mean - half, mean + half, n=n, method="t")


def mushra_summary(rows: list[dict]) -> list[dict]:
    """Per condition (over every trial and assessor given): n, median, q1, q3, mean and its 95% CI."""
    out = []
    for condition in sorted({r["condition"] for r in rows}):
        scores = np.array([r["score"] for r in rows if r["condition"] == condition], dtype=float)
        q1, median, q3 = np.percentile(scores, [25, 50, 75])
        est = mean_ci(scores)
        out.append({"condition": condition, "n": len(scores), "median": float(median), "q1": float(q1),
                    "q3": float(q3), "mean": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high})
    return out


def binomial_p(correct: int, n: int, chance: float = 0.5) -> float:
    """One-sided p of at least `correct` right answers out of `n` by guessing at `chance`."""
    return float(sps.binomtest(correct, n, chance, alternative="greater").pvalue) if n else 1.0


def choice_summary(answers: list[dict]) -> list[dict]:
    """Per forced-choice trial (ABX, remix) and over all trials of each kind: answers, correct,
    share correct, chance (1 / options) and the binomial p against guessing (a small p: listeners
    hear the difference, or find the generated stem). Pooled over trials with different numbers
    of options, chance is their mean (a binomial approximation of the Poisson binomial)."""
    groups = {(a["kind"], a["trial_id"]): [] for a in answers}
    for a in answers:
        groups[(a["kind"], a["trial_id"])].append(a)
        groups.setdefault((a["kind"], f"all {a['kind']} trials"), []).append(a)
    out = []
    for (kind, trial), group in sorted(groups.items()):
        options = {a["options"] for a in group}
        chance = 1 / options.pop() if len(options) == 1 else float(np.mean([1 / a["options"] for a in group]))
        n, correct = len(group), sum(bool(a["correct"]) for a in group)
        out.append({"kind": kind, "trial_id": trial, "n": n, "correct": correct, "share_correct": correct / n,
                    "chance": chance, "p_value": binomial_p(correct, n, chance)})
    return out
