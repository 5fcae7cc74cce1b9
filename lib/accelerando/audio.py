"""Audio I/O and validation shared by the whole library.

Conventions, everywhere in accelerando:
- a waveform is a float32 `torch.Tensor` of shape [channels, samples], values in [-1, 1];
- a sample rate `sr` is an int in Hz, always passed next to the waveform it describes;
- mono vs stereo: loading keeps the file's channels unless `channels` is given (1 averages the
  channels, 2 duplicates a mono file). Metrics downmix to mono with `to_mono` unless their
  docstring says they are stereo-aware.

`check_audio` is the one gate every public metric passes its inputs through: it raises an
`AudioError` that names the problem and the fix (empty, silent, NaN/Inf, wrong dtype or shape,
wrong sample rate, too short) and logs clipping as a warning, because clipped audio is still
audio a model produced and should be scored, not refused.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

log = logging.getLogger(__name__)

# Peak below this (about -120 dBFS) counts as digital silence: float32 noise floors of real
# recordings and decoders sit far above it.
SILENCE_PEAK = 1e-6
# |x| at or above this counts as clipped (full scale minus rounding of 16-bit PCM and codecs).
CLIP_LEVEL = 0.999
# Extensions `list_audio` picks up (what libsndfile reads).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


class AudioError(ValueError):
    """Invalid audio input; the message names the problem and how to fix it."""


def _as_tensor(wav: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(wav)) if isinstance(wav, np.ndarray) else wav


def check_audio(
    wav: torch.Tensor | np.ndarray,
    sr: int,
    *,
    name: str = "audio",
    min_seconds: float = 0.0,
    expected_sr: int | None = None,
    allow_silent: bool = False,
) -> torch.Tensor:
    """Validate a waveform [channels, samples] and return it as a float tensor.

    Raises `AudioError` for: not a float tensor/array, not 2-D [channels, samples] (a 1-D array
    or a transposed [samples, channels] one is named as such), no samples, NaN/Inf (with their
    count), all-silent (peak below SILENCE_PEAK; skipped when `allow_silent`), shorter than
    `min_seconds`, and `sr != expected_sr`. Clipping (fraction of samples with |x| >= CLIP_LEVEL)
    is logged as a warning only.
    """
    if not isinstance(wav, (torch.Tensor, np.ndarray)):
        raise AudioError(f"{name}: expected a torch.Tensor or numpy array [channels, samples], got {type(wav).__name__}")
    wav = _as_tensor(wav)
    if not wav.is_floating_point():
        raise AudioError(
            f"{name}: dtype {wav.dtype} is not floating point; integer PCM must be scaled to [-1, 1] "
            f"first, e.g. wav.float() / 32768 for int16 (load_audio does this)"
        )
    if wav.ndim != 2:
        hint = "add a channel axis with wav[None]" if wav.ndim == 1 else "pass one clip at a time"
        raise AudioError(f"{name}: expected shape [channels, samples], got {tuple(wav.shape)}: {hint}")
    channels, samples = wav.shape
    if channels > 8 and samples <= 8:
        raise AudioError(f"{name}: shape {tuple(wav.shape)} looks like [samples, channels]: transpose it (wav.T)")
    if channels == 0 or samples == 0:
        raise AudioError(f"{name}: empty audio (shape {tuple(wav.shape)}): the file or the generator produced no samples")
    if not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise AudioError(f"{name}: sample rate must be a positive int in Hz, got {sr!r}")
    if expected_sr is not None and sr != expected_sr:
        raise AudioError(
            f"{name}: sample rate {sr} Hz does not match the expected {expected_sr} Hz: "
            f"resample first with accelerando.audio.resample(wav, {sr}, {expected_sr})"
        )
    bad = int((~torch.isfinite(wav)).sum())
    if bad:
        raise AudioError(
            f"{name}: {bad} of {wav.numel()} samples are NaN or Inf: the generator diverged or a "
            f"decoder overflowed; fix the source (torch.nan_to_num would hide the failure)"
        )
    if samples < min_seconds * sr:
        raise AudioError(
            f"{name}: {samples / sr:.3f} s is shorter than the {min_seconds} s this metric needs: "
            f"use longer clips or a metric with a shorter window"
        )
    peak = float(wav.abs().max())
    if peak < SILENCE_PEAK and not allow_silent:
        raise AudioError(
            f"{name}: audio is all silent (peak {peak:.2e}); many metrics are undefined on silence "
            f"(spectral ratios, SI-SDR, key, tempo): drop the clip or check the generator's output"
        )
    clipped = float((wav.abs() >= CLIP_LEVEL).float().mean())
    if clipped > 0:
        log.warning("%s: %.3f%% of samples are clipped (|x| >= %s); scoring it as is", name, 100 * clipped, CLIP_LEVEL)
    return wav


def check_pair(ref: torch.Tensor, gen: torch.Tensor, sr_ref: int, sr_gen: int, *, name: str = "pair") -> None:
    """Check that two clips can be compared sample by sample: same sample rate, same length.

    Raises `AudioError` naming both rates or both lengths (in samples and seconds).
    """
    if sr_ref != sr_gen:
        raise AudioError(
            f"{name}: reference is {sr_ref} Hz but generated is {sr_gen} Hz: resample one with "
            f"accelerando.audio.resample, or load both with load_audio(path, sample_rate=...)"
        )
    if ref.shape[-1] != gen.shape[-1]:
        raise AudioError(
            f"{name}: lengths differ, reference {ref.shape[-1]} samples ({ref.shape[-1] / sr_ref:.3f} s) vs "
            f"generated {gen.shape[-1]} samples ({gen.shape[-1] / sr_gen:.3f} s): fidelity metrics need "
            f"aligned clips of equal length (crop with match_length if the difference is padding)"
        )


def match_length(ref: torch.Tensor, gen: torch.Tensor, sr: int, *, tolerance_seconds: float = 0.05):
    """Crop two aligned clips to their common length when they differ by at most `tolerance_seconds`.

    Codecs and vocoders pad by up to a frame (EnCodec: 20 ms at 50 Hz), which is not a fidelity
    error; larger differences are (the clips are probably not aligned) and raise `AudioError`.
    """
    diff = abs(ref.shape[-1] - gen.shape[-1])
    if diff > tolerance_seconds * sr:
        check_pair(ref, gen, sr, sr)  # raises with both lengths
    n = min(ref.shape[-1], gen.shape[-1])
    return ref[..., :n], gen[..., :n]


def to_mono(wav: torch.Tensor | np.ndarray) -> np.ndarray:
    """Downmix [channels, samples] to a float32 numpy array [samples] (mean over channels)."""
    wav = _as_tensor(wav)
    return wav.float().mean(dim=0).numpy() if wav.ndim == 2 else wav.float().numpy()


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Polyphase resampling of [channels, samples] from `orig_sr` to `new_sr` Hz (scipy).

    scipy's resample_poly applies a Kaiser-windowed FIR low-pass at the lower Nyquist, so
    downsampling does not alias. Returns float32 [channels, ceil(samples * new_sr / orig_sr)].
    """
    if orig_sr == new_sr:
        return wav
    ratio = Fraction(int(new_sr), int(orig_sr))
    out = resample_poly(_as_tensor(wav).double().numpy(), ratio.numerator, ratio.denominator, axis=-1)
    return torch.from_numpy(out.astype(np.float32))


