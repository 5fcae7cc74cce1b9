"""WP1 SVDQuant-Audio: 4/8-bit linear layers with smoothing and a low-rank branch.

    from accelerando.quant import SVDQuantConfig, quantize_, save_quantized, load_quantized
    report = quantize_(model, SVDQuantConfig(weight_bits=4, act_bits=4, rank=32), calib=run)

Modules, in reading order: `primitives` (the integer math every path matches), `config`
(`SVDQuantConfig`, the method presets), `linear` (`SVDQuantLinear`, the low-rank refit),
`calibrate` (input statistics while the full-precision model runs), `api` (`quantize_`),
`serialization` (save/load), `triton_kernels` (W4A4 GPU kernels), `qat` (fine-tuning of the low-rank
branches toward the full-precision model: `finetune_lowrank_(pipe, QATConfig(...), data, teacher)`).
"""

from .api import QuantReport, allocate_ranks, quantize_, register_quantize_handler
from .config import DEFAULT_SKIP, PRESETS, RANK_GRID, SVDQuantConfig, preset
from .linear import SVDQuantLinear, lowrank_refit, smoothing_factors
from .qat import QATConfig, QATData, QATReport, corpus_data, finetune_lowrank_, stft_loss, trainable_lowrank, training_data
from .serialization import load_quantized, save_quantized

__all__ = [
    "DEFAULT_SKIP", "PRESETS", "QATConfig", "QATData", "QATReport", "QuantReport", "RANK_GRID", "SVDQuantConfig",
    "SVDQuantLinear", "allocate_ranks", "corpus_data", "finetune_lowrank_", "load_quantized", "lowrank_refit",
    "preset", "quantize_", "register_quantize_handler", "save_quantized", "smoothing_factors", "stft_loss",
    "trainable_lowrank", "training_data",
]
