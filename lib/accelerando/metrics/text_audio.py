"""Text-audio agreement (CLAP score) through any model with `embed_audio` and `embed_text`.

No CLAP weights are available offline, so this is a hook: pass a model (for instance
`embeddings.CLAP(path=...)` from a local checkpoint, or a stub in tests). Without one the score
is skipped with a logged message, never downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from ..audio import check_audio

log = logging.getLogger(__name__)


class TextAudioModel(Protocol):
    def embed_audio(self, wav: torch.Tensor, sr: int) -> np.ndarray: ...  # [dim]
    def embed_text(self, text: str) -> np.ndarray: ...  # [dim]


def clap_score(clips: Sequence[torch.Tensor], sr: int, texts: Sequence[str], model: TextAudioModel | None = None) -> list[float] | None:
    """Per clip, the cosine similarity in [-1, 1] between the audio embedding of clip i
    ([channels, samples] at `sr`) and the text embedding of its prompt texts[i]:

        CLAP_i = <a_i, t_i> / (|a_i| |t_i|)

    Returns None (logged) when no model is given.
    """
    if model is None:
        log.warning("CLAP score skipped: no text-audio model given (pass an object with embed_audio(wav, sr) and "
                    "embed_text(text), e.g. accelerando.metrics.embeddings.CLAP(path=<local checkpoint>))")
        return None
    if len(clips) != len(texts):
        raise ValueError(f"{len(clips)} clips but {len(texts)} prompts: CLAP score pairs clip i with prompt i")
    scores = []
    for i, (wav, text) in enumerate(zip(clips, texts)):
        a = np.asarray(model.embed_audio(check_audio(wav, sr, name=f"clip {i}"), sr), dtype=float).ravel()
        t = np.asarray(model.embed_text(text), dtype=float).ravel()
        denom = np.linalg.norm(a) * np.linalg.norm(t)
        if denom == 0:
            raise ValueError(f"clip {i}: zero-length embedding, cosine similarity undefined")
        scores.append(float(a @ t / denom))
    return scores
