"""Long pieces from token models: generate past the training clips and ask whether the music holds
together over time.

A piece is cut into segments of `segment_seconds`; each segment is described by its key, its
local-tempo steadiness, its spectral roll-off, its chroma and its CLAP-Lite embedding, and the
piece by how much those drift from the first segment on. A model that keeps its music together
keeps the key, the tempo and the timbre of its opening; one that forgets its context wanders.

    rows = long_form_rows(pipes, prompts, seconds=60, clap=clap)   # one row per piece
    board = coherence_board(rows)                                    # means with 95% intervals
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from ..metrics.analysis import ANALYSIS_SR, analysis_signal
from ..metrics.rhythm import beat_consistency
from ..metrics.stats import bootstrap_ci
from ..metrics.tonal import HOP as CHROMA_HOP
from ..metrics.tonal import chromagram, estimate_key, key_stability, same_key

SEGMENT_SECONDS = 10.0  # the training clips' length: each segment is one clip's worth of music
ROLLOFF_HOP = 512


def segments(wav: torch.Tensor, sr: int, segment_seconds: float = SEGMENT_SECONDS) -> list[torch.Tensor]:
    """The whole segments of `segment_seconds` in wav [channels, samples] (a shorter tail is dropped)."""
    n = int(round(segment_seconds * sr))
    if n < 1 or wav.shape[-1] < n:
        raise ValueError(f"a piece of {wav.shape[-1] / sr:.2f} s holds no whole segment of {segment_seconds} s: "
                         "generate longer pieces or use shorter segments")
    return [wav[..., i:i + n] for i in range(0, wav.shape[-1] - n + 1, n)]


def spectral_rolloff_hz(wav: torch.Tensor, sr: int, *, name: str = "segment") -> float:
    """Median over frames of the frequency below which 85% of the spectral energy lies, in Hz."""
    import librosa

    y = analysis_signal(wav, sr, name=name)
    return float(np.median(librosa.feature.spectral_rolloff(y=y, sr=ANALYSIS_SR, hop_length=ROLLOFF_HOP)))


def chroma_continuity(wav: torch.Tensor, sr: int, *, window_seconds: float = 0.5, name: str = "piece") -> float | None:
    """Mean cosine similarity of the mean chroma of neighbouring `window_seconds` windows, in [0, 1]:
    1 when the pitch content changes smoothly, lower when it jumps (the seed's "pitch continuity",
    measured on pitch classes, which polyphonic music allows). None when no two neighbouring
    windows have sound."""
    chroma = chromagram(wav, sr, name=name)
    win = max(1, int(round(window_seconds * ANALYSIS_SR / CHROMA_HOP)))
    means = np.stack([chroma[:, i:i + win].mean(1) for i in range(0, chroma.shape[1] - win + 1, win)])
    norms = np.linalg.norm(means, axis=1)
    keep = norms[:-1] * norms[1:] > 0  # silent windows have no pitch to continue
    if not keep.any():
        return None
    cos = (means[:-1] * means[1:]).sum(1)[keep] / (norms[:-1] * norms[1:])[keep]
    return float(cos.mean())


def segment_rows(wav: torch.Tensor, sr: int, clap=None, prompt: str | None = None,
                 segment_seconds: float = SEGMENT_SECONDS) -> pd.DataFrame:
    """One row per segment of wav [channels, samples]: start (s), key, same key as the first segment,
    beat consistency, roll-off (Hz) and, with a CLAP-Lite `clap`, the cosine of the segment's
    embedding with the first segment's and with the prompt's."""
    parts = segments(wav, sr, segment_seconds)
    keys = [estimate_key(p, sr, name=f"segment {i}") for i, p in enumerate(parts)]
    rows = [{"segment": i, "start_s": i * segment_seconds, "key": keys[i], "same_key_as_first": same_key(keys[i], keys[0]),
             "beat_consistency": beat_consistency(p, sr, name=f"segment {i}"),
             "rolloff_hz": spectral_rolloff_hz(p, sr, name=f"segment {i}")} for i, p in enumerate(parts)]
    if clap is not None:
        audio = torch.nn.functional.normalize(clap.embed_audio(torch.stack([p.mean(0) for p in parts]), sr), dim=-1)
        for row, a in zip(rows, audio):
            row["clap_to_first"] = float(a @ audio[0])
        if prompt is not None:
            text = torch.nn.functional.normalize(clap.embed_text([prompt]), dim=-1)[0]
            for row, a in zip(rows, audio):
                row["clap_to_prompt"] = float(a @ text)
    return pd.DataFrame(rows)


def coherence(wav: torch.Tensor, sr: int, clap=None, prompt: str | None = None,
              segment_seconds: float = SEGMENT_SECONDS, seg: pd.DataFrame | None = None) -> dict:
    """The piece's coherence over time (wav [channels, samples]):

    key_stability: share of 4 s windows in the piece's global key (`tonal.key_stability`);
    key_kept: share of later segments in the first segment's key;
    beat_consistency: the whole piece's local-tempo steadiness (`rhythm.beat_consistency`);
    rolloff_cv: coefficient of variation of the segments' roll-off (0 = the same brightness throughout);
    chroma_continuity: see `chroma_continuity`;
    clap_self_similarity: mean cosine of later segments' CLAP-Lite embeddings with the first's;
    clap_to_prompt_first / _last: the first and last segments' CLAP-Lite score against the prompt.
    `seg`: the piece's `segment_rows`, when already measured."""
    seg = segment_rows(wav, sr, clap, prompt, segment_seconds) if seg is None else seg
    later = seg.iloc[1:]
    rolloff = seg["rolloff_hz"].to_numpy()
    out = {"seconds": wav.shape[-1] / sr, "segments": len(seg),
           "key_stability": key_stability(wav, sr, name="piece"),
           "key_kept": float(later["same_key_as_first"].mean()) if len(later) else None,
           "beat_consistency": beat_consistency(wav, sr, name="piece"),
           "rolloff_cv": float(rolloff.std() / rolloff.mean()) if rolloff.mean() > 0 else None,
           "chroma_continuity": chroma_continuity(wav, sr)}
    if "clap_to_first" in seg:
        out["clap_self_similarity"] = float(later["clap_to_first"].mean()) if len(later) else None
    if "clap_to_prompt" in seg:
        out["clap_to_prompt_first"] = float(seg["clap_to_prompt"].iloc[0])
        out["clap_to_prompt_last"] = float(seg["clap_to_prompt"].iloc[-1])
    return out


