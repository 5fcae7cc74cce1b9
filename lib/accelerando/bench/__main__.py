"""`python -m accelerando.bench SUITE ...`: run a benchmark suite, one JSON record per measurement.

    python -m accelerando.bench baseline --preset tiny --json
    python -m accelerando.bench baseline --preset full --seconds 1 10 47.55 --threads 2 --json
    python -m accelerando.bench quant --prompts 32 --json
    python -m accelerando.bench quant --skip-fidelity --skip-speed --tokens --qat --json
    python -m accelerando.bench quant --model stable-audio-open --weights DIR --steps 100 --seconds 10 --json
    python -m accelerando.bench sparse --json
    python -m accelerando.bench radial --minutes 1 5 10 --kernels blocks flex --json
    torchrun --nproc-per-node 2 -m accelerando.bench distributed --seconds 10 47 120 --json
    torchrun --nproc-per-node 2 -m accelerando.bench distributed --seconds --quality-prompts 8 --json
    python -m accelerando.bench serve --json                      # the server on a local Ray, an arrival sweep
    python -m accelerando.bench serve --kill-replica full --json  # the fault test
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from ..machine import default_device, set_threads

# The MusicGen preset measured next to each Stable Audio preset.
MUSICGEN_FOR = {"full": "small", "small": "tiny", "tiny": "tiny"}


def baseline(args) -> list[dict]:
    from ..models import build_musicgen, build_stable_audio
    from .baseline import musicgen_decode_sweep, stable_audio_sweep

    device = torch.device(args.device or default_device())
    torch.manual_seed(args.seed)
    records = []
    pipe = build_stable_audio(args.preset, weights=args.weights, device=device)
    meta = build_stable_audio(args.preset, device="meta")
    for rec in stable_audio_sweep(
        pipe, args.seconds, flops_pipe=meta, warmup=args.warmup, repeats=args.repeats, budget_s=args.budget_s, device=device
    ):
        records.append(_emit(rec | {"model": f"stable-audio-open:{args.preset}"}, args.json))
    del pipe, meta
    model = build_musicgen(MUSICGEN_FOR[args.preset], device=device)
    meta = build_musicgen(MUSICGEN_FOR[args.preset], device="meta")
    for rec in musicgen_decode_sweep(
        model, args.context_frames, flops_model=meta, warmup=args.warmup, repeats=args.repeats, budget_s=args.budget_s, device=device
    ):
        records.append(_emit(rec | {"model": f"musicgen:{MUSICGEN_FOR[args.preset]}"}, args.json))
    return records


BITS = {"w4a4": (4, 4), "w4a8": (4, 8), "w8a8": (8, 8), "w4a16": (4, None), "w8a16": (8, None)}


def _ci(est) -> dict:
    return {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high}


def quant(args) -> list[dict]:
    """WP1: weight bytes of the full-size DiT, int8 CPU block speed, fidelity of the quantized
    Stable-Audio-Lite to its own full-precision output per method and bit width; with --tokens the
    MusicGen-Lite token models' NLL increase and top-1 agreement, with --qat PTQ against QAT."""
    from ..data import build_corpus, preset as corpus_preset
    from ..metrics.stats import bootstrap_ci
    from ..models.stable_audio import TRANSFORMER_CONFIGS, build_stable_audio
    from ..quant import preset as quant_preset
    from .quant import (SCORES, corpus_embeddings, fidelity_to_full_precision, int8_block_speed, kad_vs_reference,
                        quant_pipeline, quantized_weight_bytes)

    def configs_for(bits_list, methods, skip: tuple[str, ...] | None = None):
        out = {}
        for bits in bits_list:
            w, a = BITS[bits]
            for method in methods:
                base, _, objective = method.partition("+")
                out[f"{method} {bits}"] = quant_preset(base, w, a, rank=args.rank if base in ("svd", "svdquant") else 0,
                                                       objective=objective or "layer_mse", seed=args.seed, **storage,
                                                       **({"skip": skip} if skip else {}))
        return out

    storage = {"scale_format": args.scale_format, "lowrank_bits": args.lowrank_bits}
    records = []
    meta = build_stable_audio("full", device="meta").transformer
    byte_configs = configs_for(args.bits, args.methods)
    for bits in args.bits:
        for method in args.methods:
            rec = quantized_weight_bytes(meta, byte_configs[f"{method} {bits}"])
            records.append(_print({"measure": "weight_bytes", "model": "stable-audio-open:full", "bits": bits,
                                   "method": method, **storage, **rec}, args.json))
    if not args.skip_speed:
        rec = int8_block_speed(TRANSFORMER_CONFIGS["full"], seconds=10.0, rank=args.rank, rounds=args.rounds, threads=args.threads)
        records.append(_print({"measure": "int8_block_speed", "model": "stable-audio-open:full", **rec}, args.json))
    corpus = build_corpus(corpus_preset(args.corpus, sample_rate=22050))
    train = [c.caption for c in corpus.filter(split="train")][: args.calib_prompts]
    test_clips = corpus.filter(split="test").clips[: args.prompts]
    test = [c.caption for c in test_clips]
    if not args.skip_fidelity:
        from ..metrics import get_embedding

        pipe = quant_pipeline(args.model, args.weights, args.device or default_device())
        embedders = {"mel-stats": get_embedding("mel-stats")}
        reference = corpus_embeddings(test_clips, args.seconds, embedders)
        configs = {m: m for m in args.external} | configs_for(args.bits, args.methods)
        rows = list(fidelity_to_full_precision(pipe, configs, train, test, steps=args.steps, seconds=args.seconds,
                                               seed=args.seed, embedders=embedders))
        generated = {"full precision": [r["reference_embeddings"] for r in rows if r["method"] == next(iter(configs))]}
        generated |= {name: [r["embeddings"] for r in rows if r["method"] == name] for name in configs}
        kads = kad_vs_reference(generated, reference, seed=args.seed)
        records.append(_print({"measure": "kad_vs_test", "model": args.model, "method": "full precision",
                               "n": len(test), **{f"kad_{e}": _ci(est) for e, est in kads["full precision"].items()}}, args.json))
        for name in configs:
            mine = [r for r in rows if r["method"] == name]
            summary = {"measure": "fidelity_vs_fp", "model": args.model, "method": name, "n": len(mine),
                       "steps": args.steps, "seconds": args.seconds, "quantize_seconds": mine[0]["quantize_seconds"]}
            for metric in SCORES:
                summary[metric] = _ci(bootstrap_ci([r[metric] for r in mine], seed=args.seed))
            summary |= {f"kad_{e}": _ci(est) for e, est in kads[name].items()}
            records.append(_print(summary, args.json))
    if args.tokens:
        from ..quant import TOKEN_SKIP

        # the audio-domain objectives score decoded audio: a token model has none, so layer_mse only
        methods = [m for m in args.methods if "+" not in m]
        records += _quant_tokens(args, corpus, configs_for(args.token_bits, methods, TOKEN_SKIP))
    if args.qat:
        records += _quant_qat(args, train, test)
    return records


