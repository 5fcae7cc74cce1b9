"""WP1 on the token models: what quantization does to MusicGen-Lite's (and MusicGen's) next-token
predictions, teacher-forced on held-out tokens.

    batches = musicgen_lite_batches(test, model_b, prompt_frames=65)     # held-out clips
    calib = musicgen_lite_batches(train, model_b, prompt_frames=65)      # training clips
    rows, reports = token_fidelity(model_b, {"rtn w4a4": preset("rtn", 4, 4, skip=TOKEN_SKIP)},
                                   calib, batches, musicgen_lite_logits)

Per configuration and clip: the clip's mean negative log-likelihood (nats per token, over every
codebook and scored position) under the quantized model and under full precision, their
difference (`nll_increase`, > 0 is worse), and the top-1 agreement: the share of scored positions
where the quantized model's most likely token is full precision's. Both are paired by clip (same
tokens, same positions), so a bootstrap over clips of the per-clip values is a paired interval
(`summarize_tokens`).

Inputs and labels are the model's codebook pattern shifted right by the special token
(`models.musicgen_lite.inputs_and_labels`, as training and `bench.musicgen.token_nll` build them);
every measure pools the scored positions, so it reads either pattern's layout [B, rows, steps]. Model A scores the whole clip; model B the clip after its first `prompt_frames`
frames, which sit in its cross-attention memory as the audio prompt (`train.musicgen_lite.
batch_inputs`, training's own batching). `causal_lm_logits` adapts transformers'
`MusicgenForCausalLM` (codes in, [batch * K, steps] ids) to the same interface.

Which layers: every decoder linear (self- and cross-attention projections, fc1, fc2), quantized
as in the DiT; the output heads, embeddings, norms and the conditioning projections (`text_proj`,
`prompt_proj`: SVDQuant leaves the conditioning embedders alone) are skipped and listed in each
configuration's report. fc2's input is GELU's output, bounded below by -0.17: calibration sees it
and `quantize_` codes it unsigned after a shift (`act_unsigned="auto"`), so 4-bit activation codes
are not spent on the negative half.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..quant import QuantConfig, QuantReport, quantize_

LogitsFn = Callable[[nn.Module, dict], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Batches and forwards of the two model families
# ---------------------------------------------------------------------------------------------


def musicgen_lite_batches(split: dict, model: nn.Module, prompt_frames: int = 0, batch_size: int = 16) -> list[dict]:
    """Teacher-forced batches of a token split (`train.musicgen_lite.token_split`: codes [N, K, T],
    states [N, L, 384], mask [N, L]) as MusicGen-Lite `model` trains on them: dicts with inputs and
    labels [B, K, S] (delay pattern, S = scored frames + K - 1; flattened [B, 1, frames x K]),
    text_states, text_mask and, for model B, prompt_codes [B, K, prompt_frames] with prompt_mask
    (model A ignores `prompt_frames`)."""
    from ..train.musicgen_lite import batch_inputs

    cfg = model.config
    n, frames = split["codes"].shape[0], split["codes"].shape[-1]
    if cfg.variant == "b" and not 0 < prompt_frames < frames:
        raise ValueError(f"model B needs an audio prompt: prompt_frames={prompt_frames} of {frames}-frame clips")
    controls = 0.0 if cfg.control_channels else None  # a controlled model reads its clips' beats and key, none dropped
    return [batch_inputs(split, np.arange(i, min(i + batch_size, n)), cfg.variant, prompt_frames, cfg.codebook_size,
                         pattern=cfg.pattern, control_dropout=controls) for i in range(0, n, batch_size)]


def musicgen_lite_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """MusicGen-Lite's logits [B, rows, S, codebook_size] for a `musicgen_lite_batches` batch."""
    return model(batch["inputs"], batch["text_states"], batch["text_mask"], batch.get("prompt_codes"),
                 batch.get("prompt_mask"), controls=batch.get("controls"))


def code_batches(codes: torch.Tensor, special: int, batch_size: int = 16,
                 encoder_hidden_states: torch.Tensor | None = None) -> list[dict]:
    """Batches of inputs / labels [B, K, T + K - 1] of codes [N, K, T] in MusicGen's delay pattern
    for `causal_lm_logits`, with optional cross-attention states [N, L, hidden] (encoder_attn)."""
    from ..models.musicgen_lite import inputs_and_labels

    out = []
    for i in range(0, codes.shape[0], batch_size):
        inputs, labels = inputs_and_labels(codes[i: i + batch_size], special)
        batch = {"inputs": inputs, "labels": labels}
        if encoder_hidden_states is not None:
            batch["encoder_hidden_states"] = encoder_hidden_states[i: i + batch_size]
        out.append(batch)
    return out