def long_form_rows(pipes: dict, prompts: list[str], seconds: float, clap=None, seed: int = 0,
                   segment_seconds: float = SEGMENT_SECONDS, **sampling) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Generate a piece of `seconds` per prompt with each pipeline (`LaCTMusicPipeline` or any with
    its call), same prompts and seeds for every system, and measure its coherence. One piece per
    call: decoding minutes of several pieces at once would hold gigabytes of decoder activations.

    Returns (rows: one per system and piece, with `coherence`'s columns and the generation's
    wall-clock seconds; segments: `segment_rows` of every piece, with its system and piece;
    audio: {system: [pieces, 1, samples]} at each pipeline's rate)."""
    rows, parts, audio = [], [], {}
    for name, pipe in pipes.items():
        pieces = []
        for i, prompt in enumerate(prompts):
            t0 = time.perf_counter()
            wav, _ = pipe([prompt], seconds=seconds, seed=seed + i, **sampling)
            elapsed = time.perf_counter() - t0
            pieces.append(wav[0])
            seg = segment_rows(wav[0], pipe.sample_rate, clap, prompt, segment_seconds)
            parts.append(seg.assign(system=name, piece=i))
            rows.append({"system": name, "piece": i, "prompt": prompt, "generate_s": elapsed,
                         **coherence(wav[0], pipe.sample_rate, seg=seg)})
        audio[name] = torch.stack(pieces)
    return pd.DataFrame(rows), pd.concat(parts, ignore_index=True), audio


def stream_state_numel(cache) -> int:
    """Numbers held by a `ChunkProcessor`'s stream state (fast weights, their moments, window keys
    and values, the unfinished chunk): what generation keeps in memory besides the codes."""
    total = 0
    for s in cache.states:
        fast = [*s.fast.w, *s.fast.row_norms, *s.fast.moments, *s.fast.second_moments] if s.fast is not None else []
        total += sum(t.numel() for t in [s.keys, s.values, *fast, *(s.pending or [])] if torch.is_tensor(t))
    return total


def generation_cost(models: dict, seconds=(10, 30, 60, 120), frame_rate: float = 21.533, rounds: int = 3,
                    guidance: float = 3.0, text_dim: int = 384, seed: int = 0) -> pd.DataFrame:
    """Token-generation time of each model (`LaCTMusicLM`s) for pieces of `seconds`, interleaved
    across models at each length, min and median of `rounds` (`measure.compare`), seconds of
    compute per second of audio, and the numbers the stream state holds at the end. One prompt of
    random text states (cost does not depend on them); codec decoding is left out (the same for
    every model)."""
    from ..models.musicgen_lite import frames_for, generate
    from .measure import compare

    g = torch.Generator().manual_seed(seed)
    states, mask = torch.randn(1, 8, text_dim, generator=g), torch.ones(1, 8, dtype=torch.long)
    rows = []
    for s in seconds:
        frames = frames_for(s, frame_rate)
        calls = {name: (lambda m=m: generate(m, states, mask, frames, guidance=guidance, seed=seed, frame_rate=frame_rate))
                 for name, m in models.items()}
        timed = compare(calls, rounds=rounds)
        for name, m in models.items():
            cache = m.new_cache()
            with torch.no_grad():  # the state after a piece of this length (a prefill reaches it as stepping does)
                m(torch.zeros(1, m.config.codebooks, frames + m.config.codebooks - 1, dtype=torch.long), states, mask,
                  cache=cache)
            rows.append({"system": name, "audio_seconds": s, **timed[name],
                         "compute_per_audio_second": timed[name]["latency_s_min"] / s,
                         "state_numbers": stream_state_numel(cache)})
    return pd.DataFrame(rows)


COHERENCE_COLUMNS = {"key_stability": "key stability", "key_kept": "first key kept", "beat_consistency": "beat consistency",
                     "rolloff_cv": "roll-off variation", "chroma_continuity": "chroma continuity",
                     "clap_self_similarity": "CLAP-Lite self-similarity", "clap_to_prompt_first": "CLAP-Lite score, first",
                     "clap_to_prompt_last": "CLAP-Lite score, last"}


def coherence_board(rows: pd.DataFrame, columns: dict[str, str] | None = None, digits: int = 3, seed: int = 0
                    ) -> pd.DataFrame:
    """A row per system: the mean of each coherence column over its pieces with a 95% bootstrap
    interval, "mean [low, high]"; pieces where a metric is undefined (no pulse, no tonal content)
    are left out of that cell and counted in its `n` ("undefined" when none is left)."""
    columns = columns or {c: label for c, label in COHERENCE_COLUMNS.items() if c in rows}
    board = {}
    for system, group in rows.groupby("system", sort=False):
        cells = {}
        for col, label in columns.items():
            values = _defined(group[col])
            if all(v is None for v in values):
                cells[label] = "undefined"
                continue
            est = bootstrap_ci(values, seed=seed)
            cells[label] = est.text(digits) + (f" (n={est.n})" if est.n_skipped else "")
        board[system] = cells
    return pd.DataFrame(board).T


def _defined(values) -> list[float | None]:
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v) for v in values]


def coherence_paired(rows: pd.DataFrame, a: str, b: str, columns: dict[str, str] | None = None, seed: int = 0
                     ) -> pd.DataFrame:
    """System a against b on the same prompts, per coherence column: the mean difference a - b
    with its 95% bootstrap interval, the Wilcoxon p and the pieces both define."""
    from ..metrics.stats import paired_comparison

    columns = columns or {c: label for c, label in COHERENCE_COLUMNS.items() if c in rows}
    ra = rows[rows.system == a].sort_values("piece")
    rb = rows[rows.system == b].sort_values("piece")
    if list(ra.piece) != list(rb.piece):
        raise ValueError(f"{a} and {b} were not generated for the same prompts: pair them on the same pieces")
    out = []
    for col, label in columns.items():
        try:
            test = paired_comparison(_defined(ra[col]), _defined(rb[col]), seed=seed)
        except ValueError:  # no piece defines the measure on both sides
            continue
        d = test.mean_diff
        out.append({"measure": label, "a": a, "b": b, "difference": d.value, "ci_low": d.ci_low, "ci_high": d.ci_high,
                    "a - b": f"{d.value:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]", "wilcoxon_p": test.wilcoxon_p,
                    "pieces": test.n})
    return pd.DataFrame(out)