def _quant_tokens(args, corpus, configs) -> list[dict]:
    """MusicGen-Lite A / B quantized per config: NLL increase and top-1 agreement on test tokens."""
    from ..models.codec_lite import load_codec_lite
    from ..models.musicgen_lite import CHECKPOINT_NAMES, load_musicgen_lite
    from ..checkpoint import CHECKPOINTS
    from ..train.musicgen_lite import token_split
    from .quant_tokens import musicgen_lite_batches, summarize_tokens, token_fidelity

    codec = load_codec_lite()
    test = token_split(codec, CHECKPOINTS / "autoencoder_lite", corpus, "test", args.token_clips, args.seed)
    calib = token_split(codec, CHECKPOINTS / "autoencoder_lite", corpus, "train", args.token_calib_clips, args.seed)
    records = []
    for variant in args.token_models:
        model = load_musicgen_lite(CHECKPOINTS / CHECKPOINT_NAMES[variant], codec)
        frames = round(args.token_prompt_seconds * codec.frame_rate) if variant == "b" else 0
        rows, reports = token_fidelity(model, configs, musicgen_lite_batches(calib, model, frames),
                                       musicgen_lite_batches(test, model, frames))
        for s in summarize_tokens(rows, seed=args.seed):
            report = reports[s["method"]]
            records.append(_print({"measure": "token_fidelity", "model": f"musicgen-lite-{variant}", "method": s["method"],
                                   "n": s["n"], "nll_fp": s["nll_fp"], "nll_increase": _ci(s["nll_increase"]),
                                   "wilcoxon_p": s["wilcoxon_p"], "agreement": _ci(s["agreement"]),
                                   "quantized_layers": len(report.quantized), "skipped": report.skipped}, args.json))
    return records