def causal_lm_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """transformers' `MusicgenForCausalLM` logits [B, K, S, vocab] from inputs [B, K, S]: the
    model takes ids [B * K, S] and returns logits [B * K, S, vocab]."""
    b, k, s = batch["inputs"].shape
    out = model(input_ids=batch["inputs"].reshape(b * k, s), encoder_hidden_states=batch.get("encoder_hidden_states"),
                use_cache=False)
    return out.logits.reshape(b, k, s, -1)


# ---------------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def _per_clip(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL [B] in nats per scored token, argmax [B, R, S]) of logits [B, R, S, V]; labels -100 unscored."""
    ce = nn.functional.cross_entropy(logits.permute(0, 3, 1, 2).float(), labels, ignore_index=-100, reduction="none")
    counted = (labels != -100).flatten(1).sum(1).clamp(min=1)
    return ce.flatten(1).sum(1) / counted, logits.argmax(-1)


@torch.no_grad()
def token_fidelity(model: nn.Module, configs: dict[str, QuantConfig], calib_batches: list[dict],
                   test_batches: list[dict], logits_fn: LogitsFn = musicgen_lite_logits,
                   filter_fn: Callable[[nn.Module, str], bool] | None = None,
                   ) -> tuple[list[dict], dict[str, QuantReport]]:
    """Quantize a copy of `model` per config (calibrated by running it, full precision, over
    `calib_batches`), then score `test_batches` teacher-forced against the full-precision model.

    Returns one record per config and clip (method, config, clip, nll_fp, nll_quant, nll_increase,
    agreement, tokens, quantize_seconds, quantized_layers, skipped_layers) and each config's
    QuantReport (which layers were quantized or skipped, and why).
    """
    model.eval()

    def calib(m: nn.Module) -> None:
        for batch in calib_batches:
            logits_fn(m, batch)

    reference = []  # per batch: (NLL [B], argmax [B, K, S], scored [B, K, S] bool)
    for batch in test_batches:
        nll, top = _per_clip(logits_fn(model, batch), batch["labels"])
        reference.append((nll, top, batch["labels"] != -100))
    rows, reports = [], {}
    for method, config in configs.items():
        quantized = copy.deepcopy(model)
        start = time.perf_counter()
        # a config that declares it uses no calibration (PackedWeightOnlyConfig refuses one) is not given it
        report = quantize_(quantized, config, calib=calib if getattr(config, "uses_calibration", True) else None,
                           filter_fn=filter_fn)
        spent = time.perf_counter() - start
        reports[method] = report
        clip = 0
        for batch, (nll_fp, top_fp, scored) in zip(test_batches, reference):
            nll_q, top_q = _per_clip(logits_fn(quantized, batch), batch["labels"])
            same = ((top_q == top_fp) & scored).flatten(1).sum(1) / scored.flatten(1).sum(1).clamp(min=1)
            for i in range(len(nll_q)):
                rows.append({"method": method, "config": config.name, "clip": clip,
                             "nll_fp": float(nll_fp[i]), "nll_quant": float(nll_q[i]),
                             "nll_increase": float(nll_q[i] - nll_fp[i]), "agreement": float(same[i]),
                             "tokens": int(scored[i].sum()), "quantize_seconds": spent,
                             "quantized_layers": len(report.quantized), "skipped_layers": len(report.skipped)})
                clip += 1
    return rows, reports


def summarize_tokens(rows: list[dict], n_resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Per method: mean NLL increase with its paired bootstrap 95 % interval and Wilcoxon p
    (quantized vs full precision on the same clips), and mean top-1 agreement with its interval."""
    from ..metrics.stats import bootstrap_ci, paired_comparison

    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        cmp = paired_comparison([r["nll_quant"] for r in mine], [r["nll_fp"] for r in mine],
                                n_resamples=n_resamples, seed=seed)
        agree = bootstrap_ci([r["agreement"] for r in mine], n_resamples=n_resamples, seed=seed)
        out.append({"method": method, "n": len(mine), "nll_fp": float(np.mean([r["nll_fp"] for r in mine])),
                    "nll_increase": cmp.mean_diff, "wilcoxon_p": cmp.wilcoxon_p, "agreement": agree})
    return out
