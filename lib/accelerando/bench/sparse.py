"""WP2 measurements: sparse re-decoding and sparse DiT steps against dense, side by side in one run.

    decoder_speed(vae, frames, fractions)          full decode vs cached and windowed re-decode
    dit_step_speed(transformer, frames, fractions) dense DiT step vs sparse (edited tokens + margin)
    end_to_end(pipe, seconds, steps, fraction)     regenerating a track vs editing 'fraction' of it
    edit_fidelity(pipe, prompts, ...)              sparse edits vs the dense edit, per clip (Lite)

Edits sit in the middle of the track; a fraction f of a track of T frames edits round(f T) frames.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..metrics.fidelity import complex_mrstft_distance, mrstft_distance
from ..metrics.seams import seam_jump
from ..models.latent_grouping import latent_channels
from ..attention import KeyValueCache
from ..sparse import CachedDecoder, EditSession, decode_window, dit_forward
from .baseline import dit_inputs
from .measure import compare


def edit_region(frames: int, fraction: float) -> tuple[int, int]:
    """Latent frames [a, b) of a centred edit of `fraction` of a `frames`-long track."""
    n = min(frames, max(1, round(fraction * frames)))
    a = (frames - n) // 2
    return a, a + n


@torch.no_grad()
def decoder_speed(vae, frames: int, fractions: list[float], *, rounds: int = 2, warmup: int = 1,
                  seed: int = 0) -> list[dict]:
    """Per edit fraction: full `vae.decode` vs `CachedDecoder.update` vs `decode_window`, interleaved.

    Each cached call edits its region of the current track with fresh latents (so it always has
    work to do); the windowed call decodes the samples such an edit changes. The timed edits keep
    no undo tiles (the bytes of the cache are the maps alone). After the timing, one more edit per
    fraction, kept for undo (its `undo_bytes`), checks that the samples outside its reach did not
    move, and a full decode of the final latents gives the error of the cached maps and of each
    window, relative to the track's peak.
    """
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, latent_channels(vae), frames, generator=gen)
    dec = CachedDecoder(vae)
    dec.decode(z)
    calls = {"full": lambda: vae.decode(dec.latents).sample}
    reach = {}
    for f in fractions:
        a, b = edit_region(frames, f)

        def edit(a=a, b=b, keep_undo=False):
            target = dec.latents.clone()
            target[..., a:b] = torch.randn(target[..., a:b].shape, generator=gen)
            return dec.update(target, keep_undo=keep_undo)

        edit()
        reach[f] = dec.last_update["samples"][0]
        calls[f"cached {f:g}"] = edit
        calls[f"window {f:g}"] = lambda r=reach[f]: decode_window(vae, dec.latents, *r)
    timing = compare(calls, rounds=rounds, warmup=warmup, baseline="full", device="cpu")
    # exactness: one more edit per fraction on top of each other, then one full decode of the
    # final latents checks them all (a full decode per fraction would cost more than the timing)
    before = dec.maps[-1].clone()
    map_bytes = dec.cache_bytes()
    unchanged, undo_bytes = [], []
    for f in fractions:
        held = dec.cache_bytes()
        calls[f"cached {f:g}"](keep_undo=True)
        undo_bytes.append(dec.cache_bytes() - held)
        reach[f] = lo, hi = dec.last_update["samples"][0]
        after = dec.maps[-1]
        unchanged.append(bool(torch.equal(after[..., :lo], before[..., :lo]) and torch.equal(after[..., hi:], before[..., hi:])))
        before = after.clone()
    full = vae.decode(dec.latents).sample
    peak = float(full.abs().max())
    cached_error = float((dec.maps[-1] - full).abs().max()) / peak
    records = []
    for f, same, kept in zip(fractions, unchanged, undo_bytes):
        a, b = edit_region(frames, f)
        lo, hi = reach[f]
        window = decode_window(vae, dec.latents, lo, hi)
        records.append({
            "measure": "decoder_speed", "frames": frames, "fraction": f, "edit_frames": b - a,
            "recomputed_samples_fraction": (hi - lo) / full.shape[-1],
            "full_s": timing["full"]["latency_s_min"],
            "cached_s": timing[f"cached {f:g}"]["latency_s_min"],
            "window_s": timing[f"window {f:g}"]["latency_s_min"],
            "cached_speedup": timing[f"cached {f:g}"]["speedup_vs_baseline"],
            "window_speedup": timing[f"window {f:g}"]["speedup_vs_baseline"],
            "ideal_speedup": 1 / f,
            "cached_max_error_rel": cached_error,  # after all the edits, against one full decode
            "window_max_error_rel": float((window - full[..., lo:hi]).abs().max()) / peak,
            "outside_reach_unchanged": same,
            "cache_bytes": map_bytes,  # the block-boundary maps
            "undo_bytes": kept,  # what keeping this edit's overwritten tiles for an exact undo adds
            "rounds": rounds,
        })
    return records


@torch.no_grad()
def dit_step_speed(pipe, frames: int, fractions: list[float], *, margin: int = 8, batch: int = 2,
                   rounds: int = 2, warmup: int = 1, seed: int = 0) -> list[dict]:
    """Per edit fraction: one dense DiT forward of `pipe.transformer` vs one sparse forward on the
    edit's frames plus `margin` each side (batch=2: a classifier-free-guidance step), interleaved."""
    inputs = dit_inputs(pipe, frames, batch, generator=torch.Generator().manual_seed(seed))
    inputs.pop("return_dict")
    transformer = pipe.transformer
    cache = KeyValueCache.install(transformer)
    try:
        calls = {"dense": lambda: dit_forward(transformer, cache, **inputs)}
        calls["dense"]()
        active = {}
        for f in fractions:
            a, b = edit_region(frames, f)
            active[f] = torch.arange(max(a - margin, 0), min(b + margin, frames))
            calls[f"sparse {f:g}"] = lambda idx=active[f]: dit_forward(transformer, cache, **inputs, frames=idx)
        timing = compare(calls, rounds=rounds, warmup=warmup, baseline="dense", device="cpu")
        kv_bytes = cache.nbytes()
    finally:
        cache.remove(transformer)
    return [{
        "measure": "dit_step_speed", "frames": frames, "fraction": f, "batch": batch, "margin": margin,
        "active_fraction": len(active[f]) / frames, "dense_s": timing["dense"]["latency_s_min"],
        "sparse_s": timing[f"sparse {f:g}"]["latency_s_min"],
        "speedup": timing[f"sparse {f:g}"]["speedup_vs_baseline"], "ideal_speedup": 1 / f,
        "kv_cache_bytes_per_step": kv_bytes, "rounds": rounds,
    } for f in fractions]