def _quant_qat(args, train: list[str], test: list[str]) -> list[dict]:
    """W4A4 SVDQuant after PTQ and after QAT of its low-rank branches with each objective."""
    from ..data import build_corpus, preset as corpus_preset
    from ..metrics.stats import bootstrap_ci, paired_comparison
    from ..models.stable_audio_lite import load_stable_audio_lite
    from ..quant import preset as quant_preset
    from ..train.qat import QATTrainingConfig, corpus_data
    from .qat import qat_fidelity
    from .quant import SCORES

    pipe = load_stable_audio_lite()
    clips = build_corpus(corpus_preset(args.qat_corpus, sample_rate=22050))
    data = corpus_data(pipe, clips, "train", args.qat_train_clips, seed=args.seed)
    qat = QATTrainingConfig(minutes=None, max_steps=args.qat_steps, batch_size=args.qat_batch, val_batches=0, seed=args.seed)
    rows = list(qat_fidelity(pipe, quant_preset("svdquant", 4, 4, rank=args.rank, seed=args.seed), train, test, data,
                             tuple(args.qat_objectives), qat, steps=args.steps, seconds=args.seconds, seed=args.seed))
    ptq = sorted((r for r in rows if r["method"] == "ptq"), key=lambda r: r["prompt"])
    records = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["prompt"])
        rec = {"measure": "qat_fidelity", "model": "stable-audio-lite", "method": method, "n": len(mine),
               "qat_steps": mine[0].get("qat_steps", 0)}
        for metric in SCORES:
            rec[metric] = _ci(bootstrap_ci([r[metric] for r in mine], seed=args.seed))
            if method != "ptq":
                cmp = paired_comparison([r[metric] for r in mine], [r[metric] for r in ptq], seed=args.seed)
                rec[f"{metric}_minus_ptq"] = _ci(cmp.mean_diff) | {"wilcoxon_p": cmp.wilcoxon_p}
        records.append(_print(rec, args.json))
    return records


