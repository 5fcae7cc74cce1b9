"""Word and character error rates of a speech recogniser, with intervals and paired tests.

    rates = error_rates(references, hypotheses)     # DataFrame: a row per utterance
    corpus_rate(rates, "word")                        # Estimate: total word errors / reference words
    paired_rate(rates_a, rates_b, "word")             # a - b on the same utterances

The alignment (substitutions, deletions, insertions) is jiwer's (Levenshtein over words, or over
characters with spaces counted). A corpus's WER is its total errors over its total reference
words, not the mean of per-utterance rates (short utterances would weigh as much as long ones);
its interval resamples utterances, keeping each utterance's errors and length together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.stats as sps

from .stats import CONFIDENCE, N_RESAMPLES, Estimate, PairedComparison, percentile_interval


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> pd.DataFrame:
    """A row per utterance: word_errors, words (in the reference), wer, char_errors, chars, cer.
    References must be non-empty; an empty hypothesis counts every reference word as deleted."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references and {len(hypotheses)} hypotheses: give one of each per utterance")
    rows = []
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        ref, hyp = " ".join(ref.split()), " ".join(hyp.split())
        if not ref:
            raise ValueError(f"reference {i} is empty: an error rate needs at least one reference word")
        words, chars = len(ref.split()), len(ref)
        if hyp:
            w, c = jiwer.process_words(ref, hyp), jiwer.process_characters(ref, hyp)
            word_errors = w.substitutions + w.deletions + w.insertions
            char_errors = c.substitutions + c.deletions + c.insertions
        else:
            word_errors, char_errors = words, chars
        rows.append({"word_errors": word_errors, "words": words, "wer": word_errors / words,
                     "char_errors": char_errors, "chars": chars, "cer": char_errors / chars})
    return pd.DataFrame(rows)


def _columns(unit: str) -> tuple[str, str]:
    if unit not in ("word", "char"):
        raise ValueError(f"unit={unit!r}: use 'word' (WER) or 'char' (CER)")
    return (f"{unit}_errors", "words" if unit == "word" else "chars")


def corpus_rate(rates: pd.DataFrame, unit: str = "word", *, n_resamples: int = N_RESAMPLES,
                confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """Total errors over total reference words (or characters), with a bootstrap interval over
    utterances."""
    errors_col, length_col = _columns(unit)
    errors, lengths = rates[errors_col].to_numpy(float), rates[length_col].to_numpy(float)
    value = float(errors.sum() / lengths.sum())
    if len(errors) < 2:
        return Estimate(value, value, value, n=len(errors))
    idx = np.random.default_rng(seed).integers(0, len(errors), size=(n_resamples, len(errors)))
    lo, hi = percentile_interval(errors[idx].sum(1) / lengths[idx].sum(1), confidence)
    return Estimate(value, lo, hi, n=len(errors))


def paired_rate(a: pd.DataFrame, b: pd.DataFrame, unit: str = "word", *, n_resamples: int = N_RESAMPLES,
                confidence: float = CONFIDENCE, seed: int = 0) -> PairedComparison:
    """Corpus rate of a minus that of b on the same utterances (rows in the same order): a
    bootstrap interval resampling utterances for both at once, and a Wilcoxon signed-rank p on the
    per-utterance error counts (1.0 when no utterance differs)."""
    errors_col, length_col = _columns(unit)
    if len(a) != len(b) or not np.array_equal(a[length_col].to_numpy(), b[length_col].to_numpy()):
        raise ValueError("the two systems were scored on different utterances: a paired test needs the same ones, "
                         "in the same order")
    ea, eb, n = a[errors_col].to_numpy(float), b[errors_col].to_numpy(float), a[length_col].to_numpy(float)
    value = float((ea.sum() - eb.sum()) / n.sum())
    idx = np.random.default_rng(seed).integers(0, len(n), size=(n_resamples, len(n)))
    lo, hi = percentile_interval((ea[idx].sum(1) - eb[idx].sum(1)) / n[idx].sum(1), confidence)
    d = ea - eb
    p = 1.0 if not d.any() else float(sps.wilcoxon(d, zero_method="wilcox").pvalue)
    return PairedComparison(Estimate(value, lo, hi, n=len(n)), p, len(n))


def relative_change(a: Estimate, b: Estimate) -> float:
    """(a - b) / b: -0.05 is a 5 % relative reduction of b's error rate."""
    if b.value == 0:
        return float("nan") if a.value == 0 else float("inf")
    return (a.value - b.value) / b.value
