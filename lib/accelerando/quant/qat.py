"""QAT of SVDQuant's low-rank branches, torchao-shaped: prepare, train (any loop), convert.

    quantize_(model, QATConfig(SVDQuantConfig(rank=32), step="prepare"), calib=calib)   # PTQ + trainable branches
    ...                                 # train model.qat_factors' parameters (the rest is frozen)
    quantize_(model, QATConfig(SVDQuantConfig(rank=32), step="convert"))                # factors stored, stock forward

"prepare" quantizes the model with the base config (unless it is quantized already) and swaps
every `SVDQuantLinear`'s forward (`trainable_lowrank`) for the reference numerics with fp32
trainable factors and a straight-through estimator on the activation rounding (round has zero
gradient; without the STE no gradient would reach earlier layers through the quantized residual
path); everything else (codes, scales, smoothing, bias, every other module) stays fixed. "convert"
writes the trained factors back into the buffers `lora_down` / `lora_up` (at their storage) and
restores the stock forward, so `save_quantized`, `load_quantized` and every backend work unchanged
and the eval numerics are the reference's, bit for bit. `stft_loss` is the differentiable twin of
`accelerando.metrics.fidelity`'s `mrstft_distance` / `complex_mrstft_distance`.

The distillation loop for a Stable Audio DiT (teacher, corpus data, objectives) is a training
verb and lives in `accelerando.train.qat` (`finetune_lowrank_`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..metrics.fidelity import RESOLUTIONS
from .api import QuantReport, quantize_, register_quantize_module_handler
from .config import QuantConfig, SVDQuantConfig
from .linear import SVDQuantLinear

QAT_STEPS = ("prepare", "convert")


# ---------------------------------------------------------------------------------------------
# The differentiable multi-resolution STFT losses
# ---------------------------------------------------------------------------------------------


def stft_loss(reference: torch.Tensor, estimate: torch.Tensor, kind: str = "stft_complex") -> torch.Tensor:
    """Differentiable multi-resolution STFT distance of `estimate` to `reference` ([..., samples],
    same shape), averaged over the leading dimensions (clips x channels): scalar tensor.

    kind "stft_complex": mean over RESOLUTIONS of ||Y - X|| / ||Y|| on the complex STFTs;
    "stft_magnitude": spectral convergence + log-magnitude L1 (magnitudes floored at 1e-7).
    Y is the reference, X the estimate; per clip these equal `metrics.fidelity`'s
    complex_mrstft_distance / mrstft_distance (tested).
    """
    if kind not in ("stft_complex", "stft_magnitude"):
        raise ValueError(f"unknown STFT loss {kind!r}: use 'stft_complex' or 'stft_magnitude'")
    if reference.shape != estimate.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ in shape")
    ref, est = reference.reshape(-1, reference.shape[-1]), estimate.reshape(-1, estimate.shape[-1])  # [clips, samples]
    total = 0.0
    for n_fft, hop, win in RESOLUTIONS:
        window = torch.hann_window(win, dtype=ref.dtype, device=ref.device)
        y, x = (torch.stft(s, n_fft, hop, win, window=window, center=True, pad_mode="reflect", return_complex=True)
                for s in (ref, est))  # [clips, bins, frames]
        if kind == "stft_complex":
            err = _norm(torch.view_as_real(y - x)) / _norm(torch.view_as_real(y)).clamp_min(1e-12)
        else:
            y, x = y.abs(), x.abs()
            sc = _norm(y - x) / _norm(y).clamp_min(1e-12)
            log_mag = (y.clamp_min(1e-7).log() - x.clamp_min(1e-7).log()).abs().flatten(1).mean(1)
            err = sc + log_mag
        total = total + err.mean()
    return total / len(RESOLUTIONS)


def _norm(t: torch.Tensor) -> torch.Tensor:
    """Frobenius norm per clip: [clips, ...] -> [clips]."""
    return t.flatten(1).norm(dim=1)


# ---------------------------------------------------------------------------------------------
# Trainable low-rank factors: a swapped forward with a straight-through estimator
# ---------------------------------------------------------------------------------------------


class LowRankFactors(nn.Module):
    """fp32 trainable copy of one layer's factors: down [r, in], up [out, r]; plus its residual
    weight Q(R) [out, in] decoded once (it is frozen, and unpacking int4 on every call is waste)."""

    def __init__(self, layer: SVDQuantLinear):
        super().__init__()
        up, down = layer.lowrank_factors()
        self.down = nn.Parameter(down.detach().clone())
        self.up = nn.Parameter(up.detach().clone())
        self.register_buffer("residual", layer.residual_weight().detach(), persistent=False)


def _qat_forward(layer: SVDQuantLinear, f: LowRankFactors, x: torch.Tensor) -> torch.Tensor:
    """The layer's reference forward with trainable factors and the straight-through quantizer."""
    return layer.forward_reference(x, f.down, f.up, f.residual, ste=True)


