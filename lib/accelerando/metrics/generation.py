"""One scorecard for a set of generated clips and the prompts that asked for them.

    vectors = embed_set(test_wavs, sr, embedders)          # reference: {embedding: [N, dim]}
    rows, summary = score_generation(wavs, sr, prompts, keys, bpms, vectors, embedders, clap=clap)

Per clip (`rows`): the CLAP score of clip and prompt (`text_audio.clap_score`, when a text-audio
model is given), the key, tempo and pulse adherence to what the prompt states and the onset
density (`adherence`). Per set
(`summary`): KAD against the reference set in each embedding (one vector per clip, the mean over
its windows, so that vectors are independent draws), and the mean of every per-clip column with a
bootstrap interval. Scoring real clips, a shuffled-prompt generation or noise with the same call
gives the baselines a model is read against; `score_with_baselines` does all of that for any
text-to-audio generators on held-out corpus clips:

    per_clip, summary, audio = score_with_baselines({"Stable-Audio-Lite": fn}, test_clips, sr, 8.0, vectors, embedders, clap)
    board(summary)                                         # one row per set, "mean [low, high]"
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .adherence import prompt_adherence
from .distribution import kad
from .embeddings import Embedding
from .stats import bootstrap_ci
from .text_audio import clap_score

PER_CLIP = ("clap", "key_mirex", "tempo_acc1", "tempo_acc2", "pulse", "onsets_per_s")


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


def clip_audio(clip, sr: int, seconds: float) -> torch.Tensor:
    """A corpus clip's first `seconds`, mono at `sr`: [1, samples] float32."""
    from ..audio import resample

    a = np.asarray(clip.load(), dtype=np.float32)
    wav = torch.from_numpy(a.mean(axis=1) if a.ndim == 2 else a)[None]
    if clip.sample_rate != sr:
        wav = resample(wav, clip.sample_rate, sr)
    return wav[..., : int(seconds * sr)]


def shuffled_order(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (n >= 2): prompt i is swapped for another."""
    if n < 2:
        raise ValueError(f"{n} prompt(s): shuffling needs at least two")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        if (order != np.arange(n)).all():
            return order


def score_with_baselines(
    generators: dict[str, Callable[[list[str]], Sequence[torch.Tensor]]],
    clips: Sequence,
    sr: int,
    seconds: float,
    reference: dict[str, np.ndarray],
    embedders: dict[str, Embedding],
    clap=None,
    shuffled: str | None = None,
    seed: int = 0,
) -> tuple[dict, dict, dict]:
    """Score text-to-audio generators on the captions of held-out corpus `clips`, beside the
    baselines they are read against: the clips themselves ("corpus clips"), white noise at the
    clips' loudness ("noise") and, for the generator named `shuffled` (default the first), its
    output for the captions in a shuffled order, scored against the original captions ("shuffled
    prompts": what the score is when the prompt does not steer).

    `generators[name](captions)` returns one [channels, samples] clip per caption at `sr`, at
    least `seconds` long. Returns ({set: per-clip DataFrame}, {set: {column: Estimate}}) as
    `score_generation` gives them, and {set: [clips [channels, samples], cut to `seconds`]}, for sets
    in the order generators..., shuffled, clips, noise."""
    if not generators:
        raise ValueError("no generators to score: pass {name: captions -> clips}")
    prompts = [c.caption for c in clips]
    keys = [c.key["name"] if c.key else None for c in clips]
    bpms = [float(c.tempo_bpm) if c.tempo_bpm else None for c in clips]
    n = int(seconds * sr)  # as the generators cut: int(seconds x sr) samples
    real = [clip_audio(c, sr, seconds) for c in clips]
    sets = {name: fn(prompts) for name, fn in generators.items()}
    shuffled = shuffled or next(iter(generators))
    order = shuffled_order(len(prompts), seed)
    sets["shuffled prompts"] = list(generators[shuffled]([prompts[i] for i in order]))
    sets["corpus clips"] = real
    g = torch.Generator().manual_seed(seed)
    sets["noise"] = [torch.randn(1, n, generator=g) * w.pow(2).mean().sqrt().clamp(min=1e-4) for w in real]
    per_clip, summary = {}, {}
    for name, wavs in list(sets.items()):
        wavs = sets[name] = [torch.as_tensor(np.asarray(w, dtype=np.float32))[..., :n] for w in wavs]
        short = [i for i, w in enumerate(wavs) if w.shape[-1] < n]
        if short:
            raise ValueError(f"{name}: clips {short[:5]} are shorter than {seconds} s; generate at least that long")
        per_clip[name], summary[name] = score_generation(wavs, sr, prompts, keys, bpms, reference, embedders,
                                                         clap=clap, seed=seed)
    return per_clip, summary, sets


COLUMNS = {"clap": "CLAP score", "pulse": "pulse at the beat lag", "tempo_acc2": "tempo Acc2",
           "key_mirex": "key (MIREX)", "onsets_per_s": "onsets per second"}


def board(summary: dict, columns: dict[str, str] | None = None, digits: int = 2):
    """A DataFrame of `score_with_baselines`'s summary: one row per set, "mean [low, high]" per column."""
    import pandas as pd

    columns = columns or {**COLUMNS, **{c: f"KAD {c[4:]}" for s in summary.values() for c in s if c.startswith("kad_")}}
    return pd.DataFrame({name: {label: s[col].text(digits) if col in s else "undefined" for col, label in columns.items()}
                         for name, s in summary.items()}).T


# What a testbed generator must reach for the book's musical questions to be answerable on it:
# a beat at the asked tempo, the asked key, note attacks at the corpus's rate, captions CLAP-Lite
# can match. (column, lowest acceptable mean); onsets are judged against the corpus clips instead.
MUSIC_GOALS = {"pulse": 0.3, "tempo_acc2": 0.6, "key_mirex": 0.65, "clap": 0.4}
ONSET_TOLERANCE = 0.3  # onsets per second within 30 % of the corpus clips'


def music_goals(summary: dict, model: str, corpus: str = "corpus clips"):
    """One row per goal for the set `model` of a `score_with_baselines` summary: its mean with the
    interval, the goal, the corpus clips' mean, and whether the mean meets the goal."""
    import pandas as pd

    rows = []
    for col, goal in MUSIC_GOALS.items():
        est = summary[model].get(col)
        rows.append({"measure": COLUMNS[col], "value": est.text() if est else "undefined", "goal": f">= {goal}",
                     "corpus clips": summary[corpus][col].text() if col in summary[corpus] else "undefined",
                     "met": bool(est and est.value >= goal)})
    est, ref = summary[model]["onsets_per_s"], summary[corpus]["onsets_per_s"]
    lo, hi = (1 - ONSET_TOLERANCE) * ref.value, (1 + ONSET_TOLERANCE) * ref.value
    rows.append({"measure": COLUMNS["onsets_per_s"], "value": est.text(), "goal": f"{lo:.2f} to {hi:.2f}",
                 "corpus clips": ref.text(), "met": bool(lo <= est.value <= hi)})
    return pd.DataFrame(rows).set_index("measure")
