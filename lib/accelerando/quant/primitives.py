"""Quantization math: group-wise symmetric integers, int4 packing, dynamic activation quantization.

Every quantized path in `accelerando.quant` (the reference `SVDQuantLinear` forward, the CPU int8
path, the Triton kernels) computes exactly what these functions define; kernels are tested
against them. Conventions, after SVDQuant / nunchaku (Li et al. 2025, arXiv:2411.05007):

- Weights [out, in]: symmetric per group of `group_size` consecutive input channels,
  scale = absmax / qmax with qmax = 2^(bits-1) - 1, q = clamp(round(w / scale), -qmax - 1, qmax).
  (int4: scale = absmax / 7, q in [-8, 7].)
- Activations [tokens, in]: the same rule per token per group, computed at run time (dynamic).
  Unsigned variant for inputs bounded below (after a shift, GELU/SiLU outputs are >= 0):
  scale = max / (2^bits - 1), q in [0, 2^bits - 1], which spends no code on the negative half.
- Rounding is round-half-to-even (`torch.round`); an all-zero group gets scale 1 (q = 0).
- int4 packing: two values per byte along the input dimension, element 2k in the low nibble and
  2k + 1 in the high nibble, two's complement (signed) or plain (unsigned).
- Storage of the weight scales (`SCALE_FORMATS`): fp16, or fp8 (e4m3) per group under one
  power-of-two fp32 scale per tensor, a two-level scheme as in NVFP4 (whose tensor scale is any
  fp32) and MX (whose shared scale is a power of two, exact in fp16 and bf16 too). Weight codes are
  always computed with the scales as stored.
- Storage of the low-rank factors (`LOWRANK_BITS`): fp16, or int8 symmetric per rank component
  (scale = absmax / 127, fp16): the components of an SVD differ in size by their singular values.

A quantized GEMM is then  y[t, o] = sum_g sx[t, g] * sw[o, g] * sum_k qx[t, g, k] * qw[o, g, k],
whose integer inner sums are exact in fp32 for group 64 at 4 and 8 bits (|sum| <= 64 * 128 * 128).
"""

from __future__ import annotations

import math

import torch

