"""WP1 SVDQuant-Audio: 4/8-bit linear layers with smoothing and a low-rank branch, behind one torchao-shaped verb.

    from accelerando.quant import SVDQuantConfig, quantize_, save_quantized, load_quantized
    report = quantize_(model, SVDQuantConfig(weight_bits=4, act_bits=4, rank=32), calib=run)
    quantize_(model, RTNConfig(weight_bits=8, act_bits=8))                 # any registered config
    quantize_(model, WeightOnlyConfig.from_method("quanto-w4"))            # other libraries' baselines
    quantize_(model, PackedWeightOnlyConfig(weight_bits=8))                # W8A16 decoding kernels on CPU
    model.quantization_config                                              # what was applied

Modules, in reading order: `primitives` (the integer math every path matches), `config`
(`QuantConfig` and the method configs, skip lists, the presets), `linear` (`SVDQuantLinear`, the
low-rank refit), `calibrate` (input statistics while the full-precision model runs), `api`
(`quantize_` and its handler registry), `baselines` (the weight-only configs of other libraries),
`packed` (W8A16 / W4A16 in PyTorch's packed CPU kernels, for token-by-token decoding),
`serialization` (save/load), `triton_kernels` (W4A4 GPU kernels), `qat` (QAT's prepare and convert
steps: `quantize_(model, QATConfig(base, step="prepare"))`; the distillation loop for a Stable
Audio DiT is `accelerando.train.qat.finetune_lowrank_`).
"""

from .api import QuantReport, allocate_ranks, quantization_config_of, quantize_, register_quantize_module_handler
from .baselines import EXTERNAL_METHODS, WeightOnlyConfig
from .packed import PackedWeightOnlyLinear
from .config import (DEFAULT_SKIP, PRESETS, RANK_GRID, TOKEN_SKIP, PackedWeightOnlyConfig, QuantConfig, RTNConfig,
                     SmoothQuantConfig, SVDQuantConfig, preset, skip_pattern)
from .linear import SVDQuantLinear, lowrank_refit, smoothing_factors
from .qat import QATConfig, stft_loss, trainable_lowrank
from .serialization import load_quantized, save_quantized

__all__ = [
    "DEFAULT_SKIP", "EXTERNAL_METHODS", "PRESETS", "PackedWeightOnlyConfig", "PackedWeightOnlyLinear", "QATConfig", "QuantConfig", "QuantReport", "RANK_GRID",
    "RTNConfig", "SVDQuantConfig", "SVDQuantLinear", "SmoothQuantConfig", "TOKEN_SKIP", "WeightOnlyConfig",
    "allocate_ranks", "load_quantized", "lowrank_refit", "preset", "quantization_config_of", "quantize_",
    "register_quantize_module_handler", "save_quantized", "skip_pattern", "smoothing_factors", "stft_loss",
    "trainable_lowrank",
]
