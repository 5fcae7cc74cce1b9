"""Speech recognition with LaCT-ASR and its matched baselines: error rates on the test split, under
noise, on another vocabulary and on unseen voices (with few-shot adaptation), the cost against
audio length, and streaming.

    models = {"lact": load_lact_asr("checkpoints/lact_asr"), "window": ..., "full": ...}
    test = speech_features(corpus.filter(split="test"))
    rates = recognition_rates(models, test)            # a row per system and utterance
    corpus_rate(rates[rates.system == "lact"], "word")  # WER with its interval

Adaptation comes in two kinds (`adaptation_rates`). **In context**, without gradients: the
recogniser hears a few utterances of the new voice (their audio only, no transcripts) right before
each test utterance, in one sequence; LaCT's fast weights take a step per chunk of that audio, and
every model's attention sees what its window reaches. **Fine-tuning**: a copy's weights take
`steps` CTC steps on the same utterances with their transcripts. Each reports its time on this
machine (seconds): the forward pass over the adaptation audio, or the fine-tuning steps.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pandas as pd
import torch

from ..metrics.damage import noise
from ..metrics.speech import corpus_rate, error_rates, paired_rate, relative_change
from ..models.lact_asr import (
    CharNGram,
    LaCTASR,
    LogMel,
    StreamingRecognizer,
    beam_decode,
    ctc_batch,
    ctc_loss,
    greedy_decode,
    speech_features,
    utterance_log_probs,
)


def transcripts(model: LaCTASR, data: dict, context: torch.Tensor | None = None, width: int = 1,
                lm: CharNGram | None = None, lm_weight: float = 0.5) -> list[str]:
    """Each utterance of `data` (`speech_features`) decoded: greedy when width is 1 and there is no
    lm, else prefix beam search. `context` [frames, n_mels] is heard before each utterance."""
    log_probs = utterance_log_probs(model, data["features"], context)
    if width == 1 and lm is None:
        return [greedy_decode(lp) for lp in log_probs]
    return [beam_decode(lp, width, lm, lm_weight) for lp in log_probs]


def rates_rows(hypotheses: list[str], data: dict, **columns) -> pd.DataFrame:
    """`metrics.speech.error_rates` of hypotheses against `data`'s transcripts, a row per utterance
    (`utterance`, its index), with the hypothesis, the voice and constant `columns` added."""
    rates = error_rates(data["texts"], hypotheses)
    rates.insert(0, "utterance", range(len(rates)))
    rates["hypothesis"], rates["voice"] = hypotheses, data["voices"]
    return rates.assign(**columns)


def recognition_rates(models: dict[str, LaCTASR], data: dict, width: int = 1, lm: CharNGram | None = None,
                      lm_weight: float = 0.5, **columns) -> pd.DataFrame:
    """A row per system (`models` key) and utterance of `data`, with constant `columns` added."""
    return pd.concat([rates_rows(transcripts(m, data, width=width, lm=lm, lm_weight=lm_weight), data, system=name,
                                 **columns) for name, m in models.items()], ignore_index=True)


def noisy(utterances, snr_db: float, seed: int = 0) -> dict:
    """`speech_features` of utterances with white noise at `snr_db` dB (inf: clean); utterance i
    gets noise seeded by seed + i, the same for every system."""
    if math.isinf(snr_db):
        return speech_features(utterances)
    return speech_features(utterances, lambda wav, sr, i: noise(wav, sr, snr_db, seed=seed + i))


def noise_rates(models: dict[str, LaCTASR], utterances, snrs_db=(math.inf, 20.0, 10.0, 5.0, 0.0),
                seed: int = 0) -> pd.DataFrame:
    """A row per system, SNR (dB) and utterance."""
    utterances = list(utterances)
    return pd.concat([recognition_rates(models, noisy(utterances, snr, seed), snr_db=snr) for snr in snrs_db],
                     ignore_index=True)


def rate_board(rates: pd.DataFrame, by: list[str], n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """WER and CER (corpus rates with intervals over utterances) per group of `by` columns: the
    values (`wer`, `cer`), their text ('value [low, high]', in %) and the utterances counted."""
    rows = []
    for key, g in rates.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        w, c = (corpus_rate(g, unit, n_resamples=n_resamples, seed=seed) for unit in ("word", "char"))
        rows.append({**dict(zip(by, key)), "wer": w.value, "cer": c.value, "WER %": _percent(w),
                     "CER %": _percent(c), "utterances": len(g)})
    return pd.DataFrame(rows)


def paired_board(rates: pd.DataFrame, column: str, a: str, b: str, by: list[str] = (), unit: str = "word",
                 n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Rows of `rates` whose `column` is a against those where it is b, on the same utterances,
    per group of `by`: the difference of corpus rates (points, with its interval), the relative
    change of a against b, and the Wilcoxon p of per-utterance errors."""
    rows = []
    groups = rates.groupby(list(by), sort=False) if by else [((), rates)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        ra = g[g[column] == a].sort_values("utterance")
        rb = g[g[column] == b].sort_values("utterance")
        test = paired_rate(ra, rb, unit, n_resamples=n_resamples, seed=seed)
        d = test.mean_diff
        rows.append({**dict(zip(by, key)), "a": a, "b": b, "difference": d.value,
                     "difference (points)": f"{100 * d.value:+.1f} [{100 * d.ci_low:+.1f}, {100 * d.ci_high:+.1f}]",
                     "relative": relative_change(corpus_rate(ra, unit, n_resamples=1), corpus_rate(rb, unit, n_resamples=1)),
                     "ci_low": d.ci_low, "ci_high": d.ci_high, "wilcoxon_p": test.wilcoxon_p, "utterances": test.n})
    return pd.DataFrame(rows)


def _percent(e) -> str:
    return f"{100 * e.value:.1f} [{100 * e.ci_low:.1f}, {100 * e.ci_high:.1f}]"


def external_transcripts(path: str, utterances) -> tuple[list[str] | None, str]:
    """Transcripts of a pretrained recogniser (Wav2Vec2, Whisper, any transformers
    automatic-speech-recognition checkpoint) stored at the local directory `path`, lower-cased,
    numbers below 1000 spelled out as the corpus speaks them, and cut to the characters LaCT-ASR
    writes; (None, the reason) when `path` is empty or holds no such checkpoint. Nothing is
    downloaded."""
    import re
    from pathlib import Path

    from ..data.speech import number_words

    if not path:
        return None, "no local path given"
    if not (Path(path) / "config.json").is_file():
        return None, f"no checkpoint at {path} (a directory with config.json and weights)"
    from transformers import pipeline

    recognise = pipeline("automatic-speech-recognition", model=path, device="cpu")
    texts = []
    for u in utterances:
        text = recognise({"raw": u.load(), "sampling_rate": u.sample_rate})["text"].lower()
        text = re.sub(r"\d+", lambda m: number_words(int(m[0])) if int(m[0]) < 1000 else m[0], text)
        texts.append(" ".join(re.sub(r"[^a-z' ]", " ", text).split()))
    return texts, f"loaded from {path}"


# ---------------------------------------------------------------------------------------------
# Adaptation
# ---------------------------------------------------------------------------------------------


def finetune(model: LaCTASR, data: dict, steps: int = 30, lr: float = 3e-4, seed: int = 0) -> tuple[LaCTASR, float]:
    """A copy of `model` after `steps` AdamW steps of CTC on all utterances of `data` (one batch,
    each utterance a sequence), and the seconds they took."""
    if steps < 1:
        raise ValueError(f"steps={steps}: fine-tune for at least one step")
    torch.manual_seed(seed)
    tuned = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr, weight_decay=0.0)
    batch = ctc_batch(data, [[i] for i in range(len(data["texts"]))])
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        ctc_loss(tuned, batch).backward()
        torch.nn.utils.clip_grad_norm_(tuned.parameters(), 1.0)
        optimizer.step()
    return tuned.eval(), time.perf_counter() - start


