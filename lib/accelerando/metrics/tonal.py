"""Tonality: Krumhansl–Schmuckler key estimation, Key Stability Index, MIREX key score.

Key finding (Krumhansl 1990, ch. 4): correlate a 12-bin chroma vector with the 24 rotations of
the Krumhansl–Kessler major and minor probe-tone profiles; the best Pearson correlation names the
key. Chroma is librosa's constant-Q chroma at 22.05 kHz (512-sample hop, 23 ms frames).
Key names use mir_eval's spelling: "C major", "F# minor".
"""

from __future__ import annotations

import numpy as np
import torch

from ..music import MODES, PITCH_CLASSES, key_correlations
from .analysis import ANALYSIS_SR, analysis_signal, undefined

HOP = 512
WINDOW_SECONDS = 4.0
# Frames quieter than this below the clip's loudest frame carry no key; they are left out.
SILENT_FRAME_DB = 60.0


def same_key(a: str, b: str) -> bool:
    """Enharmonic-safe key equality ("Bb major" == "A# major"), via mir_eval's key parser."""
    import mir_eval

    for k in (a, b):
        mir_eval.key.validate_key(k)  # ValueError naming the malformed key
    return mir_eval.key.split_key_string(a) == mir_eval.key.split_key_string(b)


def key_from_chroma(chroma: np.ndarray) -> tuple[str, float]:
    """(key name, Pearson correlation) for a chroma vector [12]; ValueError if it is flat."""
    c = np.asarray(chroma, dtype=float)
    if c.std() == 0:
        raise ValueError("flat chroma vector (silence or white noise) has no key")
    corr = key_correlations(c)  # [2 modes, 12 tonics] Pearson r
    mode, tonic = np.unravel_index(int(np.argmax(corr)), corr.shape)
    return f"{PITCH_CLASSES[tonic]} {MODES[mode]}", float(corr[mode, tonic])


def chromagram(wav: torch.Tensor, sr: int, *, name: str = "clip") -> np.ndarray:
    """Constant-Q chroma [12, frames] with near-silent frames (SILENT_FRAME_DB below the peak
    frame) zeroed: librosa normalises every frame, so silence would otherwise vote."""
    import librosa

    y = analysis_signal(wav, sr, name=name)
    chroma = librosa.feature.chroma_cqt(y=y, sr=ANALYSIS_SR, hop_length=HOP)
    rms = librosa.feature.rms(y=y, hop_length=HOP)[0][: chroma.shape[1]]
    loud = librosa.amplitude_to_db(rms, ref=np.max) > -SILENT_FRAME_DB
    return chroma * loud[None, : chroma.shape[1]]


def estimate_key(wav: torch.Tensor, sr: int, *, name: str = "clip") -> str:
    """Global key of a clip: Krumhansl–Schmuckler on its mean chroma."""
    return key_from_chroma(chromagram(wav, sr, name=name).mean(axis=1))[0]


def window_keys(wav: torch.Tensor, sr: int, *, window_seconds: float = WINDOW_SECONDS, name: str = "clip") -> list[str]:
    """Key of each `window_seconds` window (hop half a window), windows of silence left out."""
    chroma = chromagram(wav, sr, name=name)
    win = int(round(window_seconds * ANALYSIS_SR / HOP))
    keys = []
    for start in range(0, chroma.shape[1] - win + 1, max(1, win // 2)):
        mean = chroma[:, start:start + win].mean(axis=1)
        if mean.std() > 0:
            keys.append(key_from_chroma(mean)[0])
    return keys


def key_stability(wav: torch.Tensor, sr: int, *, ref_key: str | None = None, window_seconds: float = WINDOW_SECONDS,
                  name: str = "clip") -> float | None:
    """Key Stability Index (KSI), in [0, 1], 1 = every window in one key.

        KSI = (1 / W) * sum_w [ key(window w) == K ]

    over the W windows of `window_seconds` (hop half a window), key(.) the Krumhansl–Schmuckler
    key of the window's mean chroma, K = `ref_key` if given, else the clip's own global key;
    keys compare enharmonically (Bb major == A# major).
    Sentinel: None (logged) for a clip shorter than one window or with no non-silent window.
    """
    if wav.shape[-1] < window_seconds * sr:
        return undefined("key_stability", name, f"{wav.shape[-1] / sr:.2f} s is shorter than one {window_seconds} s window")
    keys = window_keys(wav, sr, window_seconds=window_seconds, name=name)
    if not keys:
        return undefined("key_stability", name, "no window with tonal content")
    target = ref_key or estimate_key(wav, sr, name=name)
    return float(np.mean([same_key(k, target) for k in keys]))


def key_score(wav: torch.Tensor, sr: int, ref_key: str, *, name: str = "clip") -> float:
    """MIREX weighted key score (mir_eval.key.weighted_score) of the clip's global key against
    `ref_key`: 1 same key, 0.5 fifth, 0.3 relative, 0.2 parallel, 0 otherwise."""
    import mir_eval

    return float(mir_eval.key.weighted_score(ref_key, estimate_key(wav, sr, name=name)))
