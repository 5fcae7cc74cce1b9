"""Musical controls: the beat grid, metre and key a generator is asked to follow, as frame features.

A caption says "at 92 BPM, in 3/4, in G major"; a corpus clip knows its beats, downbeats and key.
Both become the same feature matrix at the latent frame rate, which Stable-Audio-Lite and
MusicGen-Lite add to their inputs: a periodic signal a small model can lock its onsets to, where a
number inside a sentence gave it nothing to lock to.

    controls = MusicalControls.from_caption("A chorale in G major for brass at 92 BPM, in 3/4", seconds=10)
    controls = MusicalControls.from_clip(clip)            # the clip's true beats, downbeats and key
    features = controls.features(frames=215, frame_rate=21.53)    # [CONTROL_CHANNELS, 215] float32

Channels (CONTROL_CHANNELS = 18): sin and cos of the beat phase and of the bar phase (phase 0 at a
beat / downbeat, rising linearly to 1 at the next), a beat and a downbeat indicator (1 in the frame
a beat starts in), and the key as the Krumhansl-Kessler profile of its mode rotated to its tonic,
standardised (12 values). A part the controls do not give (no tempo, no key) is zero, as are the
frames past `seconds`: zero is what the models see for "not controlled".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .music import KK_MAJOR, KK_MINOR, MODES

CONTROL_CHANNELS = 18
BEAT_CHANNELS = slice(0, 6)  # beat sin/cos, bar sin/cos, beat and downbeat indicators
KEY_CHANNELS = slice(6, 18)

_NATURAL = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ACCIDENTAL = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1}
_KEY = re.compile(r"\b([A-G])([#♯b♭]?)\s+(major|minor)\b")
_STEADY = re.compile(r"\bat (\d+(?:\.\d+)?) BPM\b", re.IGNORECASE)
_RAMP = re.compile(r"\b(?:speeding up|slowing down) from (\d+(?:\.\d+)?) to (\d+(?:\.\d+)?) BPM\b", re.IGNORECASE)
_METRE = re.compile(r"\b(\d{1,2})/(1|2|4|8|16)\b")


def beats_per_bar(time_signature: str) -> int:
    """Counted beats per bar of a time signature "n/d": compound metres (6/8, 9/8, 12/8, 6/4) count
    dotted beats (n / 3), 3/8 one beat a bar, every other metre its numerator."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", time_signature)
    if not match:
        raise ValueError(f"time signature {time_signature!r}: write it as 'n/d', e.g. '3/4' or '6/8'")
    n, d = int(match.group(1)), int(match.group(2))
    if n < 1 or d < 1:
        raise ValueError(f"time signature {time_signature!r}: numerator and denominator must be >= 1")
    if n % 3 == 0 and n > 3:
        return n // 3
    if n == 3 and d >= 8:
        return 1
    return n


def beat_grid(bpm_start: float, bpm_end: float, seconds: float) -> np.ndarray:
    """Beat times (seconds) from 0 over [0, seconds) at a tempo moving linearly in time from
    `bpm_start` to `bpm_end` (a steady tempo when they are equal)."""
    if not (bpm_start > 0 and bpm_end > 0):
        raise ValueError(f"tempo {bpm_start} -> {bpm_end} BPM: tempi must be positive")
    times, t = [], 0.0
    while t < seconds:
        times.append(t)
        t += 60.0 / (bpm_start + (bpm_end - bpm_start) * min(t / seconds, 1.0))
    return np.asarray(times)


