"""accelerando.data: an offline music corpus rendered from real scores, with ground truth.

No data set can be downloaded here, so the corpus is made: music21's bundled scores (Bach
chorales, Palestrina, Monteverdi, quartets, Essen folk songs, fiddle tunes) are excerpted,
transposed, re-tempoed, given General MIDI instruments and drums, and synthesized with a
SoundFont. Each clip carries the truth its score implies: beats, downbeats, tempo (curve),
key, notes, instruments, section boundaries, genre and a caption.

    from accelerando.data import build_corpus, preset
    corpus = build_corpus(preset("small"))          # 200 x 10 s at 32 kHz, cached in data/
    for clip in corpus.filter(split="train", family="Strings"):
        audio = clip.load(); clip.beats, clip.key, clip.caption

Files, in reading order: `config` (CorpusConfig, presets, cache key), `scores` (which files,
what is extracted), `arrange` (plans, tempo map, ground truth, captions), `render`
(synthesis and checks), `corpus` (build and read), `speech` (a small espeak-ng speech corpus).
CLI: `python -m accelerando.data build --preset small`.
"""

from .config import PRESETS, CorpusConfig, config_from_dict, config_to_dict, default_root, preset
from .corpus import Clip, Corpus, build_corpus, split_of
from .speech import SpeechConfig, SpeechCorpus, build_speech_corpus

__all__ = [
    "PRESETS",
    "Clip",
    "Corpus",
    "CorpusConfig",
    "SpeechConfig",
    "SpeechCorpus",
    "build_corpus",
    "build_speech_corpus",
    "config_from_dict",
    "config_to_dict",
    "default_root",
    "preset",
    "split_of",
]
