"""Stock diffusers / transformers audio generators built from their published configs.

    pipe = build_stable_audio("full", device="meta")        # shapes only, instant
    rows = parameter_table(stable_audio_components(pipe))   # params, fp32 / fp16 bytes
    pipe = build_stable_audio("tiny")                       # random weights, runs in ms
    pipe = build_stable_audio(weights="/data/stable-audio-open-1.0")   # a local copy

    model = build_musicgen("small")                          # facebook/musicgen-small, random
"""

from .common import parameter_table
from .musicgen import PRESETS as MUSICGEN_PRESETS
from .musicgen import build_musicgen, musicgen_components, musicgen_tokenizer
from .stable_audio import PRESETS as STABLE_AUDIO_PRESETS
from .stable_audio import build_stable_audio, stable_audio_components

# Valid `preset` names per builder.
PRESETS = {"stable_audio": STABLE_AUDIO_PRESETS, "musicgen": MUSICGEN_PRESETS}

__all__ = [
    "PRESETS",
    "build_musicgen",
    "build_stable_audio",
    "musicgen_components",
    "musicgen_tokenizer",
    "parameter_table",
    "stable_audio_components",
]
