"""The corpus configuration: a validated dataclass, its presets, its cache key and the cache root.

A `CorpusConfig` is data (torchao/diffusers style): every field has a documented default,
`__post_init__` refuses impossible values with a message that names the fix, and
`config_to_dict` gives the JSON that both the manifest and the cache key are made from. Two
configs with the same dict build the same corpus, bit for bit; any change gives another key
and so another folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# Bump when a change in this package changes what a build produces for the same config: the
# cache key includes it, so stale folders are never reused.
DATA_VERSION = 2  # 2: scores read at sounding pitch (transposing instruments, ottavas)

# What the renderer makes natively (midirenderer renders at 48 kHz): higher would be empty
# spectrum; below 16 kHz too little of the timbre is left to be music training data.
RENDER_RATE = 48_000
MIN_RATE = 16_000

# Music genres of the music21 corpus this package knows (see `scores.GENRES`), with default
# weights: the share of clips each gets when its works suffice.
DEFAULT_GENRES: dict[str, float] = {
    "chorale": 0.25,  # Bach, 4 voices
    "renaissance": 0.15,  # Palestrina masses, 4-6 voices
    "madrigal": 0.08,  # Monteverdi, 5 voices
    "medieval": 0.04,  # trecento and Ciconia, 2-3 voices
    "string_quartet": 0.15,  # Haydn, Mozart, Beethoven
    "folk_song": 0.15,  # Essen collection, monophonic
    "fiddle_tune": 0.18,  # Ryan's Mammoth, O'Neill's, Aird's, fife tunes; monophonic
}

ENSEMBLES = (
    "string_quartet",
    "string_orchestra",
    "brass",
    "woodwinds",
    "saxophones",
    "piano",
    "organ",
    "harpsichord",
    "guitars",
    "choir",
    "mallets",
    "synth",
    "chamber_mix",
)


@dataclass
class CorpusConfig:
    """What to build: how many clips, how long, at what rate, and how to vary them.

    Units: `seconds` in seconds, `sample_rate` in Hz, tempi in BPM of the score's beat (a
    quarter in 4/4, a dotted quarter in 6/8, a half note in 4/2), `transpose` in semitones.
    """

    n_clips: int = 200
    seconds: float = 10.0
    sample_rate: int = 32_000  # 32 kHz for MusicGen/EnCodec; use 44_100 for Stable Audio
    channels: int = 1  # 1 (mono) or 2 (stereo: parts panned across the field)
    seed: int = 0
    audio_format: str = "flac"  # "flac" (24-bit PCM, ~3x smaller) or "wav" (32-bit float)
    genres: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GENRES))
    ensembles: tuple[str, ...] = ENSEMBLES  # drawn uniformly per clip
    clips_per_work: int = 3  # at most this many excerpts (non-overlapping) from one work
    # None: each genre's own range (`scores.GENRES`); else one (low, high) range for all
    tempo_bpm: tuple[float, float] | None = None
    tempo_ramp_prob: float = 0.25  # share of clips whose tempo changes linearly within the clip
    tempo_ramp_max: float = 0.15  # largest relative change over a ramped clip (0.15 = +-15%)
    transpose: int = 5  # semitones: each clip is shifted by a uniform draw in [-transpose, +transpose]
    drums_prob: float = 0.6  # share of clips with a GM drum part (channel 10) following the metre
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    workers: int = 2  # processes for parsing and rendering (the machine has 2 cores)
    soundfont: str | None = None  # None: pretty_midi's bundled TimGM6mb.sf2 (General MIDI)

    def __post_init__(self) -> None:
        self.genres = dict(self.genres)
        self.ensembles = tuple(self.ensembles)
        if self.tempo_bpm is not None:
            self.tempo_bpm = (float(self.tempo_bpm[0]), float(self.tempo_bpm[1]))
        _check(
            isinstance(self.n_clips, int) and self.n_clips >= 1,
            f"n_clips={self.n_clips!r}: ask for at least 1 clip",
        )
        _check(
            self.seconds > 0, f"seconds={self.seconds}: a clip must last more than 0 s (10.0 is the default)"
        )
        _check(
            self.seconds <= 60,
            f"seconds={self.seconds}: clips above 60 s leave too few excerpts per score; use <= 60",
        )
        _check(
            MIN_RATE <= self.sample_rate <= RENDER_RATE,
            f"sample_rate={self.sample_rate} Hz: use {MIN_RATE}..{RENDER_RATE} Hz "
            f"(32000 for MusicGen, 44100 for Stable Audio; the synthesizer renders at {RENDER_RATE})",
        )
        _check(self.channels in (1, 2), f"channels={self.channels}: use 1 (mono) or 2 (stereo)")
        _check(
            self.audio_format in ("flac", "wav"), f"audio_format={self.audio_format!r}: use 'flac' or 'wav'"
        )
        from .scores import GENRES  # here, not at import: scores imports nothing heavy either

        unknown = sorted(set(self.genres) - set(GENRES))
        _check(not unknown, f"unknown genres {unknown}: choose from {sorted(GENRES)}")
        _check(
            self.genres and all(w >= 0 for w in self.genres.values()) and sum(self.genres.values()) > 0,
            f"genres={self.genres}: give at least one genre a positive weight",
        )
        bad = sorted(set(self.ensembles) - set(ENSEMBLES))
        _check(
            self.ensembles and not bad, f"ensembles {bad or '()'}: choose one or more of {list(ENSEMBLES)}"
        )
        _check(self.clips_per_work >= 1, f"clips_per_work={self.clips_per_work}: use at least 1")
        if self.tempo_bpm is not None:
            lo, hi = self.tempo_bpm
            _check(20 <= lo <= hi <= 300, f"tempo_bpm={self.tempo_bpm}: use 20 <= low <= high <= 300 BPM")
        _check(
            0 <= self.tempo_ramp_prob <= 1, f"tempo_ramp_prob={self.tempo_ramp_prob}: a probability in [0, 1]"
        )
        _check(0 <= self.tempo_ramp_max < 1, f"tempo_ramp_max={self.tempo_ramp_max}: a fraction in [0, 1)")
        _check(0 <= self.transpose <= 12, f"transpose={self.transpose}: use 0..12 semitones")
        _check(0 <= self.drums_prob <= 1, f"drums_prob={self.drums_prob}: a probability in [0, 1]")
        _check(
            self.val_fraction >= 0 and self.test_fraction >= 0 and self.val_fraction + self.test_fraction < 1,
            f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}: both >= 0, sum < 1",
        )
        _check(self.workers >= 1, f"workers={self.workers}: use at least 1 process")
        if self.soundfont is not None:
            _check(
                Path(self.soundfont).is_file(),
                f"soundfont {self.soundfont} not found: give the path of a .sf2 file or None for the bundled one",
            )


def _check(ok: object, message: str) -> None:
    if not ok:
        raise ValueError(f"CorpusConfig: {message}")


# Presets: "full" is the training scale (2,000 x 10 s), "small" the book's, "tiny" the tests'.
PRESETS: dict[str, dict] = {
    "full": dict(n_clips=2000),
    "small": dict(n_clips=200),
    "tiny": dict(
        n_clips=6,
        seconds=3.0,
        sample_rate=16_000,
        clips_per_work=1,
        # genres whose works parse in milliseconds; enough works for all three splits
        genres={"chorale": 1.0, "folk_song": 1.0},
        val_fraction=0.2,
        test_fraction=0.2,
        workers=1,
    ),
}


def preset(name: str, **overrides) -> CorpusConfig:
    """The config of preset `name` ("full", "small", "tiny") with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(
            f"unknown preset {name!r}: choose one of {sorted(PRESETS)} or build a CorpusConfig yourself"
        )
    return CorpusConfig(**{**PRESETS[name], **overrides})


