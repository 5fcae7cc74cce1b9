"""`SVDQuantLinear`: a linear layer as smoothing + low-rank branch + 4/8-bit residual.

SVDQuant (Li et al. 2025, arXiv:2411.05007) writes a linear layer y = x W^T + b as

    y = x_s (L_up L_down)^T + Q(x_s) Q(R)^T + b,     x_s = (x + c) / lambda,
    W_s = W diag(lambda),  L = L_up L_down = SVD_r(W_s)-refit,  R = W_s - L.

Smoothing (lambda, per input channel) moves activation outliers into the weight; the rank-r branch,
kept in 16-bit, absorbs the weight's outliers (its largest singular directions), so the residual R
that is quantized has a small range. `c` is a constant shift that makes inputs bounded below
(GELU/SiLU outputs) non-negative for an unsigned activation code; its effect is removed exactly
through the bias: W (x + c) = W x + c W 1.

The forward here is the reference: what a kernel computes, in fp32, on any device (integer codes
dequantized, so the integer products are exact). `backend` selects a real kernel where one exists:
"int8-cpu" (FBGEMM dynamic int8 for the residual, fp32 low-rank branch beside it) or "triton"
(`accelerando.quant.triton_kernels`, W4A4 on CUDA).
"""

from __future__ import annotations

import torch
from torch import nn

from .primitives import (LOWRANK_BITS, SCALE_FORMATS, decode_factor, decode_scales, dequantize_groups, encode_factor,
                         encode_scales, fake_quantize, group_scales, pack_int4, quantize_groups, round_factor,
                         unpack_int4)

SILU_FLOOR = -0.2785  # min of SiLU (x sigmoid x); GELU's is -0.170


# ---------------------------------------------------------------------------------------------
# Pieces: smoothing factors, weight quantization, the low-rank refit
# ---------------------------------------------------------------------------------------------


def smoothing_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """lambda [in] = max|X_j|^alpha / max|W_:j|^beta, clamped away from 0 and inf.

    act_absmax [in] is the calibrated per-channel input range; weight [out, in].
    """
    w_absmax = weight.abs().amax(0).float().clamp_min(1e-5)
    lam = act_absmax.float().clamp_min(1e-5) ** alpha / w_absmax**beta
    return lam.clamp(1e-4, 1e4)


def weight_quant_error(weight: torch.Tensor, bits: int, group_size: int, clip: float = 1.0,
                       scale_format: str = "fp16") -> torch.Tensor:
    """weight - Q(weight): what round-to-nearest (with the groups' range clipped to `clip` x
    absmax) leaves [out, in]. With fp8 scales Q uses the scales as stored; fp16's rounding
    (2^-11 relative) is below anything the refit resolves and is left out."""
    return weight - fake_quantize(weight, bits, group_size, clip=clip,
                                  scale_format=None if scale_format == "fp16" else scale_format)


