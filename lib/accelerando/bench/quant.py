"""WP1 benchmark pieces: weight bytes, fidelity to full precision, CPU int8 speed.

- `quantized_weight_bytes(model, config)`: bytes of a model quantized by `config` (packed codes,
  scales, low-rank factors, smoothing and biases of the quantized linears; every other tensor in
  fp16), from the very buffers `SVDQuantLinear` allocates, built on the meta device, so the
  full-size 1 B-parameter DiT costs no memory.
- `quant_pipeline(model, weights)`: the pipeline whose DiT is quantized, Stable-Audio-Lite
  (trained here) or the real Stable Audio Open from a local copy of its weights.
- `fidelity_to_full_precision(pipe, configs, ...)`: quantize a copy of the pipeline's
  transformer per config (calibrated on one set of prompts), generate another set of prompts from
  the same noise as the full-precision model, and score each clip against its full-precision twin
  (MR-STFT, complex MR-STFT, SI-SDR, LSD); with `embedders`, each clip's embeddings too, for
  `kad_vs_reference` (KAD of each method's clips against the test set's audio); with `confirm`,
  the named configs are scored again on fresh prompts and noise, to re-test a comparison.
- `int8_block_speed(...)`: one full-size DiT block, fp32 against the same block with its linears
  on the int8 CPU path (FBGEMM) plus the low-rank branch, interleaved on the same thread count.
- `family_audit(rows, clips, ...)`: the fidelity records regrouped by the instrument family and
  genre of each evaluation prompt's clip: is any group hurt more than the others?

`render_all` and `fidelity_scores` are the rendering and the four per-clip metrics every fidelity
measurement here shares (`bench.qat` too), so all of them score the same audio the same way.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..machine import set_threads
from ..quant import QuantConfig, SVDQuantConfig, SVDQuantLinear, WeightOnlyConfig, quantize_
from ..quant.api import default_filter
from ..quant.objectives import pipeline_calibration, render
from .measure import compare


def quantized_weight_bytes(model: nn.Module, config: SVDQuantConfig, ranks: Mapping[str, int] | None = None) -> dict:
    """{'fp16_bytes', 'quantized_bytes', 'ratio', 'quantized_layers', 'skipped_layers'} for `model`
    (any device, including meta) under `config`; `ranks` ({layer name: rank}, a `QuantReport.ranks`)
    gives the layers the ranks a per-layer allocation chose instead of `config.rank`."""
    if config.rank_allocation != "uniform" and ranks is None:
        raise ValueError(f"rank_allocation={config.rank_allocation!r} chooses each layer's rank from calibration data: "
                         "pass ranks= (the QuantReport's .ranks) to count its bytes")
    fp16 = sum(p.numel() * 2 for p in model.parameters())
    quantized, layers, skipped, covered = 0, 0, 0, set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if default_filter(module, name, config) is not None:
            skipped += 1
            continue
        with torch.device("meta"):
            skeleton = SVDQuantLinear(module.in_features, module.out_features, config.weight_bits, config.act_bits,
                                      config.group_size, (ranks or {}).get(name, config.rank),
                                      scale_format=config.scale_format,
                                      lowrank_bits=config.lowrank_bits)
        quantized += skeleton.weight_bytes()
        covered.update(id(p) for p in module.parameters())
        layers += 1
    rest = sum(p.numel() * 2 for p in model.parameters() if id(p) not in covered)
    total = quantized + rest
    return {"fp16_bytes": fp16, "quantized_bytes": total, "ratio": fp16 / total, "quantized_layers": layers,
            "skipped_layers": skipped}


SCORES = ("mrstft", "complex_mrstft", "si_sdr", "lsd")  # the per-clip fidelity metrics, in table order
QUANT_MODELS = ("stable-audio-lite", "stable-audio-open")


def quant_pipeline(model: str = "stable-audio-lite", weights: str | Path | None = None,
                   device: str | torch.device = "cpu"):
    """The `StableAudioPipeline` whose DiT the fidelity measurements quantize (fp32).

    model "stable-audio-lite": this project's trained checkpoint (`weights`: its directory, None
    for the committed one). "stable-audio-open": the published Stable Audio Open 1.0 from
    `weights`, a local copy of its repository. It has no random-weight fallback: how far a
    quantized random model lands from its own output says nothing about music.
    """
    from ..models.stable_audio import REPO_ID, build_stable_audio
    from ..models.stable_audio_lite import load_stable_audio_lite

    if model == "stable-audio-lite":
        pipe = load_stable_audio_lite() if weights is None else load_stable_audio_lite(weights)
    elif model == "stable-audio-open":
        if weights is None:
            raise ValueError(f"model 'stable-audio-open' measures the published weights: pass weights=DIR, a local copy "
                             f"of {REPO_ID} (e.g. `huggingface-cli download {REPO_ID} --local-dir DIR` on a machine with "
                             f"access), or use model 'stable-audio-lite'. Nothing is downloaded here.")
        pipe = build_stable_audio("full", weights=weights)
    else:
        raise ValueError(f"unknown model {model!r}; choose one of {QUANT_MODELS}")
    return pipe.to(device)


def render_all(pipe, prompts: list[str], *, seconds: float, steps: int, guidance_scale: float = 6.0,
               batch_size: int = 8, seed: int = 0) -> tuple[torch.Tensor, int]:
    """`render` in batches of `batch_size`, batch i from noise seed + i (so a prompt's noise
    depends only on its position): (audio [prompts, channels, samples], sr)."""
    clips = [render(pipe, prompts[i: i + batch_size], seconds, steps, guidance_scale, seed + i)
             for i in range(0, len(prompts), batch_size)]
    return torch.cat([c for c, _ in clips]), clips[0][1]


FIDELITY_COLUMNS = {"mrstft": "MR-STFT", "complex_mrstft": "complex MR-STFT", "si_sdr": "SI-SDR (dB)", "lsd": "LSD"}
"""The columns `fidelity_scores` fills, with the labels tables print."""


def fidelity_scores(ref: np.ndarray, gen: np.ndarray, sr: int) -> dict:
    """SCORES of one clip `gen` against its full-precision twin `ref` ([channels,
    samples], sr Hz): MR-STFT and complex MR-STFT distances, SI-SDR (dB), log-spectral distance."""
    from ..metrics.fidelity import complex_mrstft_distance, log_spectral_distance, mrstft_distance, si_sdr

    return {"mrstft": mrstft_distance(ref, gen, sr), "complex_mrstft": complex_mrstft_distance(ref, gen, sr),
            "si_sdr": si_sdr(ref, gen, sr), "lsd": log_spectral_distance(ref, gen, sr)}


def fidelity_to_full_precision(pipe, configs: dict[str, QuantConfig | str], calib_prompts: list[str],
                               eval_prompts: list[str], *, steps: int = 25, seconds: float = 4.0,
                               calib_steps: int = 8, calib_seconds: float = 2.0, guidance_scale: float = 6.0,
                               batch_size: int = 8, seed: int = 0, keep_audio: int = 0,
                               embedders: dict | None = None, confirm_prompts: Sequence[str] = (),
                               confirm: Collection[str] = (), reports: dict | None = None) -> Iterator[dict]:
    """Per config and evaluation prompt, one record of fidelity to the full-precision output.

    A config is any config `quantize_` knows (`SVDQuantConfig`, `WeightOnlyConfig`, ...) or the name
    of an external weight-only baseline (`accelerando.quant.EXTERNAL_METHODS`). The transformer is quantized on a copy; the
    pipeline's own transformer is restored after each config. Records: method, prompt index,
    mrstft, complex_mrstft, si_sdr, lsd, quantize_seconds, quantized_layers; the first
    `keep_audio` prompts' records also carry "audio" and "reference_audio" ([channels, samples]
    numpy) and "sr", for listening. With `embedders` ({name: metrics Embedding}) every record
    carries "embeddings" and "reference_embeddings" ({name: [dim] vector}, the clip's windows
    averaged) of the quantized and the full-precision clip.

    A comparison found on `eval_prompts` is re-tested on fresh ones with `confirm` (names of
    configs) and `confirm_prompts`: those configs also generate these prompts, from other noise
    (seeds from seed + 20_000), and score them against full precision the same way. Their records
    carry prompt_set "confirm" (every other record "eval"), a prompt index into `confirm_prompts`,
    and neither audio nor embeddings.

    `reports`, a dict, receives each `SVDQuantConfig`'s `QuantReport` under its name (the layers'
    choices: smoothing, clipping, ranks).
    """
    if isinstance(confirm, str):
        raise TypeError(f"confirm is a collection of config names; got the string {confirm!r}: pass [{confirm!r}]")
    unknown = sorted(set(confirm) - set(configs))
    if unknown:
        raise ValueError(f"confirm names {unknown}, which are not among the configs {list(configs)}")
    if confirm and not confirm_prompts:
        raise ValueError("confirm names configs but confirm_prompts is empty: pass the fresh prompts to re-test on")
    render_eval = partial(render_all, pipe, seconds=seconds, steps=steps, guidance_scale=guidance_scale,
                          batch_size=batch_size, seed=seed)
    render_confirm = partial(render_all, pipe, list(confirm_prompts), seconds=seconds, steps=steps,
                             guidance_scale=guidance_scale, batch_size=batch_size, seed=seed + 20_000)

    original = pipe.transformer
    reference, sr = render_eval(eval_prompts)
    confirm_reference = render_confirm()[0] if confirm else None
    embed = partial(_embed_clips, sr=sr, embedders=embedders or {})
    reference_embeddings = embed(reference)
    for method, config in configs.items():
        dit = copy.deepcopy(original)
        pipe.transformer = dit
        try:
            calib, audio_fn = pipeline_calibration(pipe, calib_prompts, steps=calib_steps, seconds=calib_seconds,
                                                   guidance_scale=guidance_scale, seed=seed + 10_000)
            start = time.perf_counter()
            if isinstance(config, str):
                config = WeightOnlyConfig.from_method(config)
            report = quantize_(dit, config, calib=calib, audio_fn=audio_fn)
            quantized = report.quantized
            if reports is not None:
                reports[method] = report
            spent = time.perf_counter() - start
            audio, _ = render_eval(eval_prompts)
            confirm_audio = render_confirm()[0] if method in confirm else None
        finally:
            pipe.transformer = original
        embeddings = embed(audio)
        common = {"method": method, "config": getattr(config, "name", config),
                  "objective": getattr(config, "objective", None)}
        after = {"quantize_seconds": spent, "quantized_layers": len(quantized)}
        for i, (ref, gen) in enumerate(zip(reference.numpy(), audio.numpy())):
            extra = {"audio": gen, "reference_audio": ref, "sr": sr} if i < keep_audio else {}
            if embedders:
                extra |= {"embeddings": embeddings[i], "reference_embeddings": reference_embeddings[i]}
            yield extra | common | {"prompt_set": "eval", "prompt": i, **fidelity_scores(ref, gen, sr), **after}
        if confirm_audio is not None:
            for i, (ref, gen) in enumerate(zip(confirm_reference.numpy(), confirm_audio.numpy())):
                yield common | {"prompt_set": "confirm", "prompt": i, **fidelity_scores(ref, gen, sr), **after}


def _embed_clips(audio: torch.Tensor, sr: int, embedders: dict) -> list[dict[str, np.ndarray]]:
    """Per clip of `audio` [clips, channels, samples]: {name: [dim] vector} (windows averaged)."""
    from ..metrics.generation import embed_set

    per_name = embed_set(list(audio), sr, embedders) if embedders else {}
    return [{name: vectors[i] for name, vectors in per_name.items()} for i in range(len(audio))]


def corpus_embeddings(clips: Sequence, seconds: float, embedders: dict) -> dict[str, np.ndarray]:
    """KAD's reference: the first `seconds` of each corpus clip (mono, at the corpus's rate),
    embedded, {name: [clips, dim]}; the same length as the generated clips it is compared with."""
    from ..metrics.generation import embed_set

    wavs, rates = [], set()
    for clip in clips:
        audio = clip.load()  # [samples] or [samples, channels]
        audio = audio.mean(axis=1) if audio.ndim == 2 else audio
        rates.add(int(clip.sample_rate))
        wavs.append(torch.from_numpy(audio[: round(seconds * clip.sample_rate)].astype(np.float32))[None])
    if len(rates) != 1:
        raise ValueError(f"the reference clips mix sample rates {sorted(rates)}: take them from one corpus")
    return embed_set(wavs, rates.pop(), embedders)


def kad_vs_reference(generated: dict[str, list[dict[str, np.ndarray]]], reference: dict[str, np.ndarray], *,
                     n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """{method: {embedding: KAD Estimate}}: each method's clips (a list of the per-clip
    {embedding: [dim]} dicts that `fidelity_to_full_precision` attaches) against `reference`
    ({embedding: [clips, dim]}, e.g. `corpus_embeddings`), with bootstrap intervals over clips."""
    from ..metrics.distribution import kad

    return {method: {name: kad(ref, np.stack([clip[name] for clip in clips]), n_boot=n_boot, seed=seed, embedding=name)
                     for name, ref in reference.items()}
            for method, clips in generated.items()}


def int8_block_speed(transformer_config: dict, *, seconds: float = 10.0, rank: int = 32, rounds: int = 5,
                     text_tokens: int = 130, seed: int = 0, threads: int | None = 1) -> dict:
    """Latency of one DiT block in fp32 and in bf16 against the same block on the int8 CPU path,
    interleaved. On CPUs with AMX bf16 is the dense path to beat; elsewhere fp32.

    transformer_config: `StableAudioDiTModel` kwargs (the full-size published config for the
    target); the block sees 21.5 frames/s x `seconds` + 1 tokens and `text_tokens` of context.
    threads: torch threads for the timing (1 by default: two stall whenever another process holds
    a core); the caller's count is restored afterwards. None times at the count in force.
    Returns compare()'s records for 'fp32', 'bf16' and 'int8+lowrank' (speedup_vs_baseline: against
    fp32), and `int8+lowrank_speedup_vs_bf16`.
    """
    before = torch.get_num_threads()
    set_threads(threads)
    try:
        return _int8_block_speed(transformer_config, seconds, rank, rounds, text_tokens, seed)
    finally:
        torch.set_num_threads(before)


def _int8_block_speed(transformer_config: dict, seconds: float, rank: int, rounds: int, text_tokens: int,
                      seed: int) -> dict:
    from diffusers.models.transformers.stable_audio_transformer import StableAudioDiTBlock

    c = transformer_config
    dim = c["num_attention_heads"] * c["attention_head_dim"]
    torch.manual_seed(seed)
    block = StableAudioDiTBlock(dim=dim, num_attention_heads=c["num_attention_heads"],
                                num_key_value_attention_heads=c["num_key_value_attention_heads"],
                                attention_head_dim=c["attention_head_dim"],
                                cross_attention_dim=c["cross_attention_dim"]).eval()
    tokens = int(round(seconds * 44100 / 2048)) + 1
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, tokens, dim, generator=g)
    ctx = torch.randn(1, text_tokens, c["cross_attention_dim"], generator=g)
    quantized = copy.deepcopy(block)
    report = quantize_(quantized, SVDQuantConfig(weight_bits=8, act_bits=8, rank=rank, smoothing="off",
                                                 backend="int8-cpu", skip=()))
    with torch.no_grad():
        ref, out = block(x, encoder_hidden_states=ctx), quantized(x, encoder_hidden_states=ctx)
    rel = float((out - ref).norm() / ref.norm())  # ||out - ref|| / ||ref||
    dense_bf16 = copy.deepcopy(block).to(torch.bfloat16)
    x16, ctx16 = x.bfloat16(), ctx.bfloat16()
    timings = compare({"fp32": lambda: block(x, encoder_hidden_states=ctx),
                       "bf16": lambda: dense_bf16(x16, encoder_hidden_states=ctx16),
                       "int8+lowrank": lambda: quantized(x, encoder_hidden_states=ctx)},
                      rounds=rounds, baseline="fp32", device="cpu")
    vs_bf16 = timings["bf16"]["latency_s_min"] / timings["int8+lowrank"]["latency_s_min"]
    return {"tokens": tokens, "rank": rank, "relative_error": rel, "quantized_layers": len(report.quantized),
            "threads": torch.get_num_threads(), "int8+lowrank_speedup_vs_bf16": vs_bf16,
            **{f"{k}_{m}": v for k, r in timings.items() for m, v in r.items()}}


def family_audit(rows: list[dict], clips: list, method: str = "svdquant w4a4", baseline: str = "rtn w4a4",
                 metric: str = "mrstft", min_group: int = 4, n_resamples: int = 1000,
                 seed: int = 0) -> tuple["pd.DataFrame", dict]:
    """Fidelity records regrouped by what each evaluation prompt describes: is any instrument
    family (or genre) hurt more than the rest?

    rows     fidelity records (`fidelity_to_full_precision`: method, prompt index, `metric`).
    clips    the evaluation clips in prompt order (prompt i is clips[i].caption); a clip belongs to
             every instrument family it holds (`Clip.families`, pretty_midi's GM classes and
             "Drums") and to its one genre.

    One row per group (kind "family" or "genre"): n prompts, the mean `metric` of `method` and of
    `baseline` with 95 % bootstrap intervals, and the per-prompt log ratio method / baseline
    (mean, interval; exp of it is the geometric-mean ratio). Two tests per group, group against
    the other prompts (two-sided Mann-Whitney U, Holm-adjusted within its kind): `p_hurt` on
    `method`'s metric (are this group's prompts further from full precision?) and `p_gain` on the
    log ratio (does `method`'s gain over `baseline` differ here?). The tests are two-sided, so each
    carries the side the group lies on (medians inside against outside): `hurt_side` "further from
    full precision" or "closer to full precision", `gain_side` "a larger gain over the baseline" or "a
    smaller gain over the baseline". Groups with fewer than
    `min_group` prompts on either side are described but not tested (tested False, p NaN). The
    second value holds Kruskal-Wallis tests across the genres (disjoint groups) with at least
    `min_group` prompts: None when fewer than two have.
    """
    import pandas as pd
    from scipy import stats as sps

    from ..metrics.stats import bootstrap_ci

    def per_prompt(name):
        got = {r["prompt"]: r[metric] for r in rows if r["method"] == name}
        if sorted(got) != list(range(len(clips))):
            raise ValueError(f"{name!r} has records for prompts {sorted(got)}; expected one per clip 0..{len(clips) - 1}")
        return np.array([got[i] for i in range(len(clips))], dtype=float)

    a, b = per_prompt(method), per_prompt(baseline)
    log_ratio = np.log(a / b)
    groups = [("family", f, np.array([f in c.families for c in clips])) for f in sorted({f for c in clips for f in c.families})]
    groups += [("genre", g, np.array([c.genre == g for c in clips])) for g in sorted({c.genre for c in clips})]
    out = []
    for kind, name, inside in groups:
        n = int(inside.sum())
        row = {"kind": kind, "group": name, "n": n}
        for label, values in ((method, a[inside]), (baseline, b[inside]), ("log_ratio", log_ratio[inside])):
            est = bootstrap_ci(list(values), n_resamples=n_resamples, seed=seed)
            row |= {label: est.value, f"{label}_lo": est.ci_low, f"{label}_hi": est.ci_high}
        row["tested"] = min(n, len(clips) - n) >= min_group
        for key, values in (("p_hurt", a), ("p_gain", log_ratio)):
            row[key] = float(sps.mannwhitneyu(values[inside], values[~inside]).pvalue) if row["tested"] else np.nan
        higher = n > 0 and n < len(clips) and np.median(a[inside]) > np.median(a[~inside])
        row["hurt_side"] = "further from full precision" if higher else "closer to full precision"
        lower_ratio = n > 0 and n < len(clips) and np.median(log_ratio[inside]) < np.median(log_ratio[~inside])
        row["gain_side"] = "a larger gain over the baseline" if lower_ratio else "a smaller gain over the baseline"
        out.append(row)
    table = pd.DataFrame(out)
    for key in ("p_hurt", "p_gain"):
        table[f"{key}_holm"] = np.nan
        for kind in ("family", "genre"):
            sel = table.index[(table.kind == kind) & table.tested]
            table.loc[sel, f"{key}_holm"] = _holm(table.loc[sel, key].astype(float).tolist())
    disjoint = [g for k, _, g in groups if k == "genre" and g.sum() >= min_group]

    def kruskal(values):
        return float(sps.kruskal(*[values[g] for g in disjoint]).pvalue) if len(disjoint) >= 2 else None

    omnibus = {"genres_tested": len(disjoint), "kruskal_hurt_p": kruskal(a), "kruskal_gain_p": kruskal(log_ratio)}
    return table, omnibus


def _holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values (family-wise error), in the input's order."""
    order = np.argsort(p)
    adjusted, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
