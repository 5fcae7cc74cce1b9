"""Weight-only quantizers from other libraries, applied to the same layers as `SVDQuantConfig`.

    quantize_(dit, WeightOnlyConfig.from_method("quanto-w4"))   # optimum-quanto qint4 weights, fp32 activations

They are the baselines a reader would reach for first. On this CPU they run (torchao's int4
weight-only path does not: it needs the `mslk` kernels, absent on CPU), but neither is faster
than fp32 here for DiT shapes, so they are compared on fidelity and bytes only. The same skip
list as `SVDQuantConfig` keeps the comparison on equal layers. They need no calibration.
"""

from __future__ import annotations

import time
import warnings

from torch import nn

from .api import QuantReport, _parameters, register_quantize_module_handler, select_layers
from .config import EXTERNAL_METHODS, WeightOnlyConfig

__all__ = ["EXTERNAL_METHODS", "WeightOnlyConfig"]


@register_quantize_module_handler(WeightOnlyConfig)
def _weight_only_transform(model: nn.Module, config: WeightOnlyConfig, calib, filter_fn, audio_fn) -> QuantReport:
    start = time.perf_counter()
    report = QuantReport(config, total_parameters=sum(p.numel() for p in model.parameters()))
    targets = select_layers(model, config, filter_fn, report)
    chosen = set(targets)
    modules = dict(model.named_modules())
    report.layers += [{"name": n, "status": "quantized", "reason": "", "pattern": None,
                       "shape": tuple(modules[n].weight.shape), "parameters": _parameters(modules[n])} for n in targets]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both libraries warn about optional kernels absent on CPU
        if config.library == "torchao":
            from torchao.quantization import Int8WeightOnlyConfig
            from torchao.quantization import quantize_ as torchao_quantize_

            names = {id(m): n for n, m in model.named_modules()}
            torchao_quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: names.get(id(m)) in chosen)
        else:
            from optimum.quanto import freeze, qint4, qint8, quantize

            others = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in chosen]
            quantize(model, weights=qint8 if config.weight_bits == 8 else qint4, exclude=others or None)
            freeze(model)
    report.seconds = time.perf_counter() - start
    return report
