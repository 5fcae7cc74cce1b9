"""Rhythm: Beat Consistency Score (local tempo stability) and beat F-measure.

librosa's global beat tracker fits one tempo to the whole clip and so hides drift; here tempo is
estimated locally, frame by frame, from a windowed autocorrelation of the onset envelope
(librosa.feature.tempo with aggregate=None), and beats from the predominant local pulse (PLP,
Grosche & Müller 2011), which follows a drifting tempo.
"""

from __future__ import annotations

import numpy as np
import torch

from .analysis import ANALYSIS_SR, analysis_signal, undefined

HOP = 256  # 11.6 ms onset frames: neighbouring local-tempo bins are 2.3% apart at 120 BPM
WINDOW_SECONDS = 4.0  # autocorrelation window: 8 beats at 120 BPM, short enough for 10 s clips
BEAT_TOLERANCE = 0.07  # seconds, mir_eval's (and MIREX's) F-measure window
MIN_ONSETS = 4


def onset_envelope(y: np.ndarray) -> np.ndarray:
    """Spectral-flux onset strength of mono y at ANALYSIS_SR: [frames], HOP samples apart."""
    import librosa

    return librosa.onset.onset_strength(y=y, sr=ANALYSIS_SR, hop_length=HOP)


def _tempo_curve(env: np.ndarray, window_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(times [frames] in s, tempo [frames] in BPM) of an onset envelope, interior frames only."""
    import librosa

    bpm = librosa.feature.tempo(onset_envelope=env, sr=ANALYSIS_SR, hop_length=HOP, aggregate=None, ac_size=window_seconds)
    half = int(np.ceil(window_seconds * ANALYSIS_SR / HOP / 2))
    frames = np.arange(len(bpm))[half:len(bpm) - half]
    return frames * HOP / ANALYSIS_SR, bpm[frames]


def local_tempo(wav: torch.Tensor, sr: int, *, window_seconds: float = WINDOW_SECONDS, name: str = "clip"):
    """Local tempo curve: (times [frames] in s, tempo [frames] in BPM), interior frames only.

    At each onset frame, the tempo maximising the autocorrelation of the onset envelope over a
    `window_seconds` window, weighted by librosa's log-normal prior (120 BPM, one octave). Frames
    whose window reaches past either end of the clip (zero-padded, unreliable) are dropped, so
    a clip shorter than the window has no frames.
    """
    return _tempo_curve(onset_envelope(analysis_signal(wav, sr, name=name)), window_seconds)


def beat_consistency(wav: torch.Tensor, sr: int, *, window_seconds: float = WINDOW_SECONDS, name: str = "clip") -> float | None:
    """Beat Consistency Score (BCS), in [0, 1], 1 = perfectly steady tempo.

        BCS = max(0, 1 - std_t(tau(t)) / mean_t(tau(t)))

    with tau(t) the local tempo in BPM (`local_tempo`: window W = `window_seconds`, interior
    frames t only). 1 - coefficient of variation: BCS = 0.9 means the local tempo wanders by 10%
    (one standard deviation). Octave jumps of the estimator count as inconsistency.
    Sentinel: None (logged) for a clip shorter than W + 1 s, where too few frames remain, and for
    a clip without a pulse to be steady: fewer than MIN_ONSETS onsets, or onsets spanning less
    than half the clip (a held chord, whose decay ripples trigger a few onsets near its start).
    """
    import librosa

    if wav.shape[-1] < (window_seconds + 1.0) * sr:
        return undefined("beat_consistency", name, f"{wav.shape[-1] / sr:.2f} s is shorter than window + 1 s = {window_seconds + 1:.1f} s")
    env = onset_envelope(analysis_signal(wav, sr, name=name))
    onsets = librosa.onset.onset_detect(onset_envelope=env, sr=ANALYSIS_SR, hop_length=HOP, units="time")
    span = onsets[-1] - onsets[0] if len(onsets) else 0.0
    if len(onsets) < MIN_ONSETS or span < 0.5 * wav.shape[-1] / sr:
        return undefined("beat_consistency", name, f"no steady pulse to measure: {len(onsets)} onsets detected, "
                                                   f"spanning {span:.1f} s of {wav.shape[-1] / sr:.1f} s")
    _, tau = _tempo_curve(env, window_seconds)
    return float(max(0.0, 1.0 - tau.std() / tau.mean()))


def estimate_beats(wav: torch.Tensor, sr: int, *, window_seconds: float = WINDOW_SECONDS, name: str = "clip") -> np.ndarray:
    """Beat times in seconds [beats]: local maxima of the PLP pulse curve above 10% of its peak."""
    import librosa

    y = analysis_signal(wav, sr, name=name)
    env = onset_envelope(y)
    pulse = librosa.beat.plp(onset_envelope=env, sr=ANALYSIS_SR, hop_length=HOP, win_length=int(window_seconds * ANALYSIS_SR / HOP))
    peaks = np.flatnonzero(librosa.util.localmax(pulse) & (pulse > 0.1 * pulse.max()))
    return peaks * HOP / ANALYSIS_SR


def beat_f_measure(wav: torch.Tensor, sr: int, ref_beats, *, tolerance: float = BEAT_TOLERANCE, name: str = "clip") -> float:
    """mir_eval beat F-measure of the estimated beats against reference beat times (seconds).

    A hit is an estimated beat within +-`tolerance` s of an unmatched reference beat;
    F = 2 P R / (P + R). Unlike mir_eval.beat.evaluate, the first 5 s are not trimmed (generated
    clips are often 10 s). Raises ValueError without reference beats; no estimated beats give 0.
    """
    import mir_eval

    ref = np.sort(np.asarray(ref_beats, dtype=float))
    if ref.size == 0:
        raise ValueError(f"{name}: no reference beats to score against")
    est = estimate_beats(wav, sr, name=name)
    if est.size == 0:
        return 0.0
    return float(mir_eval.beat.f_measure(ref, est, f_measure_threshold=tolerance))
