"""Evaluation sets beside the speech corpus: voices it never trained on, and another vocabulary.

    adapt = build_speech_set(held_out_sentences(40), voices=("en-gb-x-gbcwmd+f4",), name="unseen-voice")
    shift = build_speech_set(everyday_sentences(60), name="everyday")

Both are read with `SpeechCorpus` (the same manifest). The speech corpus (`data.speech`) speaks
its music grammar with six voices; a recogniser trained on it meets here (a) speakers it never
heard, for few-shot adaptation, saying sentences of its test split only, and (b) sentences about
food, places and weather, whose words it never saw, for domain shift.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from math import gcd
from pathlib import Path

import numpy as np

from .config import default_root
from .corpus import split_of
from .speech import ESPEAK_RATE, SpeechConfig, SpeechCorpus, number_words, sentences, speak

# Voices absent from SpeechConfig's defaults: other accents (West Midlands, New York) with
# variants (f4, m5) that change pitch, formants and breathiness.
UNSEEN_VOICES = ("en-gb-x-gbcwmd+f4", "en-us-nyc+m5")

_EVERYDAY = {
    "food": ["bread", "soup", "rice", "cheese", "apples", "tea", "coffee", "pasta", "honey", "carrots"],
    "place": ["kitchen", "station", "garden", "market", "library", "harbour", "airport", "village", "bakery"],
    "person": ["neighbour", "doctor", "teacher", "driver", "baker", "farmer", "nurse", "pilot", "postman"],
    "weather": ["rain", "snow", "wind", "fog", "sunshine", "thunder", "frost"],
    "day": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"],
}
_EVERYDAY_TEMPLATES = [
    "the {person} buys {food} at the {place} on {day}",
    "expect {weather} near the {place} until {day}",
    "the train to the {place} leaves at {small} o'clock",
    "bring {small} bags of {food} to the {place}",
    "the {person} waits by the {place} in the {weather}",
    "there were {num} people at the {place} on {day}",
    "ask the {person} where the {place} is",
]


def everyday_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` distinct sentences about food, places, people and weather: words the music grammar of
    the speech corpus never uses (numbers aside)."""
    rng = np.random.default_rng([seed, 13])
    out: dict[str, None] = {}
    for _ in range(50 * n):
        if len(out) == n:
            break
        slots = {k: v[int(rng.integers(len(v)))] for k, v in _EVERYDAY.items()}
        slots["num"], slots["small"] = number_words(int(rng.integers(20, 300))), number_words(int(rng.integers(2, 13)))
        out[_EVERYDAY_TEMPLATES[int(rng.integers(len(_EVERYDAY_TEMPLATES)))].format(**slots)] = None
    if len(out) < n:
        raise ValueError(f"the everyday grammar gives only {len(out)} distinct sentences: ask for fewer")
    return list(out)


def held_out_sentences(n: int, config: SpeechConfig | None = None) -> list[str]:
    """`n` sentences of the speech corpus's grammar that fall in its test split (by the same hash
    of the text), so no recogniser trained on the corpus heard them."""
    config = config or SpeechConfig()
    pool = sentences(min(20 * n + 200, 20_000), config.seed + 1)
    held = [s for s in pool if split_of("speech:" + s, config.val_fraction, config.test_fraction) == "test"]
    if len(held) < n:
        raise ValueError(f"only {len(held)} held-out sentences in a pool of {len(pool)}: ask for fewer")
    return held[:n]


def build_speech_set(texts: list[str], name: str, voices: tuple[str, ...] = SpeechConfig.voices,
                     rates_wpm: tuple[int, ...] = (130, 165, 200), pitches: tuple[int, ...] = (35, 50, 65),
                     sample_rate: int = 16_000, seed: int = 0, root: str | Path | None = None,
                     force: bool = False) -> SpeechCorpus:
    """Speak each text (a seeded voice, rate and pitch per text) into
    `<root>/speech-<name>-<key>/`, cached by the texts and settings; every utterance's split is
    "test". Units: words per minute, eSpeak pitch 0..100, Hz."""
    import soundfile as sf
    from scipy.signal import resample_poly

    if not texts or not voices:
        raise ValueError(f"{len(texts)} texts, voices {voices}: give at least one of each")
    settings = {"texts": list(texts), "voices": list(voices), "rates_wpm": list(rates_wpm), "pitches": list(pitches),
                "sample_rate": sample_rate, "seed": seed, "espeak": "espeakng-loader-0.2.4"}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(root) if root is not None else default_root()
    final = root / f"speech-{name}-{key}"
    if (final / "manifest.jsonl").is_file() and not force:
        return SpeechCorpus(final)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "audio").mkdir(parents=True)
    rng = np.random.default_rng([seed, 17])
    g = gcd(sample_rate, ESPEAK_RATE)
    rows = []
    for i, text in enumerate(texts):
        voice = voices[int(rng.integers(len(voices)))]
        rate_wpm, pitch = int(rng.choice(rates_wpm)), int(rng.choice(pitches))
        pcm, rate = speak(text, voice, rate_wpm, pitch)
        audio = resample_poly(pcm.astype(np.float32) / 32768.0, sample_rate // g, rate // g).astype(np.float32)
        if audio.size == 0 or np.abs(audio).max() < 1e-3:
            raise RuntimeError(f"eSpeak produced silence for {text!r} with voice {voice}: check the voice name")
        rel = f"audio/{i:05d}.flac"
        sf.write(tmp / rel, audio, sample_rate, subtype="PCM_16")
        rows.append({"id": f"{name}-{i:05d}", "audio": rel, "text": text, "transcript": text.lower(), "voice": voice,
                     "rate_wpm": rate_wpm, "pitch": pitch, "seconds": round(len(audio) / sample_rate, 4),
                     "sample_rate": sample_rate, "split": "test"})
    (tmp / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    (tmp / "summary.json").write_text(json.dumps({"name": name, "n_utterances": len(rows), **settings}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return SpeechCorpus(final)
