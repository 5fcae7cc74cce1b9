"""Does the rendered audio carry its ground truth? Figures measured on the audio alone.

- chroma: correlation of the clip's time-summed chroma (librosa constant-Q chroma) with the
  duration-weighted pitch-class histogram of its notes. 1.0 = the same tonal content.
- key: the Krumhansl-Kessler key of that audio chroma against the manifest key.
- beats: with drums, the onset-strength envelope at the ground-truth beats over its mean
  (>1: onsets peak on the beats), and mir_eval's beat F-measure (70 ms window) of librosa's
  beat tracker against the ground-truth beats.
- tempo: librosa's global tempo against the ground truth, counted right within 8% of the BPM
  or of its double, half, triple, third, 3/2 or 2/3 (beat-level ambiguity).

Needs librosa and mir_eval (analysis dependencies; building a corpus needs neither).
"""

from __future__ import annotations

import numpy as np

from ..music import key_correlations
from .corpus import Clip


def pitch_class_histogram(clip: Clip) -> np.ndarray:
    """Seconds each pitch class sounds in the clip's notes (all pitched instruments)."""
    hist = np.zeros(12)
    for on, off, pitch, _ in clip.notes:
        hist[int(pitch) % 12] += off - on
    return hist


def audio_chroma(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Time-summed 12-bin constant-Q chroma of mono or stereo audio (librosa; sharper than
    STFT chroma for low notes)."""
    import librosa

    mono = audio if audio.ndim == 1 else audio.mean(axis=1)
    return librosa.feature.chroma_cqt(y=mono, sr=sample_rate, hop_length=1024).sum(axis=1)


def chroma_correlation(clip: Clip, audio: np.ndarray | None = None) -> float:
    audio = clip.load() if audio is None else audio
    return float(np.corrcoef(audio_chroma(audio, clip.sample_rate), pitch_class_histogram(clip))[0, 1])


def audio_key(chroma: np.ndarray) -> tuple[int, str]:
    """(tonic pitch class, "major"/"minor") of the best KK profile for a chroma vector."""
    corr = key_correlations(chroma)
    mode, tonic = np.unravel_index(np.argmax(corr), corr.shape)
    return int(tonic), ("major", "minor")[mode]


def beat_figures(clip: Clip, audio: np.ndarray | None = None) -> dict:
    """Onset strength at beats over its mean, beat-tracker F-measure, tempo estimate."""
    import librosa
    import mir_eval

    audio = clip.load() if audio is None else audio
    mono = audio if audio.ndim == 1 else audio.mean(axis=1)
    sr, hop = clip.sample_rate, 256
    env = librosa.onset.onset_strength(y=mono, sr=sr, hop_length=hop)
    times = librosa.times_like(env, sr=sr, hop_length=hop)
    near = [env[np.abs(times - b) <= 0.03].max() for b in clip.beats]
    tempo, frames = librosa.beat.beat_track(onset_envelope=env, sr=sr, hop_length=hop)
    est = librosa.frames_to_time(frames, sr=sr, hop_length=hop)
    return {
        "onset_ratio": float(np.mean(near) / env.mean()),
        # mir_eval's beat F-measure (70 ms window); no trimming of the first 5 s in 10 s clips
        "beat_f": float(mir_eval.beat.f_measure(np.array(clip.beats), est, f_measure_threshold=0.07)),
        "tempo_est": float(np.atleast_1d(tempo)[0]),
        "tempo_ok": tempo_ok(float(np.atleast_1d(tempo)[0]), clip.tempo_bpm),
    }


def tempo_ok(estimate: float, truth: float, tol: float = 0.08) -> bool:
    return any(abs(estimate - truth * f) <= tol * truth * f for f in (1, 2, 0.5, 1.5, 2 / 3, 3, 1 / 3))


def validate(clips: list[Clip]) -> dict:
    """Per-corpus summary of the figures above (means, and shares for key and tempo)."""
    chroma, key_hits, beat = [], [], []
    for clip in clips:
        audio = clip.load()
        c = audio_chroma(audio, clip.sample_rate)
        chroma.append(float(np.corrcoef(c, pitch_class_histogram(clip))[0, 1]))
        key_hits.append(audio_key(c) == (clip.key["pitch_class"], clip.key["mode"]))
        if clip.meta["drums"]:
            beat.append(beat_figures(clip, audio))
    out = {
        "clips": len(clips),
        "chroma_corr_mean": float(np.mean(chroma)),
        "chroma_corr_median": float(np.median(chroma)),
        "chroma_corr_p10": float(np.percentile(chroma, 10)),
        "audio_key_matches_truth": float(np.mean(key_hits)),
    }
    if beat:
        out |= {
            "drum_clips": len(beat),
            "onset_ratio_at_beats_mean": float(np.mean([b["onset_ratio"] for b in beat])),
            "beat_f_measure_mean": float(np.mean([b["beat_f"] for b in beat])),
            "tempo_accuracy": float(np.mean([b["tempo_ok"] for b in beat])),
        }
    return out
