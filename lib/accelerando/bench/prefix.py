"""WP2 measurements for autoregressive token models: edits that keep the cached prefix.

    lite_prefix_edits(pipe, prompts, ...)   MusicGen-Lite: per prompt a track from the KV-cache
                                            tree, then edits from frame t (everything after t
                                            redecoded): boundary quality at t, exactness of the
                                            kept codes and audio, time of the edit from the
                                            stored prefix vs prefill vs regenerating, memory of
                                            alternative branches as a tree vs one cache each

Frames are code frames (`codec.frame_rate`, 21.5 Hz for Codec-Lite); an edit "at t" keeps
frames [0, t) and decodes [t, frames); its seam sits at t / frame_rate seconds.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from ..metrics.seams import seam_jump
from ..editing import PrefixTree
from ..sparse import CachedDecoder
from .measure import compare


def edit_frame(frames: int, fraction: float) -> int:
    """The frame t in [1, frames - 1] an edit at `fraction` of a `frames`-long track starts at."""
    if frames < 2:
        raise ValueError(f"a track of {frames} frame(s) has no frame to edit from: generate at least 2")
    return min(frames - 1, max(1, round(fraction * frames)))


class _Decoder:
    """Codes [1, K, frames] -> mono audio [samples]. Codec-Lite: the autoencoder's decoder behind
    a `CachedDecoder`, so an edit re-decodes only the samples its changed latents reach (and the
    samples before that reach are the original's, bit for bit); another codec: full decodes."""

    def __init__(self, codec):
        self.codec = codec
        self.sparse = hasattr(codec, "rvq") and hasattr(codec, "vae")  # Codec-Lite's LatentCodec
        self.cached: CachedDecoder | None = None

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Full decode; with Codec-Lite it also fills the block cache edits start from."""
        if not self.sparse:
            return self.codec.decode(codes)[0].mean(0)
        self.cached = CachedDecoder(self.codec.vae)
        return self.cached.decode(self.codec.rvq.decode(codes))[0].mean(0)

    def edit(self, codes: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Audio of edited codes from the cached decode of the original (left as it was: the
        update is undone afterwards) and the report: decode seconds, sparse reach [lo, hi)
        samples, error against a full decode relative to its peak."""
        if not self.sparse:
            start = time.perf_counter()
            audio = self.codec.decode(codes)[0].mean(0)
            return audio, {"decode_full_s": time.perf_counter() - start}
        dec = self.cached
        z = self.codec.rvq.decode(codes)
        start = time.perf_counter()
        audio = dec.update(z)
        sparse_s = time.perf_counter() - start
        ranges = dec.last_update["samples"]
        dec.undo()
        start = time.perf_counter()
        full = self.codec.vae.decode(z).sample
        full_s = time.perf_counter() - start
        return audio[0].mean(0), {
            "decode_full_s": full_s, "decode_cached_s": sparse_s,
            "reach": (ranges[0][0], ranges[-1][1]) if ranges else (audio.shape[-1], audio.shape[-1]),
            "cached_decode_max_error_rel": float((audio - full).abs().max() / full.abs().max()),
        }


@torch.no_grad()
def lite_prefix_edits(pipe, prompts: list[str], *, seconds: float = 8.0, at_fractions: tuple[float, ...] = (0.5,),
                      seed: int = 0, guidance: float = 3.0, temperature: float = 1.0, top_k: int = 250,
                      branches: int = 3, rounds: int = 1, warmup: int = 0, keep_audio: int = 0
                      ) -> tuple[list[dict], dict]:
    """Per prompt of a trained `MusicGenLitePipeline` (A or B, text only) and edit point t =
    `edit_frame(frames, f)` for f in `at_fractions`:

    - a track of `seconds` from a `PrefixTree` (the root), an edit redecoding frames [t, frames)
      with another seed from the stored prefix, and an independent track (another seed) whose
      audio from t on, pasted after the original's first t frames, is the naive splice;
    - boundary: `seam_jump` at t / frame_rate s of the edit, of the original there (the music's
      own flux) and of the naive splice (a cut between unrelated audio);
    - exactness: codes before t identical to the original's; with Codec-Lite the edit's audio
      from the cached decoder: samples before its reach bit-identical, the fraction recomputed,
      the error against a full decode;
    - time (`compare`, interleaved, `rounds` rounds after `warmup`; the root's generation has
      already run the same loop once, hence no warm-up by default): the LM part of the edit from
      the stored prefix, from a prefill (reuse=False: the whole kept prefix in one forward, what
      `generate(..., continuation=)` costs) and regenerating the track; decode times once each;
    - memory: `branches` alternative edits at t (the timed ones, topped up) stored as a tree
      against one full cache each.

    Returns (rows, kept audio): kept[(prompt index, t)] holds mono float arrays [samples] at
    `pipe.sample_rate` ("original", "edit", "naive splice") and "at_s" for the first
    `keep_audio` prompts."""
    from ..models.musicgen_lite import frames_for

    if not at_fractions or not all(0 < f < 1 for f in at_fractions):
        raise ValueError(f"at_fractions={at_fractions}: edit points are fractions of the track in (0, 1)")
    if branches < 1 or rounds < 1:
        raise ValueError(f"branches={branches}, rounds={rounds}: both must be >= 1")
    codec, sr = pipe.codec, pipe.sample_rate
    frames = frames_for(seconds, codec.frame_rate)
    if frames > pipe.model.config.max_frames:
        raise ValueError(f"seconds={seconds}: this model generates at most {pipe.max_seconds:.2f} s")
    hop = sr / codec.frame_rate  # samples per code frame
    sampling = dict(temperature=temperature, top_k=top_k)
    rows, kept = [], {}
    for i, prompt in enumerate(prompts):
        states, mask = pipe.text_encoder.encode([prompt])
        tree = PrefixTree.for_musicgen_lite(pipe.model, states, mask, guidance=guidance)
        root = tree.generate(frames, seed=seed + i, **sampling)  # also warms up the decoding loop
        codes = tree.codes(root)
        decoder = _Decoder(codec)
        original = decoder.decode(codes)
        ats = sorted({edit_frame(frames, f) for f in at_fractions})
        # Timing, interleaved. Every call draws a fresh seed (the cost of a step does not depend
        # on the codes) and its result is used afterwards rather than decoded again: the last
        # regenerated track is the naive splice's independent take, the branches at t are the
        # alternatives of the memory count, the last one from the stored prefix is the edit.
        seeds = itertools.count(seed + 1000 * (i + 1))
        takes, made, edits = [], {t: [] for t in ats}, {}

        def regenerate():
            if takes:
                tree.discard(takes.pop())
            takes.append(tree.generate(frames, seed=next(seeds), **sampling))

        def branch(t, reuse):
            def call():
                made[t].append(tree.branch(root, at=t, seed=next(seeds), reuse=reuse, **sampling))
                if reuse:
                    edits[t] = made[t][-1]
            return call

        calls = {"regenerate": regenerate}
        for t in ats:
            calls[f"prefill {t}"] = branch(t, reuse=False)
            calls[f"prefix cache {t}"] = branch(t, reuse=True)
        timing = compare(calls, rounds=rounds, warmup=warmup, baseline="regenerate", device="cpu")
        other = takes.pop()
        other_audio = codec.decode(tree.codes(other))[0].mean(0)
        tree.discard(other)
        for t in ats:
            at_s = t / codec.frame_rate
            edit = edits[t]
            edited = tree.codes(edit)
            audio, report = decoder.edit(edited)
            cut = round(t * hop)
            naive = torch.cat([original[:cut], other_audio[cut:]])
            while len(made[t]) < branches:
                made[t].append(tree.branch(root, at=t, seed=next(seeds), **sampling))
            alternatives = [edit] + [b for b in made[t] if b is not edit][:branches - 1]
            row = {
                "measure": "lite_prefix_edit", "variant": pipe.model.config.variant, "prompt": i, "frames": frames,
                "seconds": frames / codec.frame_rate, "at": t, "at_s": at_s, "edited_fraction": (frames - t) / frames,
                "codes_before_at_identical": bool(torch.equal(edited[..., :t], codes[..., :t])),
                "codes_after_at_changed_fraction": float((edited[..., t:] != codes[..., t:]).float().mean()),
                "seam_jump_edit": seam_jump(audio.numpy(), sr, [at_s])[0],
                "seam_jump_original": seam_jump(original.numpy(), sr, [at_s])[0],
                "seam_jump_naive_splice": seam_jump(naive.numpy(), sr, [at_s])[0],
                "regenerate_s": timing["regenerate"]["latency_s_min"],
                "prefill_s": timing[f"prefill {t}"]["latency_s_min"],
                "prefix_cache_s": timing[f"prefix cache {t}"]["latency_s_min"],
                "prefix_cache_speedup": timing[f"prefix cache {t}"]["speedup_vs_baseline"],
                "prefill_speedup": timing[f"prefill {t}"]["speedup_vs_baseline"],
                "decode_full_s": report["decode_full_s"], "decode_cached_s": report.get("decode_cached_s"),
                # the whole edit (LM from the stored prefix + cached decode) vs a new track (LM + full decode)
                "edit_total_s": timing[f"prefix cache {t}"]["latency_s_min"]
                + report.get("decode_cached_s", report["decode_full_s"]),
                "regenerate_total_s": timing["regenerate"]["latency_s_min"] + report["decode_full_s"],
                "branches": branches, "tree_bytes": tree.nbytes([root, *alternatives]),
                "unshared_bytes": tree.unshared_nbytes([root, *alternatives]),
                "shared_bytes": tree.adapter.shared_nbytes(),
                "rounds": rounds, "threads": torch.get_num_threads(),
            }
            if "reach" in report:
                lo, hi = report["reach"]
                row.update({
                    "audio_before_reach_identical": bool(torch.equal(audio[:lo], original[:lo])),
                    "reach_before_seam_s": (cut - lo) / sr,  # how far before t the decoder's reach starts
                    "recomputed_samples_fraction": (hi - lo) / audio.shape[-1],
                    "cached_decode_max_error_rel": report["cached_decode_max_error_rel"],
                })
            rows.append(row)
            if i < keep_audio:
                kept[(i, t)] = {"original": original.numpy(), "edit": audio.numpy(), "naive splice": naive.numpy(),
                                "at_s": at_s}
    return rows, kept


def summarize(rows: list[dict]) -> dict:
    """Medians over `lite_prefix_edits` rows of the seam jumps, speed-ups and the memory the tree
    stores as a fraction of one full cache per branch (tree_over_unshared_memory < 1 saves), and
    whether the kept codes (codes_kept), the audio before the decoder's reach (audio_kept) and so
    every exactness check (all_exact) held."""
    med = lambda key: float(np.median([r[key] for r in rows]))  # noqa: E731
    kept = lambda key: bool(all(r[key] for r in rows if key in r))  # noqa: E731
    codes_kept, audio_kept = kept("codes_before_at_identical"), kept("audio_before_reach_identical")
    return {
        "edits": len(rows), "seam_jump_edit": med("seam_jump_edit"), "seam_jump_original": med("seam_jump_original"),
        "seam_jump_naive_splice": med("seam_jump_naive_splice"), "prefix_cache_speedup": med("prefix_cache_speedup"),
        "prefill_speedup": med("prefill_speedup"),
        "tree_over_unshared_memory": float(np.median([r["tree_bytes"] / r["unshared_bytes"] for r in rows])),
        "codes_kept": codes_kept, "audio_kept": audio_kept, "all_exact": codes_kept and audio_kept,
    }
