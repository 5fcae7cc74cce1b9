"""One scorecard for a set of generated clips and the prompts that asked for them.

    vectors = embed_set(test_wavs, sr, embedders)          # reference: {embedding: [N, dim]}
    rows, summary = score_generation(wavs, sr, prompts, keys, bpms, vectors, embedders, clap=clap)

Per clip (`rows`): the CLAP score of clip and prompt (`text_audio.clap_score`, when a text-audio
model is given) and the key and tempo adherence to what the prompt states (`adherence`). Per set
(`summary`): KAD against the reference set in each embedding (one vector per clip, the mean over
its windows, so that vectors are independent draws), and the mean of every per-clip column with a
bootstrap interval. Scoring real clips, a shuffled-prompt generation or noise with the same call
gives the baselines a model is read against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .adherence import prompt_adherence
from .distribution import kad
from .embeddings import Embedding
from .stats import bootstrap_ci
from .text_audio import clap_score

PER_CLIP = ("clap", "key_mirex", "tempo_acc1", "tempo_acc2")


def embed_set(wavs: Sequence[torch.Tensor], sr: int, embedders: dict[str, Embedding]) -> dict[str, np.ndarray]:
    """{embedding name: [clips, dim]}: each clip's windows averaged into one vector."""
    out = {}
    for name, embedder in embedders.items():
        rows = []
        for w in wavs:
            e = embedder.embed(w, sr)
            rows.append(e.mean(0) if e.ndim == 2 else np.asarray(e).ravel())
        out[name] = np.stack(rows)
    return out


def score_generation(
    wavs: Sequence[torch.Tensor],
    sr: int,
    prompts: Sequence[str],
    keys: Sequence[str | None],
    bpms: Sequence[float | None],
    reference: dict[str, np.ndarray],
    embedders: dict[str, Embedding],
    clap=None,
    seed: int = 0,
):
    """(per-clip pandas DataFrame, summary dict) of clips wavs[i] [channels, samples] generated for
    prompts[i], which state keys[i] and bpms[i]. `reference` comes from `embed_set` on the
    reference clips (same embedders); `clap` is an object with embed_audio / embed_text."""
    import pandas as pd

    if not (len(wavs) == len(prompts) == len(keys) == len(bpms)):
        raise ValueError(f"{len(wavs)} clips, {len(prompts)} prompts, {len(keys)} keys, {len(bpms)} tempi: give one of each per clip")
    missing = sorted(set(embedders) - set(reference))
    if missing:
        raise ValueError(f"no reference vectors for embeddings {missing}: run embed_set on the reference clips with the same embedders")
    rows = [prompt_adherence(w, sr, k, b, name=f"clip {i}") for i, (w, k, b) in enumerate(zip(wavs, keys, bpms))]
    scores = clap_score(list(wavs), sr, list(prompts), model=clap) if clap is not None else [None] * len(wavs)
    for row, s in zip(rows, scores):
        row["clap"] = s
    frame = pd.DataFrame(rows)
    summary = {}
    generated = embed_set(wavs, sr, embedders)
    for name in embedders:
        est = kad(reference[name], generated[name], seed=seed, embedding=name)
        summary[f"kad_{name}"] = est
    for column in PER_CLIP:
        if frame[column].notna().any():
            summary[column] = bootstrap_ci(list(frame[column]), seed=seed)
    return frame, summary