def sparse(args) -> list[dict]:
    """WP2: sparse re-decoding and sparse DiT steps on the full-size config (random weights) for
    speed, end-to-end edit vs regeneration, MusicGen edits from a stored prefix, and edit
    fidelity on the trained Stable-Audio-Lite."""
    from ..data import build_corpus, preset as corpus_preset
    from ..metrics.stats import bootstrap_ci
    from ..models import build_musicgen
    from ..models.stable_audio import build_stable_audio
    from ..models.stable_audio_lite import load_stable_audio_lite
    from .sparse import decoder_speed, dit_step_speed, edit_fidelity, end_to_end, prefix_edit_speed, project_speedup

    records = []
    if not args.skip_speed:
        pipe = build_stable_audio(args.preset)
        frames = pipe.transformer.config.sample_size
        for rec in decoder_speed(pipe.vae, frames, args.fractions, rounds=args.rounds, seed=args.seed):
            records.append(_print(rec | {"model": f"stable-audio-open:{args.preset}"}, args.json))
        for rec in dit_step_speed(pipe, frames, args.fractions, margin=args.margin, rounds=args.rounds,
                                  seed=args.seed):
            records.append(_print(rec | {"model": f"stable-audio-open:{args.preset}"}, args.json))
        seconds = frames * pipe.vae.hop_length / pipe.vae.config.sampling_rate
        # sparse steps on the generation's bf16 K/V record, and one dense step then the record corrected by it
        edits = {"record": {"refresh_every": 0},
                 "one dense step, corrected": {"refresh_every": args.e2e_steps, "kv_correction": True}}
        for rec in end_to_end(pipe, seconds=seconds, steps=args.e2e_steps, fraction=0.1, edits=edits,
                              record_dtype=torch.bfloat16, margin=args.margin, seed=args.seed):
            k = 100 if rec["refresh_every"] else 0
            rec["projected_speedup_at_100_steps"] = project_speedup(rec, 100, refresh_every=k)
            records.append(_print(rec | {"model": f"stable-audio-open:{args.preset}"}, args.json))
        del pipe
        model = build_musicgen(MUSICGEN_FOR[args.preset])
        at = [round(args.ar_frames * (1 - f)) for f in args.fractions if round(args.ar_frames * (1 - f)) > 0]
        for rec in prefix_edit_speed(model, frames=args.ar_frames, at=at, rounds=args.rounds, seed=args.seed):
            records.append(_print(rec | {"model": f"musicgen:{MUSICGEN_FOR[args.preset]}"}, args.json))
        del model
    if args.skip_fidelity:
        return records
    corpus = build_corpus(corpus_preset(args.corpus, sample_rate=22050))
    test = [c.caption for c in corpus.filter(split="test")]
    prompts, edits = test[: args.prompts], (test[args.prompts:] + test)[: args.prompts]
    rows, _ = edit_fidelity(load_stable_audio_lite(), prompts, edits, fractions=args.fractions, steps=args.steps,
                            seconds=args.seconds, refresh=args.refresh, corrected=args.corrected, margins=[],
                            margin=args.margin, record_dtype=torch.bfloat16, seed=args.seed)
    for f in args.fractions:
        for variant in dict.fromkeys(r["variant"] for r in rows):
            mine = [r for r in rows if r["fraction"] == f and r["variant"] == variant]
            summary = {"measure": "edit_fidelity", "model": "stable-audio-lite", "fraction": f, "variant": variant,
                       "n": len(mine), "steps": args.steps, "seconds": args.seconds}
            for metric in ("mrstft_to_dense", "complex_mrstft_to_dense", "seam_jump"):
                if metric in mine[0] and variant != "dense":
                    est = bootstrap_ci([r[metric] for r in mine], seed=args.seed)
                    summary[metric] = {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high}
            for check in ("outside_reach_identical", "undo_exact"):
                if check in mine[0]:
                    summary[check] = all(r[check] for r in mine)
            records.append(_print(summary, args.json))
    return records


def _print(record: dict, as_json: bool) -> dict:
    """One non-latency record: JSON, or a compact line."""
    if as_json:
        print(json.dumps(record, default=float), flush=True)
    else:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), flush=True)
    return record


def radial(args) -> list[dict]:
    """WP3: radial attention against dense attention: exactness, one attention layer per track
    length, one full-size DiT block (published config, random weights)."""
    from ..attention.radial import RadialConfig
    from ..models.stable_audio import TRANSFORMER_CONFIGS
    from .radial import attention_layer_rows, block_rows, exactness_rows

    config = RadialConfig(window_s=args.window_s, bars_back=args.bars_back, bpm=args.bpm, beats_per_bar=args.beats_per_bar,
                          band_width_s=args.band_width_s, band_decay=args.band_decay, block_size=args.block_size)
    records = [_print(r, args.json) for r in exactness_rows(config, kernels=tuple(args.kernels), seed=args.seed)]
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    for r in attention_layer_rows(args.minutes, config, tuple(args.kernels), rounds=args.rounds, dtype=dtype,
                                  device=args.device, seed=args.seed):
        records.append(_print(r, args.json))
    if args.block_minutes:
        for r in block_rows(args.block_minutes, config, TRANSFORMER_CONFIGS["full"], kernel=args.kernels[0],
                            rounds=args.rounds, dtype=dtype, device=args.device, seed=args.seed):
            records.append(_print(r, args.json))
    return records


def serve(args) -> list[dict]:
    """WP4: the serving application under an open-loop arrival sweep across tiers (and a replica killed)."""
    from ..serve.app import ServeConfig, parse_replicas
    from .serve import load_test

    config = ServeConfig(model=args.model, replicas=parse_replicas(args.replicas), ledger=args.ledger, audio_dir=None,
                         target_scale=args.target_scale)
    rows = load_test(args.url, rates_per_s=tuple(args.rates), phase_s=args.phase_s, max_requests=args.max_requests,
                     seconds=tuple(args.request_seconds), kill_replica=args.kill_replica, kill_at_s=args.kill_at_s,
                     config=config, seed=args.seed)
    return [_print(r, args.json) for r in rows]


