"""Artifacts a learned decoder leaves in its audio, measured on the audio alone.

`frame_comb_fraction`: a convolutional decoder that upsamples latent frames by a hop of H samples
renders a constant stretch of latents as a waveform that repeats every H samples. Its spectrum is
then a comb: lines at k x sr / H Hz (the latent frame rate and its multiples), whatever notes the
input held. The fraction of a clip's energy that lies on that comb tells pitch-carrying output
from frame-periodic output: music puts about 2 tol_hz / (sr / H) of its energy there by chance
(0.19 for 2 Hz at 21.5 frames/s), a decoder that has not learnt to carry phase from frame to
frame puts nearly all of it there.
"""

from __future__ import annotations

import numpy as np
import torch

from ..audio import check_audio, to_mono

COMB_FFT = 2**17  # 5.9 s at 22.05 kHz: 0.17 Hz bins resolve a +-2 Hz tolerance around each line
BAND_FLOOR = 1e-6  # -60 dB of the clip's energy


def frame_comb_fraction(wav: torch.Tensor | np.ndarray, sr: int, frame_rate_hz: float, *,
                        band_hz: tuple[float, float] = (60.0, 3000.0), tol_hz: float = 2.0) -> float | None:
    """Share of the energy of `wav` [channels, samples] at `sr` Hz, within `band_hz`, that lies
    within `tol_hz` of a multiple of `frame_rate_hz` (sr / hop of the decoder, e.g. 22050 / 1024).

    One Hann-windowed FFT of the first COMB_FFT samples (the clip is zero-padded when shorter; it
    must last at least 2 / tol_hz seconds, 1 s at the default, or the window's main lobe is wider
    than the tolerance). Keep band_hz above tol_hz, or DC counts as a line.
    Returns None for a clip whose band holds less than BAND_FLOOR of its energy (nothing to locate
    there, only window leakage); silent or NaN
    audio raises `accelerando.audio.AudioError`.
    """
    if not 0 < tol_hz < frame_rate_hz / 2:
        raise ValueError(f"tol_hz={tol_hz} must lie in (0, frame_rate_hz / 2 = {frame_rate_hz / 2}), "
                         "or every bin is on the comb")
    lo, hi = band_hz
    if not 0 <= lo < hi <= sr / 2:
        raise ValueError(f"band_hz={band_hz} must lie within 0 .. {sr / 2} Hz (the Nyquist frequency at sr={sr})")
    # The Hann window's main lobe is +-2 sr / N Hz wide: shorter clips smear a line past tol_hz.
    x = to_mono(check_audio(wav, sr, name="audio", min_seconds=2.0 / tol_hz)).astype(np.float64)[:COMB_FFT]
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=COMB_FFT)) ** 2
    freqs = np.fft.rfftfreq(COMB_FFT, 1.0 / sr)
    in_band = (freqs >= lo) & (freqs <= hi)
    total = power[in_band].sum()
    if total <= BAND_FLOOR * power.sum():  # only window leakage in the band
        return None
    off_line = np.abs(freqs - np.round(freqs / frame_rate_hz) * frame_rate_hz)
    return float(power[in_band & (off_line <= tol_hz)].sum() / total)
