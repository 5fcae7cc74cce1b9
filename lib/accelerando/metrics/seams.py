"""Seams: does an edited region join the track without a click or a jump?

A splice that does not match its neighbourhood shows as a burst of spectral flux (the rise of the
magnitude spectrum from one STFT frame to the next) at the seam. `seam_jump` is the largest flux
within `radius_s` of a seam divided by the median flux of the whole track: about the ratio a
typical onset in the track reaches, and far above it for a hard cut between unrelated audio.
Compare an edit's seams with the unedited track at the same positions (the music's own flux
there) and with a naive splice (what a click looks like).
"""

from __future__ import annotations

import numpy as np

from .fidelity import stft

FLUX_FFT, FLUX_HOP = 1024, 256


def spectral_flux(y: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(times [frames] in s, flux [frames]) of mono y [samples]: half-wave rectified rise of the
    log-compressed magnitude spectrum, summed over bins."""
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"spectral_flux takes mono audio [samples], got shape {y.shape}: average the channels first")
    if not np.isfinite(y).all():
        raise ValueError("audio contains NaN or inf: the seam measure needs finite samples")
    mag = np.log1p(100 * np.abs(stft(y, FLUX_FFT, FLUX_HOP, FLUX_FFT)))
    flux = np.maximum(np.diff(mag, axis=1), 0).sum(axis=0)
    times = (np.arange(flux.size) + 1) * FLUX_HOP / sr
    return times, flux


def seam_jump(y: np.ndarray, sr: int, seams_s: list[float], radius_s: float = 0.03) -> list[float]:
    """Per seam (in seconds): max spectral flux within radius_s of it / the track's median flux."""
    times, flux = spectral_flux(y, sr)
    typical = float(np.median(flux))
    if typical <= 0:
        raise ValueError("the track's median spectral flux is 0 (silence?): seams cannot be judged against it")
    out = []
    for s in seams_s:
        near = np.abs(times - s) <= radius_s
        if not near.any():
            raise ValueError(f"seam at {s} s is outside the track of {times[-1]:.2f} s")
        out.append(float(flux[near].max() / typical))
    return out
