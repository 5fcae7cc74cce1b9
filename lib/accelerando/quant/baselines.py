"""Weight-only quantizers from other libraries, applied to the same layers as `quantize_`.

    quantize_external(dit, "quanto-w4")      # optimum-quanto qint4 weights, activations in fp32

They are the baselines a reader would reach for first. On this CPU they run (torchao's int4
weight-only path does not: it needs the `mslk` kernels, absent on CPU), but neither is faster
than fp32 here for DiT shapes (shared NOTES), so they are compared on fidelity and bytes only.
The same skip list as `SVDQuantConfig` keeps the comparison on equal layers.
"""

from __future__ import annotations

import warnings

from torch import nn

from .config import DEFAULT_SKIP

EXTERNAL_METHODS = ("torchao-w8", "quanto-w8", "quanto-w4")


def _targets(model: nn.Module, skip: tuple[str, ...]) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not any(s in n for s in skip)]


def quantize_external(model: nn.Module, method: str, skip: tuple[str, ...] = DEFAULT_SKIP) -> list[str]:
    """Quantize `model`'s eligible linears in place with an external library; returns their names."""
    if method not in EXTERNAL_METHODS:
        raise ValueError(f"unknown external method {method!r}: use one of {EXTERNAL_METHODS}")
    targets = _targets(model, skip)
    if not targets:
        raise ValueError("no linear layer to quantize: every nn.Linear matched a skip pattern")
    chosen = set(targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both libraries warn about optional kernels absent on CPU
        if method == "torchao-w8":
            from torchao.quantization import Int8WeightOnlyConfig, quantize_

            names = {id(m): n for n, m in model.named_modules()}
            quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: names.get(id(m)) in chosen)
        else:
            from optimum.quanto import freeze, qint4, qint8, quantize

            others = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in chosen]
            quantize(model, weights=qint8 if method == "quanto-w8" else qint4, exclude=others or None)
            freeze(model)
    return targets