SCALE_FORMATS = ("fp16", "fp8")
LOWRANK_BITS = (16, 8)
FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_TINY = 2.0**-9  # smallest positive e4m3 (subnormal): a group's scale never rounds to zero


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """(qmin, qmax) of a `bits`-bit integer: signed two's complement or unsigned."""
    if bits < 2 or bits > 8:
        raise ValueError(f"bits={bits}: supported integer widths are 2..8")
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """[..., n] -> [..., n // group_size, group_size]; n must be a multiple of the group."""
    n = x.shape[-1]
    if n % group_size:
        raise ValueError(f"last dimension {n} is not a multiple of group_size={group_size}")
    return x.reshape(*x.shape[:-1], n // group_size, group_size)


def group_scales(x: torch.Tensor, bits: int, group_size: int, signed: bool = True, clip: float = 1.0) -> torch.Tensor:
    """Scales [..., n // group_size] of the symmetric (signed) or max-based (unsigned) quantizer.
    `clip` < 1 shrinks the scale to clip x absmax / qmax: values beyond the code range
    [qmin, qmax] x scale saturate, the rest get a finer step (the clipping searched by
    `SVDQuantConfig.clip_grid`). Signed codes reach one step further below zero (-8 at 4 bits), so
    the most negative weights saturate only once clip < qmax / (qmax + 1)."""
    if not 0.0 < clip <= 1.0:
        raise ValueError(f"clip={clip}: a fraction of the group's absmax in (0, 1]")
    g = _grouped(x.float(), group_size)
    qmin, qmax = qrange(bits, signed)
    top = g.abs().amax(-1) if signed else g.clamp_min(0).amax(-1)
    scale = top * clip / qmax if clip != 1.0 else top / qmax
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_groups(x: torch.Tensor, bits: int, group_size: int, signed: bool = True,
                    scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., n] -> (q int8 [..., n], scale fp32 [..., n // group_size]).

    `scale` overrides the absmax rule (used by clipping searches: a smaller scale clips outliers).
    """
    if scale is None:
        scale = group_scales(x, bits, group_size, signed)
    qmin, qmax = qrange(bits, signed)
    q = torch.round(_grouped(x.float(), group_size) / scale[..., None]).clamp(qmin, qmax)
    return q.reshape(x.shape).to(torch.int8 if signed or bits < 8 else torch.uint8), scale.float()


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of `quantize_groups`: q [..., n] and scale [..., n // group_size] -> fp32 [..., n]."""
    return (_grouped(q.float(), group_size) * scale[..., None]).reshape(q.shape)


def fake_quantize(x: torch.Tensor, bits: int, group_size: int, signed: bool = True, clip: float = 1.0,
                  scale_format: str | None = None) -> torch.Tensor:
    """Quantize then dequantize (fp32, same shape): what a layer sees of x after quantization.
    `scale_format` rounds the group scales to that storage first (None: fp32 scales)."""
    scale = group_scales(x, bits, group_size, signed, clip)
    if scale_format is not None:
        scale = round_scales(scale, scale_format)
    q, scale = quantize_groups(x, bits, group_size, signed, scale=scale)
    return dequantize_groups(q, scale, group_size)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7] (or uint8 in [0, 15]) [..., n] -> uint8 [..., n // 2], two per byte."""
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even last dimension, got {q.shape[-1]}")
    if q.dtype not in (torch.int8, torch.uint8):
        raise TypeError(f"pack_int4 takes int8/uint8 codes, got {q.dtype}")
    nibbles = q.to(torch.int16) & 0xF  # two's complement low nibble
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """uint8 [..., m] -> int8 [..., 2m] (signed, [-8, 7]) or uint8 ([0, 15]); inverse of pack_int4."""
    p = packed.to(torch.int16)
    low, high = p & 0xF, (p >> 4) & 0xF
    if signed:  # sign-extend the nibbles
        low, high = low - ((low & 0x8) << 1), high - ((high & 0x8) << 1)
    out = torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
    return out.to(torch.int8 if signed else torch.uint8)


def quantized_matmul(qx: torch.Tensor, sx: torch.Tensor, qw: torch.Tensor, sw: torch.Tensor,
                     group_size: int) -> torch.Tensor:
    """The integer GEMM a W4A4 / W8A8 kernel computes, in fp32: y [T, O] from activation codes
    qx [T, K] with scales sx [T, K/g] and weight codes qw [O, K] with scales sw [O, K/g].

    Per group, the integer dot products are exact in fp32; they are scaled by sx * sw and summed
    over groups (the kernel's accumulation order may differ by fp32 rounding only).
    """
    t, k = qx.shape
    xg = _grouped(qx.float(), group_size)  # [T, G, g]
    wg = _grouped(qw.float(), group_size)  # [O, G, g]
    partial = torch.einsum("tgk,ogk->gto", xg, wg)  # [G, T, O] integer-valued
    return (partial * sx.t()[:, :, None] * sw.t()[:, None, :]).sum(0)


def encode_scales(scale: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight scales fp32 [O, G] -> as stored: (fp16 [O, G], None) for "fp16"; for "fp8"
    (float8_e4m3fn [O, G], tensor scale fp32 []) with scale ~ codes * tensor scale, the tensor
    scale the power of two that puts the largest code in (224, 448]. e4m3 rounds to nearest with 3
    mantissa bits, so a stored scale can be up to 1/16 below the absmax rule's: the group's
    largest weights then saturate a little, and the codes and the refit see exactly that."""
    if fmt == "fp16":
        return scale.half(), None
    if fmt != "fp8":
        raise ValueError(f"scale format {fmt!r}: use one of {SCALE_FORMATS}")
    top = float(scale.float().max()) if scale.numel() else 0.0
    tensor = torch.tensor(2.0 ** math.ceil(math.log2(top / FP8_MAX)) if top > 0 else 1.0)
    codes = (scale.float() / tensor).clamp(FP8_TINY, FP8_MAX).to(torch.float8_e4m3fn)
    return codes, tensor


def decode_scales(stored: torch.Tensor, tensor: torch.Tensor | None) -> torch.Tensor:
    """Inverse of `encode_scales`: fp32 [O, G]."""
    return stored.float() if tensor is None else stored.float() * tensor.float()


def round_scales(scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """The scales fp32 [O, G] as `fmt` stores them (encode, then decode)."""
    return decode_scales(*encode_scales(scale, fmt))


def encode_factor(f: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A low-rank factor fp32 [n, m] -> as stored: (fp16 [n, m], None) for 16 bits; for 8 bits
    (int8 [n, m], fp16 scales): symmetric, one scale = absmax / 127 per slice across `dim` (the
    dimension reduced: 1 for down [r, in], 0 for up [out, r], so one scale per rank component),
    the codes computed with the fp16 scale."""
    if bits == 16:
        return f.half(), None
    if bits != 8:
        raise ValueError(f"low-rank bits {bits}: use one of {LOWRANK_BITS}")
    top = f.float().abs().amax(dim, keepdim=True)
    scale = torch.where(top > 0, top / 127, torch.ones_like(top)).half()
    q = torch.round(f.float() / scale.float()).clamp(-127, 127).to(torch.int8)
    return q, scale.squeeze(dim)


def decode_factor(stored: torch.Tensor, scale: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Inverse of `encode_factor`: fp32 [n, m]."""
    return stored.float() if scale is None else stored.float() * scale.float().unsqueeze(dim)


def round_factor(f: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The factor fp32 [n, m] as `bits` stores it (encode, then decode)."""
    return decode_factor(*encode_factor(f, bits, dim), dim)
