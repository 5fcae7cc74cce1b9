"""A word trigram language model for lyrics, with backoff to bigrams and unigrams.

    lm = LyricsLM.fit(lyrics_texts())
    lm.generate(lines=4, words_per_line=7, seed=0)   # -> "Nimm von uns, Herr, ...\n..."

Small on purpose: the serving path's lyrics sub-task needs a model that runs in milliseconds on
a CPU and is trained here on the words the corpus carries (`accelerando.data.lyrics`). Counts, not
weights: sampling draws the next word in proportion to how often it followed the two before, or
the one before when that pair was never seen, or any word.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

START = "<s>"


@dataclass
class LyricsLM:
    trigrams: dict[tuple[str, str], Counter] = field(default_factory=lambda: defaultdict(Counter))
    bigrams: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    unigrams: Counter = field(default_factory=Counter)

    @classmethod
    def fit(cls, texts: list[str]) -> "LyricsLM":
        """Count the words of `texts` (each a stanza; words split on white space, punctuation kept)."""
        lm = cls()
        for text in texts:
            words = [START, START, *text.split()]
            for a, b, c in zip(words, words[1:], words[2:]):
                lm.trigrams[(a, b)][c] += 1
                lm.bigrams[b][c] += 1
                lm.unigrams[c] += 1
        if not lm.unigrams:
            raise ValueError("LyricsLM.fit got no words: pass non-empty texts")
        return lm

    def _next(self, a: str, b: str, rng: random.Random) -> str:
        for table in (self.trigrams.get((a, b)), self.bigrams.get(b), self.unigrams):
            if table:
                words, counts = zip(*table.items())
                return rng.choices(words, weights=counts)[0]
        raise RuntimeError("the model has no words; fit it first")

    def generate(self, lines: int = 4, words_per_line: int = 7, seed: int = 0) -> str:
        """`lines` lines of `words_per_line` words, drawn from the counts with `seed`."""
        if lines < 1 or words_per_line < 1:
            raise ValueError(f"lines={lines}, words_per_line={words_per_line}: both must be at least 1")
        rng, a, b, out = random.Random(seed), START, START, []
        for _ in range(lines):
            line = []
            for _ in range(words_per_line):
                a, b = b, self._next(a, b, rng)
                line.append(b)
            out.append(" ".join(line))
        return "\n".join(out)
