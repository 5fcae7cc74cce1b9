"""`quantize_(model, SVDQuantConfig(...), calib=...)`: patch a model's linear layers in place.

    from accelerando.quant import quantize_, SVDQuantConfig
    report = quantize_(pipe.transformer, SVDQuantConfig(weight_bits=4, act_bits=4, rank=32),
                       calib=lambda dit: pipe(prompts, num_inference_steps=8))
    report.table()          # one row per linear: quantized or skipped (and why), alpha, errors

Steps: pick the target linears (every nn.Linear whose name matches no `config.skip` substring and
passes `filter_fn`); if the config smooths or searches clipping, record their inputs while `calib`
runs the full-precision model; then, layer by layer, choose the smoothing and the weight clipping
(`clip_grid`) by the objective, refit the low-rank branch, quantize the residual and swap an
`SVDQuantLinear` in. Layers that cannot be quantized (in_features not a multiple of the group) are
skipped and reported, never altered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pandas as pd
import torch
from torch import nn

from .calibrate import InputStats, record_inputs
from .config import AUDIO_OBJECTIVES, SVDQuantConfig
from .linear import SILU_FLOOR, SVDQuantLinear, smoothing_factors
from .objectives import stft_distance


@dataclass
class QuantReport:
    """Per-layer outcome of `quantize_`; `table()` gives a DataFrame."""

    config: SVDQuantConfig
    layers: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.layers)

    @property
    def quantized(self) -> list[str]:
        return [r["name"] for r in self.layers if r["status"] == "quantized"]

    @property
    def skipped(self) -> dict[str, str]:
        return {r["name"]: r["reason"] for r in self.layers if r["status"] == "skipped"}


def default_filter(module: nn.Module, name: str, config: SVDQuantConfig) -> str | None:
    """None if `module` is to be quantized, else the reason it is skipped."""
    if not isinstance(module, nn.Linear):
        return "not an nn.Linear"
    hit = next((s for s in config.skip if s in name), None)
    if hit:
        return f"name matches skip pattern {hit!r}"
    if module.in_features % config.group_size:
        return f"in_features {module.in_features} not a multiple of group_size {config.group_size}"
    return None


def _relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref||^2 / ||ref||^2 (0 is exact)."""
    return float(((y - ref) ** 2).sum() / (ref**2).sum().clamp_min(1e-30))


def _smoothing_pairs(config: SVDQuantConfig) -> list[tuple[float, float] | None]:
    """(alpha, beta) pairs to try; None means no smoothing."""
    if config.smoothing == "off":
        return [None]
    if config.smoothing != "search":
        a = float(config.smoothing)
        return [(a, 1.0 - a)]
    pairs = [(a, round(1.0 - a, 6)) for a in config.alpha_grid] + [(a, 0.0) for a in config.alpha_grid if a > 0]
    return [None] + list(dict.fromkeys(pairs))


def search_candidates(config: SVDQuantConfig) -> list[tuple[tuple[float, float] | None, float]]:
    """(smoothing pair, weight clip) candidates: every pair with every clip of `clip_grid`."""
    return [(pair, clip) for pair in _smoothing_pairs(config) for clip in config.clip_grid]


def _quantize_layer(linear: nn.Linear, stats: InputStats | None, config: SVDQuantConfig,
                    audio_score: Callable[[SVDQuantLinear], float] | None = None) -> tuple[SVDQuantLinear, dict]:
    """Choose the smoothing and weight clipping of one layer, then build it with the full low-rank refit.

    Candidates are ranked by the layer's output error on the calibration rows (SVDQuant's
    objective). With `audio_score` (an audio-domain objective: it installs a candidate in the
    model, renders audio and returns its distance to the full-precision audio), the best
    `config.audio_candidates` by layer error are re-ranked by what they do to the audio.
    """
    w = linear.weight.detach().float().cpu()
    signed, shift = True, 0.0
    if stats is not None and config.act_bits is not None and config.act_unsigned == "auto" and stats.minimum >= SILU_FLOOR:
        signed, shift = False, max(0.0, -stats.minimum)
    x = stats.rows if stats is not None else None
    ref = None
    if x is not None:
        ref = x @ w.t() + (0.0 if linear.bias is None else linear.bias.detach().float().cpu())
    cpu_linear = linear if linear.weight.device.type == "cpu" else _cpu_copy(linear)

    def build(candidate, iters, rank):
        pair, clip = candidate
        lam = None if pair is None else smoothing_factors(stats.absmax, w, *pair)
        return SVDQuantLinear.from_linear(cpu_linear, config.weight_bits, config.act_bits, config.group_size, rank,
                                          smooth=lam, act_shift=shift, act_signed=signed, refit_iters=iters,
                                          seed=config.seed, backend="reference",  # searches score the reference
                                          weight_clip=clip, scale_format=config.scale_format,
                                          lowrank_bits=config.lowrank_bits)

    def score(layer):
        return None if x is None else _relative_error(layer(x), ref)

    candidates = search_candidates(config)
    if len(candidates) > 1 and x is None:
        raise ValueError("a smoothing or clipping search needs calibration inputs: pass calib=")
    ranked = [(candidates[0], None)]
    if len(candidates) > 1:  # one refit iteration per candidate keeps the search cheap
        ranked = sorted(((pair, score(build(pair, 1, config.rank))) for pair in candidates), key=lambda t: t[1])
    best, audio_error = ranked[0][0], None
    if audio_score is not None and len(ranked) > 1 and config.audio_candidates > 1:  # else nothing to choose
        tried = [(c, audio_score(build(c, 1, config.rank))) for c, _ in ranked[: config.audio_candidates]]
        best, audio_error = min(tried, key=lambda t: t[1])
    layer = build(best, config.refit_iters, config.rank)
    best_pair, best_clip = best
    row = {
        "alpha": None if best_pair is None else best_pair[0],
        "beta": None if best_pair is None else best_pair[1],
        "weight_clip": best_clip,
        "act_signed": signed,
        "act_shift": shift,
        "rank": layer.rank,  # config.rank, or less where the layer is narrower
        "refit_errors": [round(e, 6) for e in layer.refit_errors],
        "error_rtn": score(build((None, 1.0), 0, 0)),
        "error": score(layer),
        "layer_rank_of_choice": [c for c, _ in ranked].index(best),
        "audio_error": audio_error,
        "weight_bytes": layer.weight_bytes(),
        "fp16_bytes": 2 * w.numel() + (0 if linear.bias is None else 2 * linear.bias.numel()),
    }
    return layer, row