def key_profile(pitch_class: int, mode: str) -> np.ndarray:
    """The standardised Krumhansl-Kessler profile [12] of a key (tonic pitch class 0 = C)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {MODES}")
    ratings = np.roll(KK_MAJOR if mode == "major" else KK_MINOR, int(pitch_class) % 12)
    return (ratings - ratings.mean()) / ratings.std()


def _phase(times: np.ndarray, events: np.ndarray, period: float) -> np.ndarray:
    """Fraction [0, 1) of the way from the last event to the next at each time, with the grid
    extended before the first and after the last event by the neighbouring interval (`period`
    when there are fewer than two events)."""
    events = np.sort(np.asarray(events, dtype=float))
    first = events[1] - events[0] if len(events) > 1 else period
    last = events[-1] - events[-2] if len(events) > 1 else period
    before = events[0] - first * np.arange(int(np.ceil(max(events[0] - times.min(), 0) / first)) + 1, 0, -1)
    after = events[-1] + last * np.arange(1, int(np.ceil(max(times.max() - events[-1], 0) / last)) + 2)
    grid = np.concatenate([before, events, after])
    i = np.clip(np.searchsorted(grid, times, side="right") - 1, 0, len(grid) - 2)
    return np.clip((times - grid[i]) / (grid[i + 1] - grid[i]), 0.0, 1.0 - 1e-9)


@dataclass(frozen=True)
class MusicalControls:
    """What a generation is asked to follow: beat and downbeat times (seconds from the start), the
    key (tonic pitch class 0-11 and mode), and the span they cover. None: not controlled."""

    beats: tuple[float, ...] | None = None
    downbeats: tuple[float, ...] | None = None
    key: tuple[int, str] | None = None
    seconds: float | None = None  # frames past this are zero; None: every frame

    def __post_init__(self):
        if self.beats is not None and len(self.beats) < 2:
            raise ValueError(f"{len(self.beats)} beat(s): a beat grid needs at least two beats")
        if self.key is not None and (self.key[1] not in MODES or not 0 <= int(self.key[0]) < 12):
            raise ValueError(f"key {self.key}: use (pitch class 0-11, 'major' or 'minor')")

    @classmethod
    def from_caption(cls, caption: str, seconds: float) -> MusicalControls:
        """The tempo ("at 92 BPM", "slowing down from 57 to 48 BPM"), metre ("3/4"; 4/4 if none is
        named) and key ("G major", "Bb minor") a caption states, over `seconds`. Whatever it does
        not state stays uncontrolled (no tempo: no beat grid; no key: no key)."""
        if not seconds > 0:
            raise ValueError(f"seconds={seconds}: controls need a positive duration")
        beats = downbeats = key = None
        steady, ramp = _STEADY.search(caption), _RAMP.search(caption)
        if ramp:
            bpm_start, bpm_end = float(ramp.group(1)), float(ramp.group(2))
        elif steady:
            bpm_start = bpm_end = float(steady.group(1))
        if ramp or steady:
            grid = beat_grid(bpm_start, bpm_end, max(seconds, 120.0 / min(bpm_start, bpm_end)))
            metre = _METRE.search(caption)
            per_bar = beats_per_bar(metre.group(0)) if metre else 4
            beats, downbeats = tuple(grid.tolist()), tuple(grid[::per_bar].tolist())
        named = _KEY.search(caption)
        if named:
            tonic = (_NATURAL[named.group(1)] + _ACCIDENTAL[named.group(2)]) % 12
            key = (tonic, named.group(3))
        return cls(beats, downbeats, key, float(seconds))

    @classmethod
    def from_clip(cls, clip) -> MusicalControls:
        """A corpus clip's annotated beats, downbeats and key (`accelerando.data` clips)."""
        beats = tuple(float(b) for b in clip.beats) if len(clip.beats) >= 2 else None
        downbeats = tuple(float(b) for b in clip.downbeats) if beats and len(clip.downbeats) else None
        key = (int(clip.key["pitch_class"]), clip.key["mode"]) if clip.key else None
        return cls(beats, downbeats, key, float(clip.seconds))

    def features(self, frames: int, frame_rate: float) -> np.ndarray:
        """[CONTROL_CHANNELS, frames] float32 for frames starting at f / frame_rate seconds."""
        out = np.zeros((CONTROL_CHANNELS, frames), dtype=np.float32)
        start = np.arange(frames) / frame_rate
        if self.beats is not None:
            beats = np.asarray(self.beats)
            period = float(np.median(np.diff(beats)))
            downbeats = np.asarray(self.downbeats if self.downbeats else beats[:1])
            bar = float(np.median(np.diff(downbeats))) if len(downbeats) > 1 else period * 4
            for row, phase in ((0, _phase(start, beats, period)), (2, _phase(start, downbeats, bar))):
                out[row], out[row + 1] = np.sin(2 * np.pi * phase), np.cos(2 * np.pi * phase)
            for row, events in ((4, beats), (5, downbeats)):
                hit = np.floor(np.asarray(events) * frame_rate + 1e-6).astype(int)
                out[row, hit[(hit >= 0) & (hit < frames)]] = 1.0
        if self.key is not None:
            out[KEY_CHANNELS] = key_profile(*self.key)[:, None]
        if self.seconds is not None:
            out[:, start >= self.seconds] = 0.0
        return out


def control_features(controls: list[MusicalControls | None], frames: int, frame_rate: float) -> np.ndarray:
    """[B, CONTROL_CHANNELS, frames] for a batch; None rows are all zero (uncontrolled)."""
    out = np.zeros((len(controls), CONTROL_CHANNELS, frames), dtype=np.float32)
    for row, c in enumerate(controls):
        if c is not None:
            out[row] = c.features(frames, frame_rate)
    return out


def drop_controls(features: torch.Tensor, drop: torch.Tensor | None, p: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Control features [B, F, T] with guidance-dropped rows (`drop` [B] bool) zeroed, and of the
    others a share `p` of the beat channels and, independently, of the key channels."""
    out = features.clone()
    if drop is not None:
        out[drop] = 0
    b = len(out)
    out[torch.rand(b, generator=generator) < p, BEAT_CHANNELS] = 0
    out[torch.rand(b, generator=generator) < p, KEY_CHANNELS] = 0
    return out