@torch.no_grad()
def end_to_end(pipe, *, seconds: float, steps: int, fraction: float, edits: dict[str, dict], margin: int = 8,
               record_dtype: torch.dtype | None = None, prompt: str = "a chorale in D major for brass at 90 BPM",
               seed: int = 0) -> list[dict]:
    """Wall time of generating a track (dense steps + full decode) and of editing `fraction` of it
    in each way of `edits` (name -> `EditSession.edit` keywords such as refresh_every and
    kv_correction; sparse steps + sparse re-decode), one after the other, undoing in between.
    The generation keeps its per-step K/V record (in `record_dtype`) when an edit reads it; its
    bytes are reported, and the time to keep it counts as part of regenerating."""
    keep_kv = any(kw.get("refresh_every", 0) == 0 or kw.get("kv_correction", False) for kw in edits.values())
    session = EditSession(pipe, steps=steps, keep_kv=keep_kv, record_dtype=record_dtype)
    start = time.perf_counter()
    session.generate(prompt, seconds=seconds, seed=seed)
    regenerate_s = time.perf_counter() - start
    gen_report = dict(session.last_edit)
    record = session.takes[0].kv
    record_bytes = sum(t.numel() * t.element_size() for step in record for part in step for t in part) if record else 0
    # medians: the first step of each kind also pays for setting up its shapes
    dense_step = float(np.median(gen_report["dense_step_s"]))
    frames = pipe.transformer.config.sample_size
    a, b = edit_region(frames, fraction)
    fs = session.frame_seconds
    rows = []
    for name, kw in edits.items():
        start = time.perf_counter()
        session.edit(a * fs, min(b * fs, seconds), margin=margin, seed=seed + 1, **kw)
        edit_s = time.perf_counter() - start
        rep = session.last_edit
        session.undo()
        rows.append({
            "measure": "end_to_end", "edit": name, "seconds": seconds, "steps": steps, "fraction": fraction,
            "refresh_every": kw.get("refresh_every", 0), "kv_correction": kw.get("kv_correction", False),
            "edit_frames": b - a, "margin": margin,
            "record_bytes": record_bytes, "record_dtype": str(record_dtype or pipe.transformer.dtype),
            "regenerate_s": regenerate_s, "edit_s": edit_s, "speedup": regenerate_s / edit_s,
            "dense_step_s": dense_step,
            "sparse_step_s": float(np.median(rep["sparse_step_s"])) if rep["sparse_step_s"] else float("nan"),
            "edit_dense_steps": rep["dense_steps"], "edit_sparse_steps": rep["sparse_steps"],
            "edit_decode_s": rep["decode_s"], "regenerate_other_s": regenerate_s - sum(gen_report["dense_step_s"]),
        })
    return rows