def quantized_layers(model: nn.Module) -> dict[str, SVDQuantLinear]:
    """The model's SVDQuantLinear layers by qualified name; a clear error when there are none or
    none has a low-rank branch (nothing to train)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)}
    if not layers:
        raise ValueError("this model has no SVDQuantLinear layers: quantize it first with "
                         "quantize_(model, SVDQuantConfig(rank=32, ...)); QAT trains their low-rank branches")
    if not any(m.rank for m in layers.values()):
        raise ValueError(f"all {len(layers)} SVDQuantLinear layers have rank 0: there is no low-rank branch to train; "
                         "quantize with SVDQuantConfig(rank > 0), e.g. preset('svdquant')")
    return layers


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """requires_grad False on every parameter of `modules` within the block, then as it was."""
    flags = {p: p.requires_grad for m in modules for p in m.parameters()}
    for p in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def install_trainable_lowrank(model: nn.Module) -> dict[str, LowRankFactors]:
    """Swap every SVDQuantLinear's forward for the reference numerics with fresh fp32 trainable
    factors and the straight-through quantizer (whatever the layer's `backend`); returns
    {name: LowRankFactors}. Undo with `remove_trainable_lowrank`."""
    layers = quantized_layers(model)
    factors = {n: LowRankFactors(m) for n, m in layers.items()}
    for name, layer in layers.items():
        layer.forward = partial(_qat_forward, layer, factors[name])  # instance attribute shadows the method
    return factors


def remove_trainable_lowrank(model: nn.Module) -> None:
    """The stock forward back on every SVDQuantLinear of `model` (the stored factors unchanged)."""
    for layer in model.modules():
        if isinstance(layer, SVDQuantLinear) and "forward" in vars(layer):
            del layer.forward


@contextmanager
def trainable_lowrank(model: nn.Module) -> Iterator[dict[str, LowRankFactors]]:
    """Within the block every SVDQuantLinear of `model` computes with fp32 trainable factors (the
    yielded {name: LowRankFactors}) and the straight-through quantizer; every parameter of the
    model itself is frozen. Whatever a layer's `backend`, training runs the reference numerics.
    On exit the stock forward and requires_grad flags are restored; the stored factors change only
    through `write_back`."""
    factors = install_trainable_lowrank(model)
    try:
        with frozen(model):
            yield factors
    finally:
        remove_trainable_lowrank(model)


@torch.no_grad()
def write_back(model: nn.Module, factors: dict[str, LowRankFactors]) -> None:
    """Store trained factors in their layers' buffers (rounded to the layer's storage: fp16, or
    int8 per row for `lowrank_bits=8`, a rounding the training did not see)."""
    modules = dict(model.named_modules())
    for name, f in factors.items():
        modules[name].set_lowrank(f.up, f.down)


# ---------------------------------------------------------------------------------------------
# The torchao-shaped verb: quantize_(model, QATConfig(base, step="prepare" | "convert"))
# ---------------------------------------------------------------------------------------------


@dataclass
class QATConfig(QuantConfig):
    """One step of QAT through `quantize_` (torchao's `QATConfig(base_config, step=...)`).

    base_config  the SVDQuantConfig the model is (or gets) quantized with.
    step         "prepare": quantize with `base_config` if the model has no SVDQuantLinear yet,
                 then install trainable factors (`model.qat_factors`, {name: LowRankFactors}; the
                 caller's optimizer trains their parameters, and freezes the rest as it likes);
                 "convert": write the trained factors back and restore the stock forward.
    """

    base_config: SVDQuantConfig = None
    step: str = "prepare"
    version: int = 1

    def __post_init__(self):
        if isinstance(self.base_config, dict):
            self.base_config = QuantConfig.from_dict(self.base_config)
        if not isinstance(self.base_config, SVDQuantConfig):
            raise ValueError(f"base_config={self.base_config!r}: QAT trains SVDQuant's low-rank branches; "
                             "give an SVDQuantConfig with rank > 0")
        if self.step not in QAT_STEPS:
            raise ValueError(f"step={self.step!r}: use one of {QAT_STEPS}")

    @property
    def skip(self) -> tuple[str, ...]:
        return self.base_config.skip

    @property
    def needs_calibration(self) -> bool:
        return self.step == "prepare" and self.base_config.needs_calibration

    @property
    def uses_calibration(self) -> bool:
        return self.step == "prepare" and self.base_config.uses_calibration

    @property
    def name(self) -> str:
        return f"QAT {self.step} of {self.base_config.name}"

    @property
    def result_config(self) -> SVDQuantConfig:
        return self.base_config

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "base_config": self.base_config.to_dict(), "step": self.step,
                "version": self.version}


@register_quantize_module_handler(QATConfig)
def _qat_transform(model: nn.Module, config: QATConfig, calib, filter_fn, audio_fn) -> QuantReport:
    start = time.perf_counter()
    if config.step == "convert":
        factors = getattr(model, "qat_factors", None)
        if factors is None:
            raise ValueError("nothing to convert: run quantize_(model, QATConfig(base, step='prepare')) and train first")
        write_back(model, factors)
        remove_trainable_lowrank(model)
        del model.qat_factors
        report = QuantReport(config, total_parameters=sum(p.numel() for p in model.parameters()))
        report.layers = [{"name": n, "status": "quantized", "reason": "converted: trained factors stored",
                          "pattern": None} for n in factors]
    else:
        if any(isinstance(m, SVDQuantLinear) for m in model.modules()):
            report = QuantReport(config, total_parameters=sum(p.numel() for p in model.parameters()))
            report.layers = [{"name": n, "status": "quantized", "reason": "already quantized", "pattern": None}
                             for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)]
        else:
            report = quantize_(model, config.base_config, filter_fn=filter_fn, calib=calib, audio_fn=audio_fn)
            report.config = config
        model.qat_factors = install_trainable_lowrank(model)  # a plain dict: not submodules of the model
    report.seconds = time.perf_counter() - start
    return report

