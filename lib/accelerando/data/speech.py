"""A small speech corpus for ASR experiments: eSpeak NG utterances with exact transcripts.

eSpeak NG is a formant synthesizer: robotic, but every word is known, and voices (variants),
rates and pitches vary the signal. The library comes from the PyPI wheel `espeakng-loader`
(libespeak-ng 1.52 and its data bundled, no system package) and is driven through ctypes
(`speak_lib.h`: espeak_Initialize, espeak_SetVoiceByName, espeak_SetParameter, espeak_Synth).
Sentences come from a small grammar about music, so transcripts share the captions' words.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from math import gcd
from pathlib import Path

import numpy as np

from .config import default_root

ESPEAK_RATE = 22_050  # Hz: what espeak_Initialize reports for its voices


@dataclass
class SpeechConfig:
    """What to speak. Units: rates in words per minute, pitch 0..100 (eSpeak's scale), Hz."""

    n_utterances: int = 120
    voices: tuple[str, ...] = ("en-us", "en-gb-x-rp", "en-us+f3", "en-gb-scotland", "en-us+m3", "en-029")
    rates_wpm: tuple[int, ...] = (130, 165, 200)
    pitches: tuple[int, ...] = (35, 50, 65)
    sample_rate: int = 16_000  # ASR models (wav2vec2, Whisper) take 16 kHz
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        self.voices, self.rates_wpm, self.pitches = (
            tuple(self.voices),
            tuple(self.rates_wpm),
            tuple(self.pitches),
        )
        checks = [
            (self.n_utterances >= 1, f"n_utterances={self.n_utterances}: ask for at least 1"),
            (self.voices, "voices is empty: name at least one eSpeak voice, e.g. 'en-us'"),
            (
                self.rates_wpm and all(80 <= r <= 450 for r in self.rates_wpm),
                f"rates_wpm={self.rates_wpm}: eSpeak takes 80..450 words per minute",
            ),
            (
                self.pitches and all(0 <= p <= 100 for p in self.pitches),
                f"pitches={self.pitches}: eSpeak takes 0..100",
            ),
            (
                8_000 <= self.sample_rate <= 48_000,
                f"sample_rate={self.sample_rate}: use 8000..48000 Hz (16000 for ASR)",
            ),
            (
                self.val_fraction >= 0
                and self.test_fraction >= 0
                and self.val_fraction + self.test_fraction < 1,
                "val_fraction + test_fraction must be in [0, 1)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SpeechConfig: {message}")


# ---- sentences -----------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """0..999 in words, as a speaker says them ("one hundred and twenty")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


_GRAMMAR = {
    "piece": ["chorale", "folk song", "fiddle tune", "madrigal", "string quartet", "mass", "waltz", "march"],
    "inst": [
        "violin",
        "viola",
        "cello",
        "flute",
        "oboe",
        "clarinet",
        "trumpet",
        "organ",
        "piano",
        "guitar",
        "choir",
        "drums",
    ],
    "key": ["C major", "G major", "D major", "A minor", "E minor", "F major", "B flat major", "D minor"],
    "verb": ["play", "record", "repeat", "mute", "transpose", "slow down", "speed up"],
    "adj": ["quiet", "bright", "slow", "lively", "gentle", "loud", "short", "long"],
}
_TEMPLATES = [
    "{verb} the {piece} in {key}",
    "play the {piece} at {num} beats per minute",
    "the {inst} enters after {small} bars",
    "make the {inst} part more {adj}",
    "a {adj} {piece} for {inst} and {inst2}",
    "start again from bar {small} with the {inst}",
    "the tempo moves from {num} to {num2} beats per minute",
    "{verb} the last {small} seconds of the {piece}",
]


def sentences(n: int, seed: int) -> list[str]:
    """`n` distinct sentences from the grammar, in a seeded order."""
    rng = np.random.default_rng([seed, 7])
    out: dict[str, None] = {}
    for _ in range(50 * n):
        if len(out) == n:
            break
        slots = {k: v[int(rng.integers(len(v)))] for k, v in _GRAMMAR.items()}
        slots["inst2"] = _GRAMMAR["inst"][int(rng.integers(len(_GRAMMAR["inst"])))]
        slots["num"], slots["num2"] = (
            number_words(int(rng.integers(50, 181))),
            number_words(int(rng.integers(50, 181))),
        )
        slots["small"] = number_words(int(rng.integers(2, 33)))
        out[_TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(**slots)] = None
    if len(out) < n:
        raise ValueError(f"the grammar gives only {len(out)} distinct sentences: ask for fewer utterances")
    return list(out)


# ---- eSpeak NG through ctypes ---------------------------------------------------------------

# libespeak-ng keeps synthesis state between utterances and its noisy voices draw random
# numbers: measured, repeated utterances in one process differ. So each utterance is spoken by
# a fresh child process running this script with a fixed seed (~40 ms each): bit-identical.
_SPEAK_SCRIPT = r"""
import ctypes, sys
lib_path, data_parent, voice, rate, pitch, text = sys.argv[1:7]
lib = ctypes.CDLL(lib_path)
if lib.espeak_Initialize(2, 0, data_parent.encode(), 0) <= 0:  # 2 = AUDIO_OUTPUT_SYNCHRONOUS
    sys.exit("espeak_Initialize failed")
out = []
CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
def collect(wav, n, events):
    if n > 0:
        out.append(ctypes.string_at(wav, 2 * n))
    return 0
cb = CB(collect)
lib.espeak_SetSynthCallback(cb)
lib.espeak_ng_SetRandSeed(1)  # voices with breath noise draw random numbers
if lib.espeak_SetVoiceByName(voice.encode()) != 0:
    sys.exit("no voice " + voice)
lib.espeak_SetParameter(1, int(rate), 0)  # espeakRATE, words per minute
lib.espeak_SetParameter(3, int(pitch), 0)  # espeakPITCH, 0..100
data = text.encode()
lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None)
lib.espeak_Synchronize()
sys.stdout.buffer.write(b"".join(out))
"""


def _espeak_paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as e:
        raise ImportError(
            "the speech corpus needs eSpeak NG: pip install espeakng-loader==0.2.4 (bundles libespeak-ng and its voices)"
        ) from e
    return espeakng_loader.get_library_path(), os.path.dirname(espeakng_loader.get_data_path())


def speak(text: str, voice: str, rate_wpm: int, pitch: int) -> tuple[np.ndarray, int]:
    """Synthesize `text`: int16 samples at eSpeak's rate (22,050 Hz) and that rate."""
    lib_path, data_parent = _espeak_paths()
    args = [
        sys.executable,
        "-c",
        _SPEAK_SCRIPT,
        lib_path,
        data_parent,
        voice,
        str(rate_wpm),
        str(pitch),
        text,
    ]
    done = subprocess.run(args, capture_output=True, timeout=60)
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise ValueError(
            f"eSpeak failed for voice {voice!r}: {reason[0]} (voices: 'en-us', 'en-gb-x-rp', 'en-029', variants such as 'en-us+f3')"
        )
    return np.frombuffer(done.stdout, dtype=np.int16).copy(), ESPEAK_RATE


# ---- build and read ------------------------------------------------------------------------


def build_speech_corpus(
    config: SpeechConfig | None = None, root: str | Path | None = None, force: bool = False
) -> "SpeechCorpus":
    """Speak `config.n_utterances` sentences (each with a seeded voice, rate and pitch) into
    `<root>/speech-<key>/` with audio/<id>.flac and manifest.jsonl. Split by sentence."""
    import soundfile as sf
    from scipy.signal import resample_poly

    from .corpus import split_of

    config = config or SpeechConfig()
    root = Path(root) if root is not None else default_root()
    _espeak_paths()  # fails early, naming the install

    key = hashlib.sha256(
        json.dumps({"config": asdict(config), "espeak": "espeakng-loader-0.2.4"}, sort_keys=True).encode()
    ).hexdigest()[:12]
    final = root / f"speech-{key}"
    if (final / "manifest.jsonl").is_file() and not force:
        return SpeechCorpus(final)
    t0 = time.perf_counter()
    tmp = root / f"speech-{key}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "audio").mkdir(parents=True)
    rng = np.random.default_rng([config.seed, 11])
    entries = []
    g = gcd(config.sample_rate, ESPEAK_RATE)
    for i, text in enumerate(sentences(config.n_utterances, config.seed)):
        voice = config.voices[int(rng.integers(len(config.voices)))]
        rate_wpm = config.rates_wpm[int(rng.integers(len(config.rates_wpm)))]
        pitch = config.pitches[int(rng.integers(len(config.pitches)))]
        pcm, rate = speak(text, voice, rate_wpm, pitch)
        audio = pcm.astype(np.float32) / 32768.0
        if rate != config.sample_rate:
            audio = resample_poly(audio, config.sample_rate // g, rate // g).astype(np.float32)
        if audio.size == 0 or not np.isfinite(audio).all() or np.abs(audio).max() < 1e-3:
            raise RuntimeError(
                f"eSpeak produced silence for {text!r} with voice {voice}: check the voice name"
            )
        rel = f"audio/{i:05d}.flac"
        sf.write(tmp / rel, audio, config.sample_rate, subtype="PCM_16")
        entries.append(
            {
                "id": f"{i:05d}",
                "audio": rel,
                "text": text,
                "transcript": text.lower(),
                "voice": voice,
                "rate_wpm": rate_wpm,
                "pitch": pitch,
                "seconds": round(len(audio) / config.sample_rate, 4),
                "sample_rate": config.sample_rate,
                "split": split_of("speech:" + text, config.val_fraction, config.test_fraction),
            }
        )
    with open(tmp / "manifest.jsonl", "w") as f:
        for e in entries:
            f.write(json.dumps(e, sort_keys=True) + "\n")
    summary = {
        "n_utterances": len(entries),
        "per_split": dict(Counter(e["split"] for e in entries)),
        "per_voice": dict(Counter(e["voice"] for e in entries)),
        "audio_seconds": round(sum(e["seconds"] for e in entries), 2),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "config": asdict(config),
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return SpeechCorpus(final)


@dataclass
class Utterance:
    """One spoken sentence: `transcript` is the exact lower-case text that was spoken."""

    id: str
    audio_path: Path
    transcript: str
    voice: str
    rate_wpm: int
    split: str
    seconds: float
    sample_rate: int
    meta: dict = field(repr=False)

    def load(self) -> np.ndarray:
        import soundfile as sf

        return sf.read(self.audio_path, dtype="float32")[0]


class SpeechCorpus:
    """A built speech corpus: iterate, filter by split or voice, load audio."""

    def __init__(self, path: str | Path, items: list[Utterance] | None = None):
        self.path = Path(path)
        if items is None:
            with open(self.path / "manifest.jsonl") as f:
                rows = [json.loads(line) for line in f]
            names = ("id", "transcript", "voice", "rate_wpm", "split", "seconds", "sample_rate")
            items = [
                Utterance(audio_path=self.path / r["audio"], meta=r, **{n: r[n] for n in names}) for r in rows
            ]
        self.items = items
        self.summary = json.loads((self.path / "summary.json").read_text())

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.items)

    def __getitem__(self, i: int) -> Utterance:
        return self.items[i]

    def filter(self, split: str | None = None, voice: str | None = None) -> "SpeechCorpus":
        return SpeechCorpus(
            self.path,
            [
                u
                for u in self.items
                if (split is None or u.split == split) and (voice is None or u.voice == voice)
            ],
        )
