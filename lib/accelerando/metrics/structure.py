"""Structure: a simple novelty-based segmenter and boundary hit-rate F-measures (mir_eval).

Segmenter (Foote 2000): frame features (20 MFCCs for timbre + 12 chroma for harmony, each
dimension z-scored over the clip), a cosine self-similarity matrix, a Gaussian-tapered checkerboard
kernel slid along its diagonal gives a novelty curve, and its prominent peaks are the boundaries.
Deliberately simple: it is a probe of whether generated music has sections where the reference
does, not a state-of-the-art segmenter.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.signal import find_peaks

from .analysis import ANALYSIS_SR, analysis_signal, undefined

HOP = 2048  # 93 ms frames: sections last seconds
KERNEL_SECONDS = 3.0  # half-width of the checkerboard kernel: context on each side of a boundary
MIN_SEGMENT_SECONDS = 2.0
PEAK_PROMINENCE = 0.3  # of the novelty curve's maximum: chord changes inside a section stay below
WINDOWS = (0.5, 3.0)  # seconds, MIREX's boundary hit-rate tolerances


def _features(y: np.ndarray) -> np.ndarray:
    """[frames, 32]: 20 MFCCs + 12 chroma, each z-scored over time."""
    import librosa

    mfcc = librosa.feature.mfcc(y=y, sr=ANALYSIS_SR, n_mfcc=20, hop_length=HOP)
    chroma = librosa.feature.chroma_cqt(y=y, sr=ANALYSIS_SR, hop_length=HOP)
    n = min(mfcc.shape[1], chroma.shape[1])
    f = np.concatenate([mfcc[:, :n], chroma[:, :n]]).T
    return (f - f.mean(0)) / (f.std(0) + 1e-8)


def novelty_curve(features: np.ndarray, half_width: int) -> np.ndarray:
    """Foote novelty [frames] of features [frames, dim], normalised to a maximum of 1."""
    unit = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-8)
    ssm = unit @ unit.T  # [frames, frames] cosine similarity
    # Checkerboard: +1 within past and within future, -1 across, tapered by a Gaussian.
    idx = np.arange(-half_width, half_width) + 0.5
    taper = np.exp(-0.5 * (idx / (0.5 * half_width)) ** 2)
    kernel = np.outer(np.sign(idx), np.sign(idx)) * np.outer(taper, taper)
    padded = np.pad(ssm, half_width)  # zero similarity beyond the clip
    n = len(ssm)
    nov = np.array([np.sum(kernel * padded[t:t + 2 * half_width, t:t + 2 * half_width]) for t in range(n)])
    nov = np.clip(nov, 0, None)
    return nov / nov.max() if nov.max() > 0 else nov


def segment_boundaries(wav: torch.Tensor, sr: int, *, name: str = "clip") -> np.ndarray:
    """Interior section boundaries in seconds [boundaries] (0 and the end are not included)."""
    y = analysis_signal(wav, sr, name=name)
    fps = ANALYSIS_SR / HOP
    feats = _features(y)
    nov = novelty_curve(feats, max(2, int(KERNEL_SECONDS * fps)))
    peaks, _ = find_peaks(nov, distance=max(1, int(MIN_SEGMENT_SECONDS * fps)), prominence=PEAK_PROMINENCE)
    times = peaks / fps
    duration = len(y) / ANALYSIS_SR
    return times[(times >= MIN_SEGMENT_SECONDS / 2) & (times <= duration - MIN_SEGMENT_SECONDS / 2)]


def _intervals(boundaries: np.ndarray, duration: float) -> np.ndarray:
    edges = np.concatenate([[0.0], boundaries, [duration]])
    return np.stack([edges[:-1], edges[1:]], axis=1)


def segmentation_f(wav: torch.Tensor, sr: int, ref_boundaries, *, windows=WINDOWS, name: str = "clip") -> dict[float, float] | None:
    """Boundary hit-rate F-measure at each tolerance in `windows` (s): {0.5: F, 3.0: F}.

    mir_eval.segment.detection with trim=True: the clip's start and end, which always match, are
    not counted. `ref_boundaries` in seconds; 0 and values at or past the end are ignored.
    Sentinel: None (logged) when the reference has no interior boundary.
    """
    import mir_eval

    duration = wav.shape[-1] / sr
    ref = np.sort(np.asarray(ref_boundaries, dtype=float))
    ref = ref[(ref > 1e-3) & (ref < duration - 1e-3)]
    if ref.size == 0:
        return undefined("segmentation_f", name, "the reference has no interior boundary")
    est = segment_boundaries(wav, sr, name=name)
    ref_iv, est_iv = _intervals(ref, duration), _intervals(est, duration)
    return {w: float(mir_eval.segment.detection(ref_iv, est_iv, window=w, trim=True)[2]) for w in windows}
