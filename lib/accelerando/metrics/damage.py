"""Controlled damage: degrade a clip by a known amount, to calibrate metrics against it.

A metric is trustworthy when it moves monotonically with the damage it claims to detect. Each
function here takes a mono waveform [samples] at `sr` Hz and one strength in natural units, and
returns a damaged copy of the same length; strength 0 returns the input unchanged. Randomness
(jitter, noise) comes from `seed`, so a calibration is repeatable.

    tempo_jitter   depth (fraction): playback rate wanders by +-depth, smoothly, every ~1 s
    tempo_ramp     end rate / start rate - 1 (fraction): playback speeds up linearly
    detune         cents: the second half is pitch-shifted (phase vocoder, tempo kept)
    modulate       semitones: the second half is transposed (a key change)
    lowpass        cutoff in Hz (0 = none): 8th-order zero-phase Butterworth
    noise          SNR in dB (inf = none): white noise
    band_limit     fraction of STFT bins removed per frame, weakest first, above a 16 kHz cut:
                   the spectral holes and missing top octave of a low-bitrate perceptual codec
    smear          seconds: convolution with an exponentially decaying noise tail (reverb time
                   constant), which smears attacks in time

Tempo damages are varispeed (resampling along a warped time axis), so pitch follows the rate, as
with a wobbling tape; `time_warp` returns the warp so ground-truth beats can be moved with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import signal

DAMAGES: dict[str, Callable] = {}


def damage(name: str):
    def register(fn: Callable) -> Callable:
        DAMAGES[name] = fn
        return fn

    return register


def apply_damage(name: str, wav: np.ndarray, sr: int, strength: float, *, seed: int = 0) -> np.ndarray:
    """Apply the damage `name` at `strength` to a mono waveform [samples]."""
    if name not in DAMAGES:
        raise ValueError(f"unknown damage {name!r}; choose from {sorted(DAMAGES)}")
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"damage takes a mono waveform [samples], got shape {wav.shape}: downmix first")
    out = DAMAGES[name](wav, sr, strength, seed=seed)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError(f"damage {name!r} at {strength} produced non-finite samples")
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Time


def time_warp(rate: np.ndarray) -> np.ndarray:
    """Source time (in samples) read at each output sample, for a playback rate per sample."""
    return np.concatenate([[0.0], np.cumsum(rate[:-1])])


def _varispeed(wav: np.ndarray, rate: np.ndarray) -> np.ndarray:
    src = time_warp(rate)
    return np.interp(src, np.arange(len(wav)), wav, right=0.0)


@damage("tempo_jitter")
def tempo_jitter(wav: np.ndarray, sr: int, depth: float, *, seed: int = 0) -> np.ndarray:
    if depth == 0:
        return wav.copy()
    rng = np.random.default_rng(seed)
    knots = rng.uniform(-depth, depth, size=int(len(wav) / sr) + 2)  # one random rate a second
    rate = 1 + np.interp(np.arange(len(wav)) / sr, np.arange(len(knots)), knots)
    return _varispeed(wav, rate)


@damage("tempo_ramp")
def tempo_ramp(wav: np.ndarray, sr: int, amount: float, *, seed: int = 0) -> np.ndarray:
    rate = 1 + amount * np.linspace(0, 1, len(wav))
    return _varispeed(wav, rate)


# ---------------------------------------------------------------------------------------------
# Pitch


def _shift_second_half(wav: np.ndarray, sr: int, semitones: float) -> np.ndarray:
    if semitones == 0:
        return wav.copy()
    import librosa

    half = len(wav) // 2
    shifted = librosa.effects.pitch_shift(wav, sr=sr, n_steps=semitones)
    out = wav.copy()
    fade = min(half, int(0.05 * sr))  # 50 ms crossfade: a key change, not a click
    ramp = np.linspace(0, 1, fade)
    out[half:half + fade] = (1 - ramp) * wav[half:half + fade] + ramp * shifted[half:half + fade]
    out[half + fade:] = shifted[half + fade:]
    return out


@damage("detune")
def detune(wav: np.ndarray, sr: int, cents: float, *, seed: int = 0) -> np.ndarray:
    return _shift_second_half(wav, sr, cents / 100)


@damage("modulate")
def modulate(wav: np.ndarray, sr: int, semitones: float, *, seed: int = 0) -> np.ndarray:
    return _shift_second_half(wav, sr, semitones)


# ---------------------------------------------------------------------------------------------
# Spectrum


@damage("lowpass")
def lowpass(wav: np.ndarray, sr: int, cutoff_hz: float, *, seed: int = 0) -> np.ndarray:
    if cutoff_hz <= 0 or cutoff_hz >= sr / 2:
        return wav.copy()
    sos = signal.butter(8, cutoff_hz, btype="lowpass", fs=sr, output="sos")
    return signal.sosfiltfilt(sos, wav)


@damage("noise")
def noise(wav: np.ndarray, sr: int, snr_db: float, *, seed: int = 0) -> np.ndarray:
    if math.isinf(snr_db):
        return wav.copy()
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(len(wav))
    n *= np.sqrt(np.mean(wav**2) / np.mean(n**2) / 10 ** (snr_db / 10))
    return wav + n


@damage("band_limit")
def band_limit(wav: np.ndarray, sr: int, fraction: float, *, seed: int = 0, cut_hz: float = 16000.0) -> np.ndarray:
    if fraction == 0:
        return wav.copy()
    if not 0 <= fraction < 1:
        raise ValueError(f"band_limit removes a fraction of bins in [0, 1), got {fraction}")
    n_fft = 2048
    _, _, spec = signal.stft(wav, fs=sr, nperseg=n_fft)
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    spec[freqs >= cut_hz] = 0
    mag = np.abs(spec)
    threshold = np.quantile(mag, fraction, axis=0, keepdims=True)  # per frame: weakest bins go
    spec[mag < threshold] = 0
    _, out = signal.istft(spec, fs=sr, nperseg=n_fft)
    return out[: len(wav)] if len(out) >= len(wav) else np.pad(out, (0, len(wav) - len(out)))


@damage("smear")
def smear(wav: np.ndarray, sr: int, seconds: float, *, seed: int = 0) -> np.ndarray:
    if seconds == 0:
        return wav.copy()
    rng = np.random.default_rng(seed)
    t = np.arange(int(5 * seconds * sr) + 1) / sr  # five time constants: the tail is -43 dB
    tail = rng.standard_normal(len(t)) * np.exp(-t / seconds)
    tail[0] = 0.0
    wet = signal.fftconvolve(wav, tail)[: len(wav)]
    wet *= np.sqrt(np.mean(wav**2) / max(np.mean(wet**2), 1e-20))
    return 0.5 * wav + 0.5 * wet


# ---------------------------------------------------------------------------------------------
# Calibration


def damage_sweep(
    clips: dict[str, tuple[np.ndarray, dict]],
    sr: int,
    damage_name: str,
    levels: list[float],
    metrics: dict[str, Callable],
    *,
    seed: int = 0,
) -> list[dict]:
    """Every metric on every clip at every damage level: one row per (clip, level, metric).

    clips: id -> (mono waveform [samples], ground truth dict). levels: strengths in order of
    increasing severity (the first is usually "no damage"). metrics: name -> fn(ref, damaged, sr,
    truth) returning a float, or None where the metric is undefined for that clip (kept as None).
    """
    rows = []
    for clip_id, (wav, truth) in clips.items():
        for severity, level in enumerate(levels):
            damaged = apply_damage(damage_name, wav, sr, level, seed=seed)
            for metric, fn in metrics.items():
                rows.append({"damage": damage_name, "level": level, "severity": severity, "clip": clip_id,
                             "metric": metric, "value": fn(wav, damaged, sr, truth)})
    return rows


def monotonicity(severity: np.ndarray, values: np.ndarray) -> float:
    """Spearman rank correlation of a metric with damage severity (+1 or -1: perfectly monotone).

    Computed on per-level means, so it asks whether the metric's average moves one way as the
    damage grows; NaN-free inputs only.
    """
    from scipy import stats

    if len(severity) < 2 or np.ptp(values) == 0:
        return 0.0
    return float(stats.spearmanr(severity, values).statistic)


def moves_with_damage(severity: np.ndarray, values: np.ndarray, *, higher_is_worse: bool) -> bool:
    """Verdict: does the metric move strictly monotonically *and the right way* as damage grows?

    higher_is_worse: True for distances (LSD, MR-STFT, mel), False for scores where 1 or more is
    healthy (SI-SDR, beat consistency, key stability, transient smearing ratio). A metric that
    rises perfectly under damage when it should fall has rho = +1, |rho| = 1, and fails here.
    """
    rho = monotonicity(severity, values)
    return rho > 1 - 1e-9 if higher_is_worse else rho < -1 + 1e-9