def distributed(args) -> list[dict]:
    """WP4: one patch-parallel DiT step on the torchrun ranks against one process (rank 0 alone)."""
    import torch.distributed as dist

    from .distributed import quality_rows, step_rows

    if "WORLD_SIZE" not in os.environ:
        raise ValueError("the distributed suite runs under torchrun: "
                         "torchrun --nproc-per-node 2 -m accelerando.bench distributed --json")
    dist.init_process_group("gloo" if args.device == "cpu" else "nccl")
    try:
        dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
        rows = step_rows(args.seconds, args.preset, tuple(args.modes), rounds=args.rounds,
                         warmup_steps=args.warmup_steps, dtype=dtype, seed=args.seed) if args.seconds else []
        if args.quality_prompts:
            from ..data import build_corpus, preset as corpus_preset

            corpus = build_corpus(corpus_preset(args.corpus, sample_rate=22050))
            prompts = [c.caption for c in corpus.filter(split="test")][: args.quality_prompts]
            rows += quality_rows(prompts, steps=args.quality_steps, seconds=args.quality_seconds,
                                 warmup_steps=tuple(args.quality_warmup), seed=args.seed)
        return [_print(r, args.json) for r in rows] if dist.get_rank() == 0 else rows
    finally:
        dist.destroy_process_group()


def _emit(record: dict, as_json: bool) -> dict:
    if as_json:
        print(json.dumps(record), flush=True)
    else:
        lat = record["latency_s_min"]
        secs = record.get("audio_seconds")
        print(f"{record['component']:<26} {'' if secs is None else f'{secs:7.2f} s':>9}  "
              f"min {lat:9.4f} s  median {record['latency_s_median']:9.4f} s  "
              f"peak {record['peak_mem_bytes'] / 2**20 if record['peak_mem_bytes'] else float('nan'):8.0f} MiB", flush=True)
    return record