def _cpu_copy(linear: nn.Linear) -> nn.Linear:
    copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    copy.load_state_dict({k: v.detach().cpu().float() for k, v in linear.state_dict().items()})
    return copy


_HANDLERS: dict[type, Callable] = {}


def register_quantize_handler(config_type: type):
    """Decorator mapping a config class to the function that applies it (torchao's pattern):
    a new technique adds a config and a handler, never an edit to `quantize_`."""

    def wrap(fn):
        _HANDLERS[config_type] = fn
        return fn

    return wrap


def quantize_(model: nn.Module, config: SVDQuantConfig, calib: Callable | Iterable | None = None,
              filter_fn: Callable[[nn.Module, str], bool] | None = None,
              audio_fn: Callable[[nn.Module], torch.Tensor] | None = None) -> QuantReport:
    """Replace `model`'s eligible nn.Linear layers by quantized ones, in place; returns the report.

    calib       a callable `calib(model)` that runs the full-precision model on calibration data
                (or an iterable of inputs); needed when the config smooths (`smoothing != 'off'`).
    filter_fn   `filter_fn(module, qualified_name) -> bool`, a further restriction of the targets.
    audio_fn    for the audio-domain objectives: `audio_fn(model) -> (waveforms [batch, channels,
                samples], sample rate)`, the same prompts from the same noise on every call (see
                `accelerando.quant.objectives.pipeline_calibration`).
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise TypeError(f"no quantization handler for {type(config).__name__}; known: {[t.__name__ for t in _HANDLERS]}")
    return handler(model, config, calib, filter_fn, audio_fn)


@register_quantize_handler(SVDQuantConfig)
def _svdquant_transform(model: nn.Module, config: SVDQuantConfig, calib, filter_fn, audio_fn) -> QuantReport:
    start = time.perf_counter()
    report = QuantReport(config)
    targets = []
    for name, module in model.named_modules():
        if isinstance(module, SVDQuantLinear):
            raise ValueError(f"{name} is already quantized; quantize a full-precision copy of the model")
        if not isinstance(module, nn.Linear):
            continue
        reason = default_filter(module, name, config)
        if reason is None and filter_fn is not None and not filter_fn(module, name):
            reason = "excluded by filter_fn"
        if reason:
            report.layers.append({"name": name, "status": "skipped", "reason": reason,
                                  "shape": tuple(module.weight.shape)})
        else:
            targets.append(name)
    if not targets:
        raise ValueError("no linear layer to quantize: every nn.Linear was skipped (see the skip patterns and group_size)")
    if config.needs_calibration and calib is None:
        asking = [(f"smoothing={config.smoothing!r}", "smoothing='off'")] if config.smoothing != "off" else []
        asking += [(f"clip_grid={config.clip_grid}", "clip_grid=(1.0,)")] if len(config.clip_grid) > 1 else []
        needs = "needs" if len(asking) == 1 else "need"
        raise ValueError(f"{' and '.join(w for w, _ in asking)} {needs} activation statistics: pass calib= (a callable "
                         f"running the model on calibration data), or use {' and '.join(u for _, u in asking)}")
    audio_domain = config.objective in AUDIO_OBJECTIVES
    if audio_domain and (audio_fn is None or calib is None):
        raise ValueError(f"objective={config.objective!r} scores decoded audio: pass audio_fn= (model -> "
                         "waveforms, same prompts and noise each call) and calib=, or use objective='layer_mse'")
    stats = record_inputs(model, targets, calib, config.calib_tokens, config.seed) if calib is not None else {}
    reference_audio, sr = audio_fn(model) if audio_domain else (None, None)
    modules = dict(model.named_modules())
    for name in targets:
        linear = modules[name]
        if config.needs_calibration and name not in stats:
            report.layers.append({"name": name, "status": "skipped", "shape": tuple(linear.weight.shape),
                                  "reason": "never called by the calibration run, so it has no statistics"})
            continue
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model

        def audio_score(candidate: SVDQuantLinear) -> float:
            # Layers before this one are already quantized, later ones not: the candidate is
            # judged by the audio of the model as it will be, greedily in execution order.
            setattr(parent, child, candidate.to(linear.weight.device))
            try:
                return stft_distance(reference_audio, audio_fn(model)[0], sr, config.objective)
            finally:
                setattr(parent, child, linear)

        layer, row = _quantize_layer(linear, stats.get(name), config, audio_score if audio_domain else None)
        layer.backend = config.backend
        setattr(parent, child, layer.to(linear.weight.device))
        report.layers.append({"name": name, "status": "quantized", "reason": "", "shape": tuple(linear.weight.shape), **row})
    report.seconds = time.perf_counter() - start
    model.svdquant_config = config  # read by save_quantized
    return report
