"""Transient Smearing Ratio: are the generated clip's attacks as sharp and bright as the reference's?

Codecs, vocoders and diffusion decoders tend to soften attacks: high-frequency energy at note
onsets is lost (low-passing) or spread over time (pre-echo, smearing). Both lower the
high-frequency energy found in a short window at each onset, relative to the clip's energy.
It measures dulled attacks only: a reverberant tail spreads attacks in time but adds broadband
energy inside the attack windows, so the ratio does not fall under reverberant smearing
(Chapter 2's calibration), and no claim about smearing should rest on it.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.signal import butter, sosfiltfilt

from ..audio import check_audio, check_pair, to_mono
from .analysis import undefined

CUTOFF_HZ = 4000.0  # "high frequency": above the range of most fundamentals, where attacks live
PRE_SECONDS, POST_SECONDS = 0.010, 0.050  # attack window around each onset (onset frames are ~12 ms apart)


def reference_onsets(ref: np.ndarray, sr: int) -> np.ndarray:
    """Onset times (s) of a mono reference, librosa's spectral-flux detector, backtracked to the
    preceding energy minimum so the window starts before the attack."""
    import librosa

    return librosa.onset.onset_detect(y=ref, sr=sr, units="time", backtrack=True)


def _attack_energy_fraction(x: np.ndarray, mask: np.ndarray, sos: np.ndarray) -> float:
    """Energy of the high-passed x inside the attack windows, over the total energy of x."""
    hf = sosfiltfilt(sos, x)  # zero-phase: the filter does not move the attack in time
    return float(np.sum(hf[mask] ** 2) / np.sum(x**2))


def transient_smearing_ratio(ref: torch.Tensor, gen: torch.Tensor, sr: int, *, onsets=None, cutoff_hz: float = CUTOFF_HZ,
                             name: str = "clip") -> float | None:
    """Transient Smearing Ratio (TSR): 1 = attacks preserved, < 1 smeared or dulled, > 1 harsher.

        TSR = [E_A(h * gen) / E(gen)] / [E_A(h * ref) / E(ref)]

    h: 4th-order Butterworth high-pass at `cutoff_hz`, applied forward-backward (zero phase);
    A: union over onsets t_k of the windows [t_k - 10 ms, t_k + 50 ms]; E_A(x) = sum of x[n]^2
    over samples n in A; E(x) = sum of x[n]^2 over the clip. Normalising by each clip's own energy
    makes TSR invariant to overall gain. Onsets t_k come from the reference (`reference_onsets`)
    unless given. ref and gen: aligned [channels, samples] at `sr`, downmixed to mono.
    Sentinel: None (logged) when the reference has no onsets or no energy above the cutoff at them.
    """
    ref = check_audio(ref, sr, name="reference")
    gen = check_audio(gen, sr, name="generated")
    check_pair(ref, gen, sr, sr, name=f"{name} transients")
    if not cutoff_hz < sr / 2:
        raise ValueError(f"cutoff {cutoff_hz} Hz must be below Nyquist ({sr / 2} Hz)")
    r, g = to_mono(ref).astype(np.float64), to_mono(gen).astype(np.float64)
    times = reference_onsets(r.astype(np.float32), sr) if onsets is None else np.asarray(onsets, dtype=float)
    if times.size == 0:
        return undefined("transient_smearing_ratio", name, "no onsets in the reference")
    mask = np.zeros(len(r), dtype=bool)
    for t in times:
        mask[max(0, int((t - PRE_SECONDS) * sr)):int((t + POST_SECONDS) * sr)] = True
    sos = butter(4, cutoff_hz, btype="highpass", fs=sr, output="sos")
    ref_fraction = _attack_energy_fraction(r, mask, sos)
    if ref_fraction <= 1e-12:
        return undefined("transient_smearing_ratio", name, f"the reference has no energy above {cutoff_hz:.0f} Hz at its onsets")
    return _attack_energy_fraction(g, mask, sos) / ref_fraction
