"""Synthesis: timed note events -> General MIDI file -> audio, checked and normalised.

The synthesizer is midirenderer (PyPI; a Rust SoundFont synthesizer, renders at 48 kHz stereo,
16-bit) with pretty_midi's bundled General MIDI soundfont TimGM6mb.sf2 (5.9 MB): no system
package is needed. Any other GM .sf2 (e.g. Debian's fluid-soundfont-gm) can be passed instead.
The 48 kHz render is resampled with a polyphase filter (scipy) to the corpus rate.
"""

from __future__ import annotations

import functools
import io
from math import gcd
from pathlib import Path

import numpy as np

from .config import RENDER_RATE

TARGET_RMS_DBFS = -20.0  # loudness target of every clip (RMS over the clip)
PEAK_LIMIT = 0.89  # -1 dBFS: the gain never pushes a peak above this
SILENT_FRAME_DBFS = -60.0  # a 100 ms frame this quiet (after normalisation) counts as silent
MAX_SILENT_SHARE = 0.25  # a clip with more silent frames than this is rejected


class RenderError(RuntimeError):
    """A clip that rendered to silence, NaN or nothing: skipped and logged, never kept."""


def soundfont_path(path: str | None = None) -> Path:
    """The .sf2 to use: `path`, else pretty_midi's bundled TimGM6mb.sf2."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"soundfont {path} not found: pass an existing .sf2 file or None for pretty_midi's bundled one"
            )
        return Path(path)
    try:
        import pretty_midi
    except ImportError as e:
        raise ImportError(
            "accelerando.data needs pretty_midi (it bundles the GM soundfont): pip install pretty_midi==0.2.11.post0"
        ) from e
    sf2 = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not sf2.is_file():
        raise FileNotFoundError(
            f"{sf2} is missing: reinstall pretty_midi (pip install --force-reinstall pretty_midi==0.2.11.post0) or pass soundfont=PATH"
        )
    return sf2


@functools.lru_cache(maxsize=2)
def _soundfont_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def _renderer():
    try:
        import midirenderer
    except ImportError as e:
        raise ImportError(
            "accelerando.data renders with midirenderer: pip install midirenderer==0.1.3"
        ) from e
    return midirenderer


def events_to_midi(events: list[dict]) -> bytes:
    """A Standard MIDI File from per-instrument events (program, is_drum, pan and volume as MIDI
    controller values 0..127, notes of [onset s, offset s, pitch, velocity]). 960 ticks a beat
    at 120 BPM: 0.52 ms resolution."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    for ev in events:
        inst = pretty_midi.Instrument(program=ev["program"], is_drum=ev["is_drum"])
        inst.control_changes.append(pretty_midi.ControlChange(number=10, value=int(ev["pan"]), time=0.0))
        inst.control_changes.append(
            pretty_midi.ControlChange(number=7, value=int(ev.get("volume", 100)), time=0.0)
        )
        for on, off, pitch, vel in ev["notes"]:
            inst.notes.append(
                pretty_midi.Note(velocity=int(vel), pitch=int(pitch), start=float(on), end=float(off))
            )
        pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def render_events(
    events: list[dict], seconds: float, sample_rate: int, channels: int, soundfont: str | None = None
) -> np.ndarray:
    """Render `events` to float32 audio of exactly round(seconds * sample_rate) samples.

    Returns shape (samples,) for mono, (samples, 2) for stereo; RMS normalised to
    TARGET_RMS_DBFS with peaks <= PEAK_LIMIT. Raises RenderError on silence or non-finite audio.
    """
    import soundfile as sf

    sf2 = _soundfont_bytes(str(soundfont_path(soundfont)))
    wav = _renderer().render_wave_from(sf2, events_to_midi(events))
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)  # (samples, 2)
    if rate != RENDER_RATE:
        raise RenderError(f"renderer returned {rate} Hz, expected {RENDER_RATE}")
    n48 = int(round(seconds * RENDER_RATE))
    audio = np.pad(audio[:n48], ((0, max(0, n48 - len(audio))), (0, 0)))  # notes stop at the clip end
    if channels == 1:
        audio = audio.mean(axis=1, keepdims=True)
    if sample_rate != RENDER_RATE:
        from scipy.signal import resample_poly

        g = gcd(sample_rate, RENDER_RATE)
        audio = resample_poly(audio, sample_rate // g, RENDER_RATE // g, axis=0).astype(np.float32)
    n = int(round(seconds * sample_rate))
    audio = np.pad(audio[:n], ((0, max(0, n - len(audio))), (0, 0)))
    fade = min(n, int(0.01 * sample_rate))  # 10 ms fade-out: notes are cut at the clip end
    audio[n - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
    audio = normalise(audio)
    check_audio(audio, sample_rate)
    return audio[:, 0] if channels == 1 else audio


def normalise(audio: np.ndarray) -> np.ndarray:
    """Scale to TARGET_RMS_DBFS, lowered if needed so the peak stays <= PEAK_LIMIT."""
    if not np.all(np.isfinite(audio)):
        raise RenderError("rendered audio holds NaN or inf")
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    if rms < 1e-5:  # -100 dBFS: nothing was synthesized
        raise RenderError(f"rendered audio is silent (RMS {rms:.2e})")
    gain = min(10 ** (TARGET_RMS_DBFS / 20) / rms, PEAK_LIMIT / float(np.abs(audio).max()))
    return (audio * gain).astype(np.float32)


def check_audio(audio: np.ndarray, sample_rate: int) -> None:
    """Reject non-finite audio and clips with more than MAX_SILENT_SHARE silent 100 ms frames."""
    if not np.all(np.isfinite(audio)):
        raise RenderError("audio holds NaN or inf")
    hop = sample_rate // 10
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop, audio.shape[1])
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=(1, 2)) + 1e-20)
    share = float(np.mean(db < SILENT_FRAME_DBFS))
    if share > MAX_SILENT_SHARE:
        raise RenderError(f"{share:.0%} of the clip is silent (> {MAX_SILENT_SHARE:.0%})")