def load_audio(path: str | Path, sample_rate: int | None = None, channels: int | None = None) -> tuple[torch.Tensor, int]:
    """Read an audio file into (wav float32 [channels, samples], sr in Hz).

    `sample_rate` resamples (polyphase) to that rate; `channels=1` downmixes by averaging,
    `channels=2` duplicates a mono file (a file with more channels than asked is downmixed to
    mono first). Integer PCM is scaled to [-1, 1] by libsndfile.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file at {path}")
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [samples, channels]
    wav = torch.from_numpy(data.T.copy())
    if channels is not None:
        if channels not in (1, 2):
            raise AudioError(f"{path.name}: channels must be 1 or 2, got {channels}")
        if wav.shape[0] != channels:
            mono = wav.mean(dim=0, keepdim=True)
            wav = mono if channels == 1 else mono.expand(2, -1).clone()
    if sample_rate is not None and sample_rate != sr:
        wav, sr = resample(wav, sr, sample_rate), sample_rate
    return wav, int(sr)


def save_audio(path: str | Path, wav: torch.Tensor | np.ndarray, sr: int, *, subtype: str | None = None) -> Path:
    """Write [channels, samples] to `path` (format from the extension; WAV is 32-bit float by
    default so that a save/load round trip is exact). Returns the path."""
    path = Path(path)
    wav = check_audio(wav, sr, name=path.name, allow_silent=True)
    if subtype is None and path.suffix.lower() == ".wav":
        subtype = "FLOAT"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.detach().cpu().float().numpy().T, sr, subtype=subtype)
    return path


def list_audio(folder: str | Path) -> dict[str, Path]:
    """Audio files directly in `folder`, keyed by file stem (how the metrics CLI pairs clips)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise AudioError(f"{folder}: two files share the name {p.stem!r} ({stems[p.stem].name}, {p.name}); rename one")
        stems[p.stem] = p
    return stems


__all__ = [
    "AUDIO_EXTENSIONS", "CLIP_LEVEL", "SILENCE_PEAK", "AudioError", "check_audio", "check_pair", "list_audio",
    "load_audio", "match_length", "resample", "save_audio", "to_mono",
]
