"""Does generated audio do what its prompt asked? Key and tempo adherence against stated values.

The corpus captions state a key ("in D major") and a tempo ("at 92 BPM"); a text-to-audio model
trained on them should reproduce both. Per clip:

- key: the MIREX key score (`tonal.key_score`: 1 same key, 0.5 fifth, 0.3 relative, 0.2
  parallel, else 0) of the audio's estimated key against the prompt's key;
- tempo: the tempo of the project's beat tracker (`rhythm.track_beats`), scored as Acc1 (within 8 %
  of the prompt's BPM) and Acc2 (within 8 % of the BPM or of a double, half, triple or third of
  it, the usual allowance for metrical level);
- pulse: the onset envelope's autocorrelation at the lag of one beat at the prompt's BPM
  (`rhythm.beat_pulse`), which a beat tracker's tempo does not show: whether there is a beat at
  all, and at the asked tempo;
- onsets per second (`rhythm.onset_density`), whatever the prompt: note attacks, which sustained
  texture lacks.

Chapter 2 validates both estimators on clips with known truth, which bounds how much adherence
any model can show through them; `evaluate_beat_tracker` scores any beat tracker the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from .analysis import analysis_signal
from .rhythm import BEAT_TOLERANCE, TEMPO_TOLERANCE, beat_pulse, onset_density, track_beats
from .tonal import key_score

METRICAL_LEVELS = (1.0, 2.0, 0.5, 3.0, 1 / 3)


def estimate_tempo(wav: torch.Tensor, sr: int, *, name: str = "clip") -> float | None:
    """Tempo in BPM of wav [channels, samples] (`rhythm.track_beats`), or None when fewer than
    three beats are found."""
    return track_beats(wav, sr, name=name)[0]


def tempo_accuracy(estimate: float | None, truth: float, tolerance: float = TEMPO_TOLERANCE) -> tuple[float | None, float | None]:
    """(Acc1, Acc2) in {0.0, 1.0} of a tempo estimate against the true BPM (None, None if no estimate)."""
    if truth <= 0:
        raise ValueError(f"true tempo {truth} BPM: must be positive")
    if estimate is None:
        return None, None
    ratio = estimate / truth
    acc1 = float(abs(ratio - 1) <= tolerance)
    acc2 = float(min(abs(ratio / m - 1) for m in METRICAL_LEVELS) <= tolerance)
    return acc1, acc2


def prompt_adherence(wav: torch.Tensor, sr: int, key: str | None, bpm: float | None, *, name: str = "clip") -> dict:
    """{"key_mirex", "tempo_bpm", "tempo_acc1", "tempo_acc2", "pulse", "onsets_per_s"} of one clip
    against the key and BPM its prompt states (either may be None when the prompt does not state it)."""
    row: dict = {"key_mirex": None, "tempo_bpm": None, "tempo_acc1": None, "tempo_acc2": None, "pulse": None}
    if key is not None:
        row["key_mirex"] = key_score(wav, sr, key, name=name)
    if bpm is not None:
        row["tempo_bpm"] = estimate_tempo(wav, sr, name=name)
        row["tempo_acc1"], row["tempo_acc2"] = tempo_accuracy(row["tempo_bpm"], bpm)
        row["pulse"] = beat_pulse(wav, sr, bpm, name=name)
    row["onsets_per_s"] = onset_density(wav, sr, name=name)
    return row


def chroma_correlation(ref: torch.Tensor, gen: torch.Tensor, sr: int) -> float | None:
    """Pearson correlation of the time-averaged chroma (12 pitch classes) of two clips: 1 when the
    pitch-class content matches, about 0 when it is unrelated (None for a flat chroma, e.g. noise).
    Unlike the key score it needs no key decision, so it shows partial preservation of pitch."""
    from .tonal import chromagram

    a, b = chromagram(ref, sr, name="reference").mean(1), chromagram(gen, sr, name="generated").mean(1)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


PITCH_KEPT_CI_LOW = 0.7  # the chroma correlation's interval lies above this: the notes survive
PITCH_PARTLY_MEAN = 0.3  # mean above this: some of the pitch-class content survives


def pitch_preservation(mean: float | None, ci_low: float | None) -> str:
    """Whether a round trip keeps the notes, from the chroma correlation of reconstructions with
    their originals (`chroma_correlation`: mean over clips and the lower end of its 95 % interval):
    "kept" when the interval lies above 0.7, "partly kept" when the mean is above 0.3, "lost"
    otherwise, "undefined" when no clip has a defined chroma. One rule for every chapter that
    judges an autoencoder or codec (Chapters 3 and 6)."""
    if mean is None or np.isnan(mean):
        return "undefined"
    if ci_low is not None and not np.isnan(ci_low) and ci_low > PITCH_KEPT_CI_LOW:
        return "kept"
    return "partly kept" if mean > PITCH_PARTLY_MEAN else "lost"


def evaluate_beat_tracker(tracker: Callable, clips: Iterable[dict], *, tolerance: float = BEAT_TOLERANCE) -> list[dict]:
    """Score `tracker` on `clips`: one row per clip with `beat_f` (mir_eval F-measure, +-`tolerance` s,
    no 5 s trim), `acc1`, `acc2` (`tempo_accuracy`) and the estimated `tempo_bpm`.

    tracker: fn(mono float32 [samples] at ANALYSIS_SR) -> (tempo BPM or None, beat times [beats] s).
    clips: iterable of dicts with `id`, `audio` (mono [samples] or [channels, samples]),
    `sample_rate`, `beats` (reference times, s) and `tempo_bpm` (reference tempo).
    Trackers to compare: `rhythm.BEAT_TRACKERS`.
    """
    import mir_eval

    rows = []
    for clip in clips:
        wav = torch.as_tensor(np.asarray(clip["audio"], dtype=np.float32))
        y = analysis_signal(wav[None] if wav.ndim == 1 else wav, clip["sample_rate"], name=clip["id"])
        tempo, beats = tracker(y)
        ref = np.sort(np.asarray(clip["beats"], dtype=float))
        est = np.sort(np.asarray(beats, dtype=float))
        f = float(mir_eval.beat.f_measure(ref, est, f_measure_threshold=tolerance)) if est.size else 0.0
        acc1, acc2 = tempo_accuracy(tempo, clip["tempo_bpm"])
        acc1, acc2 = acc1 or 0.0, acc2 or 0.0  # no estimate counts as a miss
        rows.append({"id": clip["id"], "beat_f": f, "acc1": acc1, "acc2": acc2, "tempo_bpm": tempo})
    return rows