def config_to_dict(config: CorpusConfig) -> dict:
    """JSON-ready dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(data: dict) -> CorpusConfig:
    """Inverse of `config_to_dict`."""
    data = dict(data)
    for name in ("ensembles", "tempo_bpm"):
        if data.get(name) is not None:
            data[name] = tuple(data[name])
    return CorpusConfig(**data)


# Fields that change how fast a build runs but not what it produces.
_NOT_IN_KEY = ("workers",)


def cache_key(config: CorpusConfig, provenance: dict) -> str:
    """A 12-hex-digit key for what `config` builds with these renderer/parser versions."""
    content = {k: v for k, v in config_to_dict(config).items() if k not in _NOT_IN_KEY}
    blob = json.dumps({"config": content, "provenance": provenance, "version": DATA_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_root() -> Path:
    """Where corpora are cached: $ACCELERANDO_DATA, else `data/` at the repository root, else
    ~/.cache/accelerando/data when the package is not inside a checkout."""
    if os.environ.get("ACCELERANDO_DATA"):
        return Path(os.environ["ACCELERANDO_DATA"])
    repo = Path(__file__).resolve().parents[3]  # lib/accelerando/data/config.py -> repo
    if (repo / "pyproject.toml").is_file():
        return repo / "data"
    return Path.home() / ".cache" / "accelerando" / "data"