@torch.no_grad()
def context_seconds(model: LaCTASR, context: torch.Tensor, repeats: int = 3) -> float:
    """Fastest of `repeats` forward passes over the adaptation audio's features [frames, n_mels]
    (seconds): the cost of adapting in context."""
    model.eval()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(context[None])
        times.append(time.perf_counter() - start)
    return min(times)


def split_adaptation(items: list, n_adapt: int, seed: int = 0) -> tuple[list, list]:
    """(adaptation, test) utterances: a seeded draw of n_adapt, and the rest."""
    if not 1 <= n_adapt < len(items):
        raise ValueError(f"n_adapt={n_adapt} of {len(items)} utterances: keep at least one to adapt on and one to test")
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order[:n_adapt]], [items[i] for i in order[n_adapt:]]


def adaptation_rates(models: dict[str, LaCTASR], corpus, n_adapt: int = 8, steps: int = 30, lr: float = 3e-4,
                     by_voice: bool = True, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Few-shot adaptation to each voice of `corpus` (or to the whole corpus, `by_voice=False`:
    a new vocabulary): per group, `n_adapt` utterances to adapt on, the rest to test on.

    Returns (rates: a row per group, system, method and test utterance, with method "none", "in
    context" or "fine-tuned"; times: a row per group, system and method with `adapt_seconds`)."""
    groups = sorted({u.voice for u in corpus}) if by_voice else [None]
    rows, times = [], []
    for group in groups:
        items = list(corpus.filter(voice=group)) if group else list(corpus)
        adapt_items, test_items = split_adaptation(items, n_adapt, seed)
        adapt, test = speech_features(adapt_items), speech_features(test_items)
        context = torch.cat(adapt["features"])
        label = group or "all"
        for name, model in models.items():
            tuned, tune_s = finetune(model, adapt, steps, lr, seed)
            for method, m, ctx, seconds in (("none", model, None, 0.0),
                                            ("in context", model, context, context_seconds(model, context)),
                                            ("fine-tuned", tuned, None, tune_s)):
                rows.append(rates_rows(transcripts(m, test, ctx), test, group=label, system=name, method=method))
                times.append({"group": label, "system": name, "method": method, "adapt_seconds": seconds,
                              "adapt_utterances": n_adapt, "adapt_audio_seconds": len(context) / 100.0})
    return pd.concat(rows, ignore_index=True), pd.DataFrame(times)


@torch.no_grad()
def fast_weight_trace(model: LaCTASR, features: torch.Tensor) -> pd.DataFrame:
    """How far each layer's fast weights move from their initial values while the model hears
    `features` [frames, n_mels]: a row per layer and fast-weight update, with the output frame
    reached and ||W - W_init|| / ||W_init|| (over W0, W1, W2 and the heads)."""
    from ..models.lact import ChunkProcessor

    if not model.config.layer["fast_weights"]:
        raise ValueError("this recogniser has no fast weights (a matched baseline): trace a LaCT model")
    model.eval()
    h = model.encode(features[None])
    processor = ChunkProcessor(model.layers)
    chunk = model.config.layer["chunk"]
    rows, initial = [], None
    for start in range(0, h.shape[1], chunk):
        x = h[:, start:start + chunk]
        for i, layer in enumerate(processor.layers):
            x, processor.states[i] = layer(x, processor.states[i])
        if initial is None:
            initial = [layer.initial_fast_weights(1).w for layer in processor.layers]
        for i, state in enumerate(processor.states):
            w = torch.cat([t.flatten() for t in state.fast.w])
            w0 = torch.cat([t.flatten() for t in initial[i]])
            rows.append({"layer": i, "update": state.fast.updates, "frame": start + x.shape[1],
                         "relative_change": float((w - w0).norm() / w0.norm())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Quantization
# ---------------------------------------------------------------------------------------------

# The CTC head and the fast weights' learning-rate projection stay in full precision, as a token
# model's output heads and conditioning projections do (`quant.TOKEN_SKIP`).
ASR_SKIP = ("head", "ttt_lr")


def quantized_variants(model: LaCTASR, configs: dict, calib_features: list[torch.Tensor]) -> tuple[dict, pd.DataFrame]:
    """Copies of `model` quantized in place by `quantize_` with each config ({name: QuantConfig};
    ASR_SKIP added to its skip list), calibrated on the features [frames, n_mels] given. Returns
    ({name: model}, a row per variant: linears quantized, linears a skip pattern kept in full
    precision, the share of parameters left in full precision, the seconds quantization took)."""
    from dataclasses import replace

    from ..quant import quantize_

    variants, rows = {}, []
    calib = [f[None] for f in calib_features]
    for name, config in configs.items():
        config = replace(config, skip=tuple(config.skip) + ASR_SKIP)
        variant = copy.deepcopy(model).eval()
        with torch.no_grad():
            report = quantize_(variant, config, calib=calib)
        variants[name] = variant
        rows.append({"variant": name, "linears quantized": len(report.quantized),
                     "linears skipped": ", ".join(sorted(r["name"] for r in report.layers if r.get("pattern"))),
                     "full-precision share": round(report.parameters["full_precision_fraction"], 3),
                     "quantize_s": round(report.seconds, 2)})
    return variants, pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def _forward(model: LaCTASR, features: torch.Tensor) -> torch.Tensor:
    return model.eval()(features)


def cost_by_length(models: dict[str, LaCTASR], seconds=(10, 30, 60, 120, 300), rounds: int = 3) -> pd.DataFrame:
    """Forward time per system and audio length (seconds of 100 frames/s features, random values:
    cost does not depend on them), interleaved across systems at each length, min and median of
    `rounds`, and the real-time factor. Memory is left out: in one long-lived process the
    allocator reuses memory it already holds, so a resident-set peak says nothing of one call."""
    from .measure import compare

    rows = []
    for s in seconds:
        features = torch.randn(1, int(s * 100), models[next(iter(models))].config.n_mels)
        calls = {name: (lambda m=m: _forward(m, features)) for name, m in models.items()}
        timed = compare(calls, rounds=rounds)
        for name in calls:
            rows.append({"system": name, "audio_seconds": s, **timed[name], "rtf": timed[name]["latency_s_min"] / s})
    return pd.DataFrame(rows)


@torch.no_grad()
def streaming_cost(model: LaCTASR, wav: torch.Tensor, piece_ms: float = 40.0) -> dict:
    """Push 16 kHz audio [samples] through a `StreamingRecognizer` in pieces of `piece_ms`: the
    compute per piece (median, 95th percentile, max; ms), the real-time factor, the algorithmic
    latency (ms) and whether the streamed output frames equal the whole recording's."""
    stream, step = StreamingRecognizer(model), int(LogMel().sample_rate * piece_ms / 1000)
    pieces, times = [], []
    for start in range(0, len(wav), step):
        t0 = time.perf_counter()
        pieces.append(stream.push(wav[start:start + step]))
        times.append(time.perf_counter() - t0)
    streamed = torch.cat(pieces)
    whole = utterance_log_probs(model, [LogMel()(wav)[0]])[0]
    ms = np.asarray(times) * 1000
    return {"piece_ms": piece_ms, "pieces": len(times), "compute_ms_median": float(np.median(ms)),
            "compute_ms_p95": float(np.percentile(ms, 95)), "compute_ms_max": float(ms.max()),
            "rtf": float(ms.sum() / 1000 / (len(wav) / LogMel().sample_rate)),
            "algorithmic_latency_ms": model.algorithmic_latency_ms(),
            "max_difference_from_whole": float((streamed - whole[:len(streamed)]).abs().max())}
