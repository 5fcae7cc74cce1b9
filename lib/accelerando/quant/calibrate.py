"""Calibration: what each linear layer's input looks like while the full-precision model runs.

`record_inputs(model, names, run)` hooks the named linears, calls `run(model)` (for a diffusion
model: the pipeline over a few prompts and steps, so every denoising step is seen), and returns
per layer an `InputStats`: the per-channel range over all calls (what smoothing needs), the
minimum (whether the input is bounded below, as after GELU/SiLU), the per-call ranges (how the
activations move across denoising steps: the call index is the step when the model is called
once per step), and a uniform sample of input rows drawn across all calls (what a search scores
candidates on).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn


@dataclass
class InputStats:
    """Calibration statistics of one layer's input (in_features = n)."""

    absmax: torch.Tensor  # [n] max |x_j| over every token of every call
    minimum: float  # min x over everything
    per_call_absmax: list[torch.Tensor] = field(default_factory=list)  # [n] per forward call
    rows: torch.Tensor | None = None  # [<= calib_tokens, n] rows sampled uniformly across calls
    tokens: int = 0  # tokens seen

    def per_call_range(self) -> torch.Tensor:
        """[calls] max |x| of each call: the layer's input range per denoising step."""
        return torch.stack([a.max() for a in self.per_call_absmax]) if self.per_call_absmax else torch.zeros(0)


class _Recorder:
    def __init__(self, n: int, keep: int, generator: torch.Generator):
        self.stats = InputStats(absmax=torch.zeros(n), minimum=float("inf"))
        self.keep, self.generator = keep, generator
        self.keys = torch.zeros(0)

    def __call__(self, module, args, kwargs=None):
        x = args[0].detach().float().reshape(-1, args[0].shape[-1]).cpu()  # [tokens, n]
        s = self.stats
        call_max = x.abs().amax(0)
        s.absmax = torch.maximum(s.absmax, call_max)
        s.minimum = min(s.minimum, float(x.min()))
        s.per_call_absmax.append(call_max)
        s.tokens += x.shape[0]
        # Reservoir by random priority: each row gets a uniform key and the `keep` largest keys
        # survive, which is a uniform sample of all rows seen, whatever the number of calls.
        keys = torch.rand(x.shape[0], generator=self.generator)
        rows = x if s.rows is None else torch.cat([s.rows, x])
        keys = torch.cat([self.keys, keys])
        top = keys.topk(min(self.keep, len(keys))).indices
        s.rows, self.keys = rows[top], keys[top]


@torch.no_grad()
def record_inputs(model: nn.Module, names: Iterable[str], run: Callable[[nn.Module], object] | Iterable,
                  calib_tokens: int = 512, seed: int = 0) -> dict[str, InputStats]:
    """Run the calibration `run` on `model` with hooks on the named submodules; their InputStats.

    `run` is a callable taking the model, or an iterable of inputs (tensors are passed
    positionally, any Mapping, such as a transformers BatchEncoding, as keyword arguments).
    """
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    recorders, handles = {}, []
    for name in names:
        mod = modules[name]
        rec = _Recorder(mod.in_features, calib_tokens, generator)
        recorders[name] = rec
        handles.append(mod.register_forward_pre_hook(rec))
    try:
        if callable(run):
            run(model)
        else:
            for batch in run:
                model(**batch) if isinstance(batch, Mapping) else model(batch)
    finally:
        for h in handles:
            h.remove()
    silent = [n for n, r in recorders.items() if r.stats.tokens == 0]
    if len(silent) == len(recorders) and recorders:
        raise ValueError("the calibration run never called the layers to quantize: check that `calib` runs this model")
    return {n: r.stats for n, r in recorders.items() if r.stats.tokens}


def outlier_table(model: nn.Module, stats: dict[str, InputStats]) -> "pd.DataFrame":
    """One row per recorded linear: how concentrated its input and weight ranges are.

    act_ratio = max_j max|X_j| / median_j max|X_j| over input channels j (a few channels far above
    the rest are what per-group activation codes cannot hold); weight_ratio the same over the
    weight's input columns; step_spread = largest / smallest per-call input range (how much the
    range moves across denoising steps when the model is called once per step).
    """
    import pandas as pd

    modules = dict(model.named_modules())
    rows = []
    for name, s in stats.items():
        w = modules[name].weight.detach().float().abs().amax(0).cpu()
        per_call = s.per_call_range()
        rows.append({
            "layer": name,
            "act_absmax": float(s.absmax.max()),
            "act_ratio": float(s.absmax.max() / s.absmax.median().clamp_min(1e-12)),
            "weight_ratio": float(w.max() / w.median().clamp_min(1e-12)),
            "act_min": s.minimum,
            "step_spread": float(per_call.max() / per_call.min().clamp_min(1e-12)) if len(per_call) else None,
        })
    return pd.DataFrame(rows)