def _common_flags(parser: argparse.ArgumentParser, threads: int, corpus: bool = False) -> None:
    """The flags every suite shares: threads, seed, JSON output (and the prompts' corpus)."""
    if corpus:
        parser.add_argument("--corpus", default="full", help="accelerando.data preset the prompts come from")
    parser.add_argument("--threads", type=int, default=threads, help="torch threads (fixed and recorded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object per record on stdout")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accelerando.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="suite", required=True)
    p = sub.add_parser("baseline", help="Stable Audio Open component costs and MusicGen decoding speed")
    p.add_argument("--preset", choices=sorted(MUSICGEN_FOR), default="tiny", help="model size (full = published configs)")
    p.add_argument("--weights", help="local Stable Audio Open directory (default: random weights)")
    p.add_argument("--seconds", type=float, nargs="+", default=[1.0, 4.0, 10.0], help="audio lengths to measure")
    p.add_argument("--context-frames", type=int, nargs="+", default=[50, 250, 500], help="MusicGen context lengths")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=None, help="stop repeating after this many timed seconds")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    _common_flags(p, threads=1)
    q = sub.add_parser("quant", help="WP1 SVDQuant-Audio: bytes, int8 CPU speed, fidelity to full precision")
    q.add_argument("--methods", nargs="+", default=["rtn", "smoothquant", "svd", "svdquant", "svdquant+stft_complex"],
                   help="rtn, smoothquant, svd, svdquant; '+objective' picks the calibration objective")
    q.add_argument("--bits", nargs="+", choices=sorted(BITS), default=["w4a4", "w4a8", "w8a8"])
    q.add_argument("--external", nargs="*", default=["torchao-w8", "quanto-w8", "quanto-w4"],
                   help="weight-only baselines from torchao / optimum-quanto (fidelity only)")
    q.add_argument("--rank", type=int, default=32, help="low-rank branch rank of svd / svdquant")
    q.add_argument("--scale-format", choices=["fp16", "fp8"], default="fp16",
                   help="storage of the weight group scales (fp8: e4m3 under a power-of-two scale per tensor)")
    q.add_argument("--lowrank-bits", type=int, choices=[16, 8], default=16,
                   help="storage of the low-rank factors (8: int8 with an fp16 scale per rank component)")
    q.add_argument("--prompts", type=int, default=32, help="test-split captions generated per method")
    q.add_argument("--calib-prompts", type=int, default=4, help="train-split captions used for calibration")
    q.add_argument("--steps", type=int, default=25, help="denoising steps of each evaluation clip")
    q.add_argument("--seconds", type=float, default=4.0, help="seconds of audio per evaluation clip")
    q.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the int8 block timing")
    q.add_argument("--skip-speed", action="store_true", help="skip the full-size int8 block timing")
    q.add_argument("--skip-fidelity", action="store_true", help="skip the fidelity sweep")
    q.add_argument("--model", choices=["stable-audio-lite", "stable-audio-open"], default="stable-audio-lite",
                   help="the DiT of the fidelity sweep: the Lite model trained here, or the published one (needs --weights)")
    q.add_argument("--weights", help="local directory of the model's weights (stable-audio-open: a copy of its repository)")
    q.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    q.add_argument("--tokens", action="store_true", help="also the MusicGen-Lite token models: NLL increase, top-1 agreement")
    q.add_argument("--token-models", nargs="+", choices=["a", "b"], default=["a", "b"], help="MusicGen-Lite models quantized")
    q.add_argument("--token-bits", nargs="+", choices=sorted(BITS), default=["w4a4", "w8a8"], help="token-model bit widths")
    q.add_argument("--token-clips", type=int, default=32, help="held-out test clips scored teacher-forced")
    q.add_argument("--token-calib-clips", type=int, default=16, help="training clips of the token calibration")
    q.add_argument("--token-prompt-seconds", type=float, default=3.0, help="model B's audio prompt (each clip's opening)")
    q.add_argument("--qat", action="store_true", help="also W4A4 SVDQuant after PTQ vs after QAT of its low-rank branches")
    q.add_argument("--qat-objectives", nargs="+", default=["latent_mse", "stft_complex"],
                   help="QAT objectives (accelerando.train.qat.OBJECTIVES), each from the same PTQ model")
    q.add_argument("--qat-steps", type=int, default=30, help="optimizer steps per QAT objective")
    q.add_argument("--qat-batch", type=int, default=4, help="training clips per QAT step")
    q.add_argument("--qat-train-clips", type=int, default=800, help="training-split clips QAT draws from")
    q.add_argument("--qat-corpus", default="full", help="corpus preset of the QAT clips (10 s, the DiT's length)")
    _common_flags(q, threads=1, corpus=True)
    s = sub.add_parser("sparse", help="WP2 SIGE-Audio: sparse re-decode, sparse DiT steps, edit fidelity")
    s.add_argument("--preset", choices=["full", "small", "tiny"], default="full",
                   help="Stable Audio Open size of the speed measurements (random weights)")
    s.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.25, 0.5],
                   help="edited fraction of the track")
    s.add_argument("--margin", type=int, default=8, help="latent frames computed fresh each side of a sparse edit")
    s.add_argument("--refresh", type=int, nargs="+", default=[0, 2, 5],
                   help="K/V refresh intervals of the sparse edits (0: the generation's recorded K/V)")
    s.add_argument("--corrected", type=int, nargs="*", default=[5, 25],
                   help="refresh intervals run with the K/V correction (record + last dense pass - its record)")
    s.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the speed comparisons")
    s.add_argument("--e2e-steps", type=int, default=10, help="denoising steps of the measured end-to-end edit")
    s.add_argument("--ar-frames", type=int, default=500, help="MusicGen frames of the token-model edit (50 per s)")
    s.add_argument("--prompts", type=int, default=32, help="test-split captions edited (fidelity, Lite)")
    s.add_argument("--steps", type=int, default=25, help="denoising steps of the Lite generations and edits")
    s.add_argument("--seconds", type=float, default=9.5, help="track length of the Lite fidelity runs")
    s.add_argument("--skip-speed", action="store_true", help="skip the full-size speed measurements")
    s.add_argument("--skip-fidelity", action="store_true", help="skip the Lite edit-fidelity runs")
    _common_flags(s, threads=2, corpus=True)
    r = sub.add_parser("radial", help="WP3 Radial Attention-Audio: exactness, layer and full-size block speed")
    r.add_argument("--minutes", type=float, nargs="+", default=[1.0, 5.0, 10.0], help="track lengths of the layer timing")
    r.add_argument("--block-minutes", type=float, nargs="*", default=[10.0],
                   help="track lengths of the full-size DiT block timing (none: skip it)")
    r.add_argument("--kernels", nargs="+", choices=["blocks", "flex", "triton"], default=["blocks"],
                   help="radial kernels timed against dense SDPA (the first also in the block)")
    r.add_argument("--window-s", type=float, default=2.0, help="local window, seconds each side")
    r.add_argument("--bars-back", type=int, default=4, help="bar-spaced bands each side")
    r.add_argument("--bpm", type=float, default=120.0, help="tempo that sets the bar length")
    r.add_argument("--beats-per-bar", type=int, default=4)
    r.add_argument("--band-width-s", type=float, default=0.25, help="half-width of the first band, seconds")
    r.add_argument("--band-decay", type=float, default=1.0, help="each further band's half-width factor, (0, 1]")
    r.add_argument("--block-size", type=int, default=64, help="queries per block of the blocks kernel")
    r.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 3)")
    r.add_argument("--device", default="cpu", help="cpu or cuda: where the timed tensors live")
    r.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="dtype of the timings (auto: bf16 on a GPU or a CPU with AMX, else fp32)")
    _common_flags(r, threads=1)
    d = sub.add_parser("distributed", help="WP4 patch-parallel DiT steps on the torchrun ranks against one process")
    d.add_argument("--seconds", type=float, nargs="*", default=[10.0, 47.0, 120.0],
                   help="track lengths of the step timing (none: skip it)")
    d.add_argument("--quality-prompts", type=int, default=0,
                   help="test captions generated whole by Stable-Audio-Lite per variant (0: skip)")
    d.add_argument("--quality-steps", type=int, default=25, help="denoising steps of those generations")
    d.add_argument("--quality-seconds", type=float, default=4.0, help="seconds of audio scored per generation")
    d.add_argument("--quality-warmup", type=int, nargs="+", default=[1, 2, 4], help="warm-up steps of the stale variants")
    d.add_argument("--preset", choices=["full", "small", "tiny"], default="full", help="DiT size (random weights)")
    d.add_argument("--modes", nargs="+", choices=["exact", "stale"], default=["exact", "stale"])
    d.add_argument("--warmup-steps", type=int, default=1, help="exact steps before the stale exchange")
    d.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 3)")
    d.add_argument("--device", choices=["cpu"], default="cpu", help="cpu (gloo); NCCL on GPUs is not wired yet")
    d.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto: bf16 on a CPU with AMX, else fp32")
    _common_flags(d, threads=1, corpus=True)
    v = sub.add_parser("serve", help="WP4 load test: the Ray Serve application under an arrival sweep across tiers")
    v.add_argument("--url", default=None, help="a running server (none: start one on a local Ray and stop it after)")
    v.add_argument("--model", choices=["stable-audio-lite", "tiny"], default="stable-audio-lite")
    v.add_argument("--replicas", nargs="+", default=["full=2", "fewer-steps=1"], metavar="VARIANT=N")
    v.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.15, 0.4], help="arrivals per second, one phase each")
    v.add_argument("--phase-s", type=float, default=60.0, help="seconds of arrivals at each rate")
    v.add_argument("--max-requests", type=int, default=60, help="requests in all, whatever the rates")
    v.add_argument("--request-seconds", type=float, nargs="+", default=[10.0, 20.0, 30.0],
                   help="durations of audio the requests ask for, drawn uniformly")
    v.add_argument("--kill-replica", default=None, metavar="VARIANT", help="kill one replica of VARIANT mid-load")
    v.add_argument("--kill-at-s", type=float, default=20.0,
                   help="earliest second of that kill; it waits until every replica of VARIANT runs a section")
    v.add_argument("--target-scale", type=float, default=1.0, help="factor on every tier's latency target")
    v.add_argument("--ledger", default="serve/bench-ledger.sqlite", help="the started server's SQLite ledger")
    _common_flags(v, threads=1)
    args = parser.parse_args(argv)
    if args.suite == "serve":
        from ..serve.app import parse_replicas

        try:
            parse_replicas(args.replicas)
        except ValueError as err:
            parser.error(str(err))
        if min(args.rates) <= 0 or args.phase_s <= 0 or args.max_requests < 1 or min(args.request_seconds) <= 0:
            parser.error("--rates, --phase-s and --request-seconds must be positive, --max-requests >= 1")
    if args.suite == "distributed" and (args.rounds < 3 or args.warmup_steps < 0 or any(s <= 0 for s in args.seconds)
                                        or args.quality_prompts < 0 or args.quality_steps < 1
                                        or min(args.quality_warmup) < 0 or args.quality_seconds <= 0):
        parser.error("--rounds must be >= 3, --warmup-steps and --quality-warmup >= 0, --quality-prompts >= 0, "
                     "--quality-steps >= 1, and every --seconds and --quality-seconds positive")
    if args.suite == "sparse" and not all(0 < f <= 1 for f in args.fractions):
        parser.error(f"--fractions must lie in (0, 1], got {args.fractions}")
    if args.suite == "sparse" and any(k < 0 for k in args.refresh):
        parser.error(f"--refresh intervals must be >= 0, got {args.refresh}")
    if args.suite == "sparse" and any(k < 1 for k in args.corrected):
        parser.error(f"--corrected intervals must be >= 1 (a dense pass to correct from), got {args.corrected}")
    if args.suite == "radial" and (args.rounds < 3 or any(m <= 0 for m in args.minutes + args.block_minutes)):
        parser.error("--rounds must be >= 3 and every track length in --minutes/--block-minutes positive")
    if args.suite == "radial" and "triton" in args.kernels:
        from ..quant.triton_kernels import available

        if not available() or args.device != "cuda":
            parser.error("--kernels triton needs a CUDA GPU and --device cuda (on a CPU it only runs under "
                         "TRITON_INTERPRET=1, for tests): time blocks or flex here")
    if args.suite == "baseline" and any(s <= 0 for s in args.seconds):
        parser.error(f"--seconds must be positive, got {args.seconds}")
    if args.suite == "quant":
        from ..quant import PRESETS
        from ..quant.config import OBJECTIVES

        from ..quant.baselines import EXTERNAL_METHODS

        for m in args.external:
            if m not in EXTERNAL_METHODS:
                parser.error(f"--external: {m!r} is not one of {EXTERNAL_METHODS}")
        from ..train.qat import OBJECTIVES as QAT_OBJECTIVES

        bad = [o for o in args.qat_objectives if o not in QAT_OBJECTIVES]
        if bad:
            parser.error(f"--qat-objectives: {bad} not in {QAT_OBJECTIVES}")
        if min(args.token_clips, args.token_calib_clips, args.qat_steps, args.qat_batch, args.qat_train_clips) < 1:
            parser.error("--token-clips, --token-calib-clips, --qat-steps, --qat-batch and --qat-train-clips must be >= 1")
        if args.qat and args.model != "stable-audio-lite":
            parser.error("--qat trains on latents of Stable-Audio-Lite's autoencoder (22.05 kHz mono corpus clips): "
                         "run it with --model stable-audio-lite")
        if args.model == "stable-audio-open" and not args.skip_fidelity and not args.weights:
            parser.error("--model stable-audio-open needs --weights DIR, a local copy of stabilityai/stable-audio-open-1.0 "
                         "(nothing is downloaded here)")
        for m in args.methods:
            base, _, objective = m.partition("+")
            if base not in PRESETS or (objective and objective not in OBJECTIVES):
                parser.error(f"--methods: {m!r} is not METHOD[+OBJECTIVE] with METHOD in {PRESETS} "
                             f"and OBJECTIVE in {OBJECTIVES}")
    set_threads(args.threads)
    try:
        {"baseline": baseline, "quant": quant, "sparse": sparse, "radial": radial,
         "distributed": distributed, "serve": serve}[args.suite](args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
