"""`quantize_(model, config, filter_fn=None, calib=None)`: patch a model's layers in place, one verb for every method.

    from accelerando.quant import quantize_, SVDQuantConfig
    report = quantize_(pipe.transformer, SVDQuantConfig(weight_bits=4, act_bits=4, rank=32),
                       calib=lambda dit: pipe(prompts, num_inference_steps=8))
    report.table()          # one row per linear or convolution: quantized or skipped (and why), alpha, errors
    report.parameters       # parameters quantized / left in full precision (norms, embeddings, convs, skips)

`quantize_` looks the config's type up in a registry (`register_quantize_module_handler`, torchao's
pattern): a new method adds a config class and a handler, never an edit here. The config is then
`model.quantization_config`, and every quantized layer carries it too (`quantization_config_of`),
so an inner module can be saved on its own.

SVDQuant's steps: pick the target linears (every nn.Linear none of whose name components matches a
`config.skip` glob and that passes `filter_fn`); if the config smooths, searches clipping or allocates ranks, record their
inputs while `calib` runs the full-precision model; then, layer by layer, choose the smoothing and
the weight clipping (`clip_grid`) by the objective, refit the low-rank branch, quantize the
residual and swap an `SVDQuantLinear` in. With `rank_allocation="knapsack"` each layer is also
built at every rank of `rank_grid`, and the low-rank parameters of the uniform rank are then
shared out across layers by their output errors (`allocate_ranks`). Layers that cannot be
quantized (in_features not a multiple of the group) are skipped and reported, never altered.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .calibrate import InputStats, record_inputs
from .config import AUDIO_OBJECTIVES, QuantConfig, RTNConfig, SmoothQuantConfig, SVDQuantConfig, skip_pattern
from .linear import SILU_FLOOR, SVDQuantLinear, smoothing_factors
from .objectives import stft_distance


@dataclass
class QuantReport:
    """Per-layer outcome of `quantize_`; `table()` gives a DataFrame.

    Each row: name, status ("quantized" or "skipped"), reason, pattern (the skip glob that matched,
    if one did), shape, parameters (weight + bias elements), and the method's own columns.
    `total_parameters` counts every parameter of the model when `quantize_` began.
    """

    config: QuantConfig
    layers: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    total_parameters: int = 0

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.layers)

    @property
    def quantized(self) -> list[str]:
        return [r["name"] for r in self.layers if r["status"] == "quantized"]

    @property
    def ranks(self) -> dict[str, int]:
        """{layer name: rank of its low-rank branch} of the quantized layers."""
        return {r["name"]: r["rank"] for r in self.layers if r["status"] == "quantized"}

    @property
    def skipped(self) -> dict[str, str]:
        return {r["name"]: r["reason"] for r in self.layers if r["status"] == "skipped"}

    @property
    def parameters(self) -> dict[str, float]:
        """{"quantized", "full_precision": parameter counts, "full_precision_fraction"}: everything not in
        a quantized layer (skipped linears, convolutions, norms, embeddings) stays in full precision."""
        quantized = sum(r.get("parameters", 0) for r in self.layers if r["status"] == "quantized")
        full = self.total_parameters - quantized
        return {"quantized": quantized, "full_precision": full,
                "full_precision_fraction": full / self.total_parameters if self.total_parameters else 0.0}


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def default_filter(module: nn.Module, name: str, config: QuantConfig) -> str | None:
    """None if `module` is to be quantized, else the reason it is skipped."""
    if not isinstance(module, nn.Linear):
        return f"a {type(module).__name__}, not an nn.Linear: only linear layers are quantized"
    hit = skip_pattern(name, config.skip)
    if hit:
        return f"name matches skip pattern {hit!r}"
    group_size = config.input_group_size
    if group_size and module.in_features % group_size:
        return (f"in_features {module.in_features} not a multiple of {group_size} (the inputs that share a scale, "
                "or the kernel's input block: config.input_group_size)")
    return None


def select_layers(model: nn.Module, config: QuantConfig, filter_fn: Callable[[nn.Module, str], bool] | None,
                  report: QuantReport) -> list[str]:
    """The qualified names of the linears to quantize; every other linear and every convolution gets a
    "skipped" row in `report` with its reason (and the skip pattern that matched, if one did)."""
    targets = []
    for name, module in model.named_modules():
        if isinstance(module, SVDQuantLinear):
            raise ValueError(f"{name} is already quantized; quantize a full-precision copy of the model")
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        reason = default_filter(module, name, config)
        if reason is None and filter_fn is not None and not filter_fn(module, name):
            reason = "excluded by filter_fn"
        if reason:
            pattern = skip_pattern(name, config.skip) if isinstance(module, nn.Linear) else None
            report.layers.append({"name": name, "status": "skipped", "reason": reason, "pattern": pattern,
                                  "shape": tuple(module.weight.shape), "parameters": _parameters(module)})
        else:
            targets.append(name)
    if not targets:
        raise ValueError("no linear layer to quantize: every nn.Linear was skipped (see the skip patterns, matched "
                         "against path components, and group_size): " + _skip_summary(report))
    return targets


def _skip_summary(report: QuantReport) -> str:
    """E.g. "'embed*' skipped 12 layers, 'norm*' 3"."""
    counts: dict[str, int] = {}
    for r in report.layers:
        if r.get("pattern"):
            counts[r["pattern"]] = counts.get(r["pattern"], 0) + 1
    return ", ".join(f"{p!r} skipped {n}" for p, n in counts.items()) or "no skip pattern matched"


def _squared_relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref||^2 / ||ref||^2 (0 is exact): the squared relative error."""
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
                    audio_score: Callable[[SVDQuantLinear], float] | None = None
                    ) -> tuple[SVDQuantLinear, dict, dict[int, SVDQuantLinear] | None]:
    """Choose the smoothing and weight clipping of one layer, then build it with the full low-rank refit.

    Candidates are ranked by the layer's output error on the calibration rows (SVDQuant's
    objective). With `audio_score` (an audio-domain objective: it installs a candidate in the
    model, renders audio and returns its distance to the full-precision audio), the best
    `config.audio_candidates` by layer error are re-ranked by what they do to the audio.
    Under `rank_allocation="knapsack"` the chosen candidate is also refit at every rank of
    `config.rank_grid` the layer can hold (row "error_by_rank": {rank: layer error}) and the third
    value holds those layers by rank; otherwise it is None. The smoothing and clipping are chosen
    at `config.rank` either way ("layer_rank_of_choice" and "audio_error" describe that choice).
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
        return None if x is None else _squared_relative_error(layer(x), ref)

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
        **_built(layer),  # rank: config.rank, or less where the layer is narrower
        "error_rtn": score(build((None, 1.0), 0, 0)),
        "error": score(layer),
        "layer_rank_of_choice": [c for c, _ in ranked].index(best),
        "audio_error": audio_error,
        "fp16_bytes": 2 * w.numel() + (0 if linear.bias is None else 2 * linear.bias.numel()),
    }
    if config.rank_allocation == "uniform":
        return layer, row, None
    by_rank = {layer.rank: layer}
    for r in sorted({min(r, min(w.shape)) for r in config.rank_grid} - {layer.rank}):
        by_rank[r] = build(best, config.refit_iters, r)
    row["error_by_rank"] = {r: row["error"] if r == layer.rank else score(by_rank[r]) for r in sorted(by_rank)}
    return layer, row, by_rank


def _built(layer: SVDQuantLinear) -> dict:
    """The report fields that depend on the layer as built (its rank, refit, storage)."""
    return {"rank": layer.rank, "refit_errors": [round(e, 6) for e in layer.refit_errors],
            "weight_bytes": layer.weight_bytes()}


def allocate_ranks(errors: list[dict[int, float]], sizes: list[int], budget: float,
                   resolution: int = 200_000) -> list[int]:
    """A rank per layer that minimises the summed error within `budget` parameters: a
    multiple-choice knapsack, solved by dynamic programming over the parameters spent (exactly
    while budget / (gcd of the costs) <= `resolution`).

    errors  per layer, {rank: error at that rank} (e.g. relative output error on calibration rows).
    sizes   per layer, the parameters one rank component costs (in_features + out_features).
    budget  total parameters, sum of rank x size over layers, the allocation may spend.
    resolution  most budget steps tracked; past it costs are rounded up to a coarser step (the
                budget still holds, the optimum may be missed by that rounding).
    Among allocations of equal error the one spending least is returned.
    """
    if len(errors) != len(sizes):
        raise ValueError(f"{len(errors)} error curves for {len(sizes)} layer sizes: one of each per layer")
    curves = [sorted(curve.items()) for curve in errors]
    costs = [[r * n for r, _ in curve] for curve, n in zip(curves, sizes)]
    lowest = sum(c[0] for c in costs)
    if lowest > budget:
        raise ValueError(f"the lowest ranks already spend {lowest} parameters, over the budget of {budget}: "
                         "put 0 in the rank grid or raise the budget")
    unit = math.gcd(*(c for layer in costs for c in layer if c)) or 1
    unit = max(unit, math.ceil(budget / resolution))
    steps = int(budget // unit)
    units = [[math.ceil(c / unit) for c in layer] for layer in costs]
    if sum(u[0] for u in units) > steps:
        raise ValueError(f"at a resolution of {resolution} budget steps the lowest ranks' costs, rounded up, exceed "
                         f"the budget of {budget}: raise resolution, or put 0 in the rank grid")
    spent_error = np.full(steps + 1, np.inf)  # least summed error spending exactly b steps so far
    spent_error[0] = 0.0
    choice = np.zeros((len(curves), steps + 1), dtype=np.int16)
    for i, (curve, cost) in enumerate(zip(curves, units)):
        after = np.full(steps + 1, np.inf)
        for j, ((_, e), c) in enumerate(zip(curve, cost)):
            if c > steps:
                continue
            candidate = np.full(steps + 1, np.inf)
            candidate[c:] = spent_error[: steps + 1 - c] + e
            better = candidate < after  # strict: equal errors keep the cheaper rank
            after[better], choice[i, better] = candidate[better], j
        spent_error = after
    b = int(np.argmin(spent_error))  # the first minimum: the least spent
    ranks = []
    for i in reversed(range(len(curves))):
        j = int(choice[i, b])
        ranks.append(curves[i][j][0])
        b -= units[i][j]
    return ranks[::-1]


def _allocate(rows: list[dict], variants: list[dict[int, SVDQuantLinear]],
              layers: list[SVDQuantLinear]) -> list[SVDQuantLinear]:
    """Ranks for the quantized `layers` (built at the uniform rank; `variants` holds each one
    built at every grid rank, `rows` their "error_by_rank") within the parameters the uniform
    ranks spend; the uniform layers stay unless the summed layer error falls or stays equal for
    fewer parameters. Updates the rows to the layers chosen."""
    errors = [r["error_by_rank"] for r in rows]
    sizes = [layer.in_features + layer.out_features for layer in layers]
    uniform = [layer.rank for layer in layers]
    try:
        ranks = allocate_ranks(errors, sizes, sum(r * n for r, n in zip(uniform, sizes)))
    except ValueError:  # a budget too fine for the resolution: the uniform ranks stand
        ranks = uniform
    if sum(e[r] for e, r in zip(errors, ranks)) > sum(e[r] for e, r in zip(errors, uniform)):
        ranks = uniform  # only where coarse rounding put the uniform ranks out of the search's reach
    chosen = []
    for row, by_rank, rank in zip(rows, variants, ranks):
        row.update(_built(by_rank[rank]), error=row["error_by_rank"][rank])
        chosen.append(by_rank[rank])
    return chosen


def _cpu_copy(linear: nn.Linear) -> nn.Linear:
    copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    copy.load_state_dict({k: v.detach().cpu().float() for k, v in linear.state_dict().items()})
    return copy


_HANDLERS: dict[type, Callable] = {}


def register_quantize_module_handler(config_type: type):
    """Decorator mapping a config class to the function that applies it (torchao's pattern):
    a new technique adds a config and a handler, never an edit to `quantize_`.
    The handler is `handler(model, config, calib, filter_fn, audio_fn) -> QuantReport`."""

    def wrap(fn):
        _HANDLERS[config_type] = fn
        return fn

    return wrap


def quantize_(model: nn.Module, config: QuantConfig, filter_fn: Callable[[nn.Module, str], bool] | None = None,
              calib: Callable | Iterable | None = None,
              audio_fn: Callable[[nn.Module], torch.Tensor] | None = None) -> QuantReport:
    """Replace `model`'s eligible nn.Linear layers by quantized ones, in place; returns the report.

    config      any registered config: `SVDQuantConfig`, `RTNConfig`, `SmoothQuantConfig`, `WeightOnlyConfig`.
    filter_fn   `filter_fn(module, qualified_name) -> bool`, a further restriction of the targets.
    calib       a callable `calib(model)` that runs the full-precision model on calibration data,
                or an iterable of inputs (tensors passed positionally, any Mapping, such as a
                tokenizer's BatchEncoding, as keyword arguments). Run only when the config uses
                statistics (`config.uses_calibration`); needed when it smooths, searches clipping
                or allocates ranks (`config.needs_calibration`).
    audio_fn    for the audio-domain objectives: `audio_fn(model) -> (waveforms [batch, channels,
                samples], sample rate)`, the same prompts from the same noise on every call (see
                `accelerando.quant.objectives.pipeline_calibration`).
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise TypeError(f"no quantization handler for {type(config).__name__}; known: {[t.__name__ for t in _HANDLERS]}")
    report = handler(model, config, calib, filter_fn, audio_fn)
    if isinstance(config, QuantConfig):
        model.quantization_config = config.result_config  # read by save_quantized; quantized layers carry it too
    return report


def quantization_config_of(module: nn.Module) -> QuantConfig | None:
    """The config `quantize_` applied to `module` or to any model containing it: the module's own
    `quantization_config`, else the one its quantized layers carry (None if neither)."""
    own = getattr(module, "quantization_config", None)
    if isinstance(own, QuantConfig):
        return own
    return next((m.quantization_config for m in module.modules()
                 if isinstance(getattr(m, "quantization_config", None), QuantConfig)), None)


@register_quantize_module_handler(SVDQuantConfig)
@register_quantize_module_handler(RTNConfig)
@register_quantize_module_handler(SmoothQuantConfig)
def _svdquant_transform(model: nn.Module, config: SVDQuantConfig, calib, filter_fn, audio_fn) -> QuantReport:
    start = time.perf_counter()
    report = QuantReport(config, total_parameters=sum(p.numel() for p in model.parameters()))
    targets = select_layers(model, config, filter_fn, report)
    if config.needs_calibration and calib is None:
        asking = [(f"smoothing={config.smoothing!r}", "smoothing='off'")] if config.smoothing != "off" else []
        asking += [(f"clip_grid={config.clip_grid}", "clip_grid=(1.0,)")] if len(config.clip_grid) > 1 else []
        asking += [("rank_allocation='knapsack'", "rank_allocation='uniform'")] if config.rank_allocation == "knapsack" else []
        needs = "needs" if len(asking) == 1 else "need"
        raise ValueError(f"{' and '.join(w for w, _ in asking)} {needs} activation statistics: pass calib= (a callable "
                         f"running the model on calibration data), or use {' and '.join(u for _, u in asking)}")
    audio_domain = config.objective in AUDIO_OBJECTIVES
    if audio_domain and (audio_fn is None or calib is None):
        raise ValueError(f"objective={config.objective!r} scores decoded audio: pass audio_fn= (model -> "
                         "waveforms, same prompts and noise each call) and calib=, or use objective='layer_mse'")
    use_calib = calib is not None and config.uses_calibration
    stats = record_inputs(model, targets, calib, config.calib_tokens, config.seed) if use_calib else {}
    reference_audio, sr = audio_fn(model) if audio_domain else (None, None)
    modules = dict(model.named_modules())
    placed = []  # (parent, child name, device, report row, layers by rank, layer) of each quantized layer
    for name in targets:
        linear = modules[name]
        if config.needs_calibration and name not in stats:
            report.layers.append({"name": name, "status": "skipped", "shape": tuple(linear.weight.shape),
                                  "reason": "never called by the calibration run, so it has no statistics",
                                  "pattern": None, "parameters": _parameters(linear)})
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

        layer, row, variants = _quantize_layer(linear, stats.get(name), config, audio_score if audio_domain else None)
        layer.backend = config.backend
        layer.quantization_config = config
        setattr(parent, child, layer.to(linear.weight.device))
        report.layers.append({"name": name, "status": "quantized", "reason": "", "pattern": None,
                              "shape": tuple(linear.weight.shape), "parameters": _parameters(linear), **row})
        placed.append((parent, child, linear.weight.device, report.layers[-1], variants, layer))
    if config.rank_allocation == "knapsack" and placed:
        parents, children, devices, rows, variants, layers = zip(*placed)
        for parent, child, device, layer in zip(parents, children, devices, _allocate(rows, variants, layers)):
            layer.backend = config.backend
            layer.quantization_config = config
            setattr(parent, child, layer.to(device))
    report.seconds = time.perf_counter() - start
    return report