def project_speedup(rec: dict, steps: int, refresh_every: int | None = None) -> float:
    """Regenerate / edit wall time at `steps` steps from an `end_to_end` record's measured parts:
    median dense and sparse step times, the edit's decode, and the generation's time outside its
    DiT steps (text encoding, scheduler, full decode). `refresh_every` (default: the record's) is
    the edit's dense-step interval. A projection, not a measurement."""
    k = rec["refresh_every"] if refresh_every is None else refresh_every
    dense_steps = -(-steps // k) if k else 0  # k = 0: every step attends to the generation's record
    regenerate = steps * rec["dense_step_s"] + rec["regenerate_other_s"]
    edit = dense_steps * rec["dense_step_s"] + (steps - dense_steps) * rec["sparse_step_s"] + rec["edit_decode_s"]
    return regenerate / edit


def speed_fidelity_points(fidelity: "pd.DataFrame", e2e: dict[str, dict], fraction: float, lite_steps: int,
                          steps: int, metric: str = "mrstft_to_dense", n_resamples: int = 1000, seed: int = 0
                          ) -> "pd.DataFrame":
    """Speed and fidelity of each sparse edit variant side by side: one row per variant of
    `edit_fidelity`'s rows at `fraction`, with its distance to the dense edit (mean and bootstrap
    interval), the noise floor (the same distance between two dense edits that differ only by
    their noise), whether the variant lies inside it (its interval's upper end below the floor's
    mean), and the full-size end-to-end speedup projected at `steps` (`project_speedup`) for the
    same schedule: the same share of dense steps as the variant's refresh interval over
    `lite_steps`, from the `end_to_end` record with the same correction setting (`e2e`: its rows
    by name, one with `kv_correction` and one without), a margin's extra frames scaling the sparse
    step's measured cost linearly. The speedups are projections from measured parts, the
    distances measurements on Stable-Audio-Lite."""
    import pandas as pd

    from ..metrics.stats import bootstrap_ci

    at = fidelity[fidelity.fraction == fraction]
    floor = bootstrap_ci(at[at.variant == "dense, other seed"][metric].tolist(), n_resamples=n_resamples, seed=seed)
    by_correction = {bool(r["kv_correction"]): r for r in e2e.values()}
    out = []
    for variant, rows in at[at.variant.str.startswith("sparse")].groupby("variant", sort=False):
        k, m, corrected = int(rows.refresh_every.iloc[0]), int(rows.margin.iloc[0]), bool(rows.kv_correction.iloc[0])
        rec = dict(by_correction.get(corrected) or by_correction[False])
        rec["sparse_step_s"] *= (rec["edit_frames"] + 2 * m) / (rec["edit_frames"] + 2 * rec["margin"])
        refresh = 0 if k == 0 else max(1, round(k * steps / lite_steps))
        dist = bootstrap_ci(rows[metric].tolist(), n_resamples=n_resamples, seed=seed)
        out.append({"variant": variant, "refresh_every_lite": k, "margin": m, "corrected": corrected,
                    "distance": dist.value, "distance_low": dist.ci_low, "distance_high": dist.ci_high,
                    "noise_floor": floor.value, "inside_floor": bool(dist.ci_high < floor.value),
                    "projected_speedup": project_speedup(rec, steps, refresh_every=refresh)})
    return pd.DataFrame(out).set_index("variant")


@torch.no_grad()
def edit_fidelity(pipe, prompts: list[str], edit_prompts: list[str], *, fractions: list[float], steps: int,
                  seconds: float, refresh: list[int], margins: list[int], corrected: list[int] = (), margin: int = 8,
                  record_dtype: torch.dtype | None = None, seed: int = 0, keep_audio: int = 0
                  ) -> tuple[list[dict], dict]:
    """Per prompt and edit fraction, on a trained pipeline: the dense edit (the reference), the same
    edit with another seed (how far edits that differ only by chance lie apart), sparse edits per
    K/V refresh interval (at `margin`), per refresh interval with the K/V correction
    (`corrected`), per margin (refresh 0), and a naive splice of an independent generation. Rows
    carry region distances to the dense edit, seam jumps, the check that samples outside the
    decoder's reach equal the track before the edit, and that undo gives it back bit for bit.
    record_dtype: the dtype of the generation's K/V record. Returns (rows, kept audio)."""
    sr = int(pipe.vae.config.sampling_rate)
    rng = np.random.default_rng(seed)
    rows, kept = [], {}
    for i, (prompt, new) in enumerate(zip(prompts, edit_prompts)):
        session = EditSession(pipe, steps=steps, record_dtype=record_dtype)
        original = session.generate(prompt, seconds=seconds, seed=seed + i)[0].mean(0)
        other = EditSession(pipe, steps=steps).generate(new, seconds=seconds, seed=seed + 10_000 + i)[0].mean(0)
        for f in fractions:
            span = f * seconds
            start = float(rng.uniform(0.1 * seconds, 0.9 * seconds - span)) if span < 0.8 * seconds else 0.1 * seconds
            start = round(start / session.frame_seconds) * session.frame_seconds
            end = min(start + span, seconds)
            lo, hi = int(start * sr), int(end * sr)
            variants = {"dense": dict(mode="dense"), "dense, other seed": dict(mode="dense", seed_offset=1)}
            for k in refresh:
                variants[f"sparse k={k}"] = dict(mode="sparse", refresh_every=k, margin=margin)
            for k in corrected:
                variants[f"sparse k={k} corrected"] = dict(mode="sparse", refresh_every=k, margin=margin,
                                                           kv_correction=True)
            for m in margins:
                variants.setdefault(f"sparse k=0 m={m}", dict(mode="sparse", refresh_every=0, margin=m))
            audio = {}
            for name, kw in variants.items():
                kw = dict(kw)
                edit_seed = seed + 100 * i + 7 + kw.pop("seed_offset", 0) * 5000
                out = session.edit(start, end, prompt=new, seed=edit_seed, **kw)[0].mean(0)
                reach = session.decoder.last_update["samples"]
                r_lo, r_hi = reach[0][0], reach[-1][1]
                audio[name] = out
                rows.append({
                    "prompt": i, "fraction": f, "variant": name, "start_s": start, "end_s": end,
                    "refresh_every": kw.get("refresh_every"), "margin": kw.get("margin"),
                    "kv_correction": kw.get("kv_correction", False),
                    "dense_s": session.last_edit["dense_s"], "sparse_s": session.last_edit["sparse_s"],
                    "outside_reach_identical": bool(np.array_equal(out[:r_lo], original[:r_lo])
                                                    and np.array_equal(out[r_hi:], original[r_hi:len(original)])),
                    "reach_s": (r_hi - r_lo) / sr - (end - start),
                    "seam_jump": float(np.mean(seam_jump(out, sr, [start, end]))),
                })
                undone = session.undo()[0].mean(0)
                rows[-1]["undo_exact"] = bool(np.array_equal(undone, original))
            naive = original.copy()
            naive[lo:hi] = other[lo:hi]
            rows.append({"prompt": i, "fraction": f, "variant": "naive splice", "start_s": start, "end_s": end,
                         "seam_jump": float(np.mean(seam_jump(naive, sr, [start, end])))})
            rows.append({"prompt": i, "fraction": f, "variant": "original", "start_s": start, "end_s": end,
                         "seam_jump": float(np.mean(seam_jump(original, sr, [start, end])))})
            ref = audio["dense"][lo:hi]
            for row in rows:
                if row["prompt"] == i and row["fraction"] == f and row["variant"] in audio:
                    est = audio[row["variant"]][lo:hi]
                    row["mrstft_to_dense"] = mrstft_distance(ref[None], est[None], sr)
                    row["complex_mrstft_to_dense"] = complex_mrstft_distance(ref[None], est[None], sr)
            if i < keep_audio:
                kept[(i, f)] = {"original": original, "naive splice": naive, **audio, "region": (start, end)}
    return rows, kept


@torch.no_grad()
def prefix_edit_speed(model, *, frames: int, at: list[int], text_tokens: int = 16, branches: int = 4,
                      rounds: int = 2, warmup: int = 1, seed: int = 0) -> list[dict]:
    """MusicGen editing from frame t of a `frames`-frame generation, interleaved: regenerate every
    frame, recompute the kept prefix in one forward then decode the rest, or read the prefix's
    stored keys/values and decode the rest. Then the memory of `branches` alternative edits
    from the first `at` stored as a tree against one full cache per branch."""
    from ..editing import PrefixTree

    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(0, model.text_encoder.config.vocab_size, (1, text_tokens), generator=gen)
    tree = PrefixTree(model, text)
    root = tree.generate(frames, seed=seed)

    def timed(fn):
        def call():
            branch = fn()
            tree.branches.remove(branch)
        return call

    calls = {"regenerate": timed(lambda: tree.generate(frames, seed=seed + 1))}
    for t in at:
        calls[f"prefill {t}"] = timed(lambda t=t: tree.branch(root, at=t, seed=seed + 1, reuse=False))
        calls[f"prefix cache {t}"] = timed(lambda t=t: tree.branch(root, at=t, seed=seed + 1))
    timing = compare(calls, rounds=rounds, warmup=warmup, baseline="regenerate", device="cpu")
    records = []
    for t in at:
        alternatives = [tree.branch(root, at=t, seed=seed + 2 + b) for b in range(branches)]
        records.append({
            "measure": "prefix_edit", "frames": frames, "at": t, "edited_fraction": (frames - t) / frames,
            "regenerate_s": timing["regenerate"]["latency_s_min"],
            "prefill_s": timing[f"prefill {t}"]["latency_s_min"],
            "prefix_cache_s": timing[f"prefix cache {t}"]["latency_s_min"],
            "prefix_cache_speedup": timing[f"prefix cache {t}"]["speedup_vs_baseline"],
            "prefill_speedup": timing[f"prefill {t}"]["speedup_vs_baseline"],
            "branches": branches, "tree_bytes": tree.nbytes([root, *alternatives]),
            "unshared_bytes": tree.unshared_nbytes([root, *alternatives]),
            "rounds": rounds,
        })
    return records