def _svd_r(a: torch.Tensor, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r factors (up [out, r], down [r, in]) of a, by randomized SVD when a is large."""
    if min(a.shape) <= 4 * rank or min(a.shape) <= 256:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(a, q=min(rank + 16, min(a.shape)), niter=4)
        u, s, vh = u[:, :rank], s[:rank], v[:, :rank].t()
    root = s.sqrt()
    return u * root, root[:, None] * vh


def lowrank_refit(weight: torch.Tensor, rank: int, bits: int, group_size: int, iters: int = 8,
                  seed: int = 0, clip: float = 1.0, scale_format: str = "fp16",
                  lowrank_bits: int = 16) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Low-rank factors (up [out, r], down [r, in]) for `weight` [out, in] so that
    weight - up @ down quantizes well: start from SVD_r(W), then L <- SVD_r(W - Q(W - L)),
    keeping the best L by ||W - L - Q(W - L)||_F (so the error never increases) and stopping
    when an iteration does not improve it. Returns the factors and the error after each try.
    Factors are rounded to their storage (`lowrank_bits`: fp16, or int8 per row) before the
    error is measured. Q clips each group's range to `clip` x absmax (1: none) and uses scales as
    `scale_format` stores them.
    """
    w = weight.float()
    if rank == 0:
        empty_up, empty_down = w.new_zeros(w.shape[0], 0), w.new_zeros(0, w.shape[1])
        return empty_up, empty_down, [float(weight_quant_error(w, bits, group_size, clip, scale_format).norm())]

    def error(up, down):
        return float(weight_quant_error(w - up @ down, bits, group_size, clip, scale_format).norm())

    up, down = _svd_r(w, rank, seed)
    up, down = round_factor(up, lowrank_bits, 0), round_factor(down, lowrank_bits, 1)
    best, errors = (up, down), [error(up, down)]
    for i in range(iters):
        residual_q = w - up @ down
        residual_q = residual_q - weight_quant_error(residual_q, bits, group_size, clip, scale_format)  # Q(W - L)
        up, down = _svd_r(w - residual_q, rank, seed + i + 1)
        up, down = round_factor(up, lowrank_bits, 0), round_factor(down, lowrank_bits, 1)
        errors.append(error(up, down))
        if errors[-1] < min(errors[:-1]):
            best = (up, down)
        else:
            break
    return best[0], best[1], errors


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------


class SVDQuantLinear(nn.Module):
    """Drop-in for nn.Linear(in_features, out_features): x [..., in] -> y [..., out].

    Buffers (what `save_quantized` stores): smooth [in] fp32, qweight (uint8 [out, in/2] packed
    int4, or int8 [out, in]), wscales fp16 [out, in/group], lora_down fp16 [rank, in],
    lora_up fp16 [out, rank], bias fp32 [out] (includes the shift's correction). `act_shift` is the
    constant c added before smoothing (0 for signed activations). Compact storage
    (`primitives.encode_scales` / `encode_factor`): `scale_format="fp8"` stores wscales as
    float8_e4m3fn with wscale_tensor fp32 [] (a power of two); `lowrank_bits=8` stores the factors
    as int8 with lora_down_scales and lora_up_scales fp16 [rank] (one per component). Compute reads
    them through `weight_scales()` and `lowrank_factors()` (fp32), whatever the storage.
    """

    def __init__(self, in_features: int, out_features: int, weight_bits: int = 4, act_bits: int | None = 4,
                 group_size: int = 64, rank: int = 32, act_shift: float = 0.0, act_signed: bool = True,
                 backend: str = "reference", scale_format: str = "fp16", lowrank_bits: int = 16):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"in_features={in_features} is not a multiple of group_size={group_size}")
        if scale_format not in SCALE_FORMATS or lowrank_bits not in LOWRANK_BITS:
            raise ValueError(f"scale_format={scale_format!r}, lowrank_bits={lowrank_bits}: use a scale format of "
                             f"{SCALE_FORMATS} and low-rank bits of {LOWRANK_BITS}")
        rank = min(rank, in_features, out_features)  # a wider branch has no more directions to hold
        self.in_features, self.out_features = in_features, out_features
        self.weight_bits, self.act_bits, self.group_size, self.rank = weight_bits, act_bits, group_size, rank
        self.act_shift, self.act_signed, self.backend = float(act_shift), bool(act_signed), backend
        self.scale_format = scale_format
        self.lowrank_bits = lowrank_bits if rank else 16  # an empty branch stores nothing either way
        packed_cols = in_features // 2 if weight_bits == 4 else in_features
        self.register_buffer("smooth", torch.ones(in_features))
        self.register_buffer("qweight", torch.zeros(out_features, packed_cols,
                                                     dtype=torch.uint8 if weight_bits == 4 else torch.int8))
        scale_dtype = torch.float16 if scale_format == "fp16" else torch.float8_e4m3fn
        self.register_buffer("wscales", torch.ones(out_features, in_features // group_size, dtype=scale_dtype))
        if scale_format == "fp8":
            self.register_buffer("wscale_tensor", torch.ones(()))
        factor_dtype = torch.float16 if self.lowrank_bits == 16 else torch.int8
        self.register_buffer("lora_down", torch.zeros(rank, in_features, dtype=factor_dtype))
        self.register_buffer("lora_up", torch.zeros(out_features, rank, dtype=factor_dtype))
        if self.lowrank_bits == 8:
            self.register_buffer("lora_down_scales", torch.ones(rank, dtype=torch.float16))
            self.register_buffer("lora_up_scales", torch.ones(rank, dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features))
        self._int8 = None  # FBGEMM module of the residual, built on first use (backend "int8-cpu")

    def _store(self, name: str, scale_name: str, stored: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        """Copy an encoded tensor (and its scales, where its format has them) into its buffers."""
        values, scales = stored
        getattr(self, name).copy_(values)
        if scales is not None:
            getattr(self, scale_name).copy_(scales)

    def set_lowrank(self, up: torch.Tensor, down: torch.Tensor) -> None:
        """Store factors up [out, rank] and down [rank, in] (rounded to `lowrank_bits`)."""
        with torch.no_grad():
            self._store("lora_up", "lora_up_scales", encode_factor(up.detach().float(), self.lowrank_bits, 0))
            self._store("lora_down", "lora_down_scales", encode_factor(down.detach().float(), self.lowrank_bits, 1))

    def lowrank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(up fp32 [out, rank], down fp32 [rank, in]) as stored."""
        return (decode_factor(self.lora_up, getattr(self, "lora_up_scales", None), 0),
                decode_factor(self.lora_down, getattr(self, "lora_down_scales", None), 1))

    def weight_scales(self) -> torch.Tensor:
        """Residual group scales fp32 [out, in/group] as stored."""
        return decode_scales(self.wscales, getattr(self, "wscale_tensor", None))

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_bits: int = 4, act_bits: int | None = 4, group_size: int = 64,
                    rank: int = 32, smooth: torch.Tensor | None = None, act_shift: float = 0.0,
                    act_signed: bool = True, refit_iters: int = 8, seed: int = 0,
                    backend: str = "reference", weight_clip: float = 1.0, scale_format: str = "fp16",
                    lowrank_bits: int = 16) -> "SVDQuantLinear":
        """Quantize `linear` with smoothing factors `smooth` [in] (None: no smoothing). Unsigned
        activation codes (`act_signed=False`) need inputs >= -act_shift. `weight_clip` < 1 clips
        each residual group's range to that fraction of its absmax (the refit sees the same Q).
        `scale_format` and `lowrank_bits` choose the storage (the refit sees it too)."""
        w = linear.weight.detach().float()
        out_f, in_f = w.shape
        layer = cls(in_f, out_f, weight_bits, act_bits, group_size, rank, act_shift=act_shift,
                    act_signed=act_signed, backend=backend, scale_format=scale_format, lowrank_bits=lowrank_bits)
        lam = torch.ones(in_f) if smooth is None else smooth.detach().float().cpu()
        w_s = w.cpu() * lam  # W diag(lambda)
        up, down, errors = lowrank_refit(w_s, rank, weight_bits, group_size, refit_iters, seed, weight_clip,
                                         scale_format, lowrank_bits)
        residual = w_s - up @ down
        stored_scales = encode_scales(group_scales(residual, weight_bits, group_size, clip=weight_clip), scale_format)
        scale = decode_scales(*stored_scales)  # the codes are computed with the scales as stored
        q, _ = quantize_groups(residual, weight_bits, group_size, scale=scale)
        bias = torch.zeros(out_f) if linear.bias is None else linear.bias.detach().float().cpu()
        if act_shift:  # W' (x + c) = W' x + c W' 1, with W' the weight the layer really applies
            applied = (dequantize_groups(q, scale, group_size) + up @ down) / lam
            bias = bias - act_shift * applied.sum(1)
        layer.smooth.copy_(lam)
        layer.qweight.copy_(pack_int4(q) if weight_bits == 4 else q)
        layer._store("wscales", "wscale_tensor", stored_scales)
        layer.set_lowrank(up, down)
        layer.bias.copy_(bias)
        layer.refit_errors = errors
        return layer.to(linear.weight.device)

    # -- pieces of the forward ----------------------------------------------------------------

    def weight_codes(self) -> torch.Tensor:
        """Residual weight codes, int8 [out, in]."""
        return unpack_int4(self.qweight) if self.weight_bits == 4 else self.qweight

    def residual_weight(self) -> torch.Tensor:
        """Dequantized residual Q(R) [out, in], fp32."""
        return dequantize_groups(self.weight_codes(), self.weight_scales(), self.group_size)

    def effective_weight(self) -> torch.Tensor:
        """The weight this layer applies to x, fp32 [out, in]: (Q(R) + L_up L_down) / lambda."""
        up, down = self.lowrank_factors()
        return (self.residual_weight() + up @ down) / self.smooth

    def smoothed_input(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() + self.act_shift) / self.smooth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self.backend
        w4a4 = self.weight_bits == 4 and self.act_bits == 4
        if backend == "auto":  # the Triton kernels compute W4A4 only; every other width runs the reference
            backend = "triton" if x.is_cuda and w4a4 and self._triton_ok() else "reference"
        if backend == "triton" and not w4a4:
            raise ValueError(f"backend='triton' runs W4A4 layers; this one is W{self.weight_bits}A{self.act_bits}: "
                             "use backend='auto' or 'reference'")
        if backend == "int8-cpu":
            return self._forward_int8(x)
        if backend == "triton":
            from . import triton_kernels

            up, down = self.lowrank_factors()
            return triton_kernels.w4a4_linear(
                x, self.smooth, self.act_shift, self.qweight, self.weight_scales(), down, up, self.bias,
                self.group_size, self.act_signed).to(x.dtype)
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor, lora_down: torch.Tensor | None = None,
                           lora_up: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                           ste: bool = False) -> torch.Tensor:
        """The reference numerics, x [..., in] -> y [..., out] in x's dtype.

        QAT (`accelerando.quant.qat`) calls it with trainable fp32 factors down [r, in] and
        up [out, r], the residual Q(R) [out, in] decoded once, and `ste=True`: the activation
        rounding then passes gradients straight through (forward value x_s + (Q(x_s) - x_s),
        equal to Q(x_s) up to one fp32 rounding; round's own gradient is zero). The defaults are
        the stored buffers and no STE: what inference computes, bit for bit.
        """
        if lora_down is None or lora_up is None:
            stored_up, stored_down = self.lowrank_factors()
        down = stored_down if lora_down is None else lora_down
        up = stored_up if lora_up is None else lora_up
        x_s = self.smoothed_input(x)  # [..., in]
        y = x_s @ down.t() @ up.t() if self.rank else 0.0
        x_q = x_s
        if self.act_bits is not None:
            x_q = fake_quantize(x_s, self.act_bits, self.group_size, self.act_signed)
            if ste:
                x_q = x_s + (x_q - x_s).detach()
        y = y + x_q @ (self.residual_weight() if residual is None else residual).t() + self.bias
        return y.to(x.dtype)

    def _forward_int8(self, x: torch.Tensor) -> torch.Tensor:
        # FBGEMM's dynamic int8 linear quantizes activations per tensor and weights per output
        # channel: not the group-wise reference numerics, but a quantized GEMM that can beat fp32
        # on a CPU (not bf16 on one with AMX: Chapter 4 times both); the low-rank branch runs
        # beside it in fp32.
        if self._int8 is None:
            self._int8 = _fbgemm_linear(self.residual_weight(), self.bias)
        x_s = self.smoothed_input(x)
        y = self._int8(x_s)
        if self.rank:
            up, down = self.lowrank_factors()
            y = y + (x_s @ down.t()) @ up.t()
        return y.to(x.dtype)

    @staticmethod
    def _triton_ok() -> bool:
        try:
            from . import triton_kernels
        except ImportError:
            return False
        return triton_kernels.available()

    def extra_repr(self) -> str:
        a = "fp" if self.act_bits is None else self.act_bits
        return (f"in={self.in_features}, out={self.out_features}, W{self.weight_bits}A{a}, group={self.group_size}, "
                f"rank={self.rank}, shift={self.act_shift:g}, backend={self.backend}, scales={self.scale_format}, "
                f"branch={'fp' if self.lowrank_bits == 16 else 'int'}{self.lowrank_bits}")

    def weight_bytes(self) -> int:
        """Bytes of everything this layer stores (packed codes, scales, low-rank factors, smoothing, bias)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())


def _fbgemm_linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """torch.ao dynamic-quantized int8 Linear holding `weight` [out, in] and `bias` [out]."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    fp = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        fp.weight.copy_(weight)
        fp.bias.copy_(bias)
    fp.qconfig = per_channel_dynamic_qconfig
    return DynamicLinear.from_float(fp)
