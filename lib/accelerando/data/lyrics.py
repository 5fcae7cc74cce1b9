"""Sung texts from the music21 corpus: the lyrics its chorale scores carry, one stanza per score.

    texts = lyrics_texts(max_scores=120)      # list of str, cached as data/lyrics/chorales.txt

The only sung words the offline corpus holds are the German texts under Bach's four-part
chorales, so a model trained on them writes chorale-like German: enough to exercise the
serving path's lyrics sub-task, not a songwriter.
"""

from __future__ import annotations

from pathlib import Path

from .config import default_root


def lyrics_texts(max_scores: int = 120, root: str | Path | None = None) -> list[str]:
    """The assembled lyrics (syllables joined into words) of the first `max_scores` chorales that
    have any; read from the cache file when it holds at least that many, else parsed (about 0.2 s
    per score) and cached."""
    if max_scores < 1:
        raise ValueError(f"max_scores={max_scores}: read at least one score")
    path = Path(root or default_root()) / "lyrics" / "chorales.txt"
    if path.is_file():
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(texts) >= max_scores:
            return texts[:max_scores]
    from music21 import corpus, text

    texts = []
    for score_path in corpus.getComposer("bach"):
        words = " ".join(text.assembleLyrics(corpus.parse(score_path)).split())
        if words:
            texts.append(words)
        if len(texts) >= max_scores:
            break
    if not texts:
        raise RuntimeError("no lyrics found in music21's corpus of Bach chorales; is music21's corpus installed?")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return texts
