"""Triton kernels for SVDQuant-style W4A4 linear layers (smoothing + low-rank branch + int4 GEMM).

The numerics are those of `accelerando.quant.primitives` (the reference; tests compare against it):

    x_s    = (x + shift) / smooth                                    fp32 [T, K]
    qx, sx = quantize_groups(x_s, 4, group_size, signed)             int4 codes, fp32 scales
    y      = quantized_matmul(qx, sx, qw, sw, group_size)            fp32 [T, O]
             + (x_s @ lora_down.T) @ lora_up.T + bias

Two fused kernels compute it:

1. `quantize_act_lowrank`: smoothing, dynamic per-token per-group int4 quantization with packing,
   and the low-rank down-projection lr_act = x_s @ lora_down.T on the *unquantized* x_s.
2. `w4a4_gemm`: the group-wise integer GEMM (nibbles unpacked in registers, int8 x int8 -> int32
   dot per group, scaled by sx * sw and accumulated in fp32), with lr_act @ lora_up.T and the bias
   added in the epilogue.

`w4a4_linear` chains them for inputs with any leading batch dimensions.

Shapes and layouts (T tokens, K input channels, O output channels, R low-rank rank, g group size,
G = K // g groups):

- x [..., K] fp32 / fp16 / bf16; smooth [K]; shift a Python float.
- qx_packed uint8 [T, K // 2] and qweight_packed uint8 [O, K // 2]: two int4 codes per byte along
  K, element 2k in the low nibble and 2k + 1 in the high nibble (`primitives.pack_int4`). Weight
  codes are signed ([-8, 7]); activation codes are signed ([-8, 7], scale = absmax / 7) or
  unsigned ([0, 15], scale = max / 15) per `act_signed`.
- sx fp32 [T, G]; wscales fp16 / fp32 [O, G] (computed in fp32).
- lora_down [R, K], lora_up [O, R] (any float dtype, computed in fp32); lr_act fp32 [T, R];
  R may be 0. bias [O] or None. Output y fp32 [T, O].

Numerics: codes and scales are bit-identical to `primitives.quantize_groups` (IEEE divisions via
`tl.math.div_rn`, since a plain fp32 '/' may be approximate on NVIDIA GPUs; round-half-to-even by
the fp32 magic-number addition, see the kernel). The integer group sums are exact (int8 x int8 ->
int32); scaling, group accumulation, the low-rank dots (fp32 with input_precision="ieee", i.e. no
TF32) and the bias differ from the reference only by fp32 summation order, ~1e-7 relative.

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter: TRITON_INTERPRET=1 must be in
the environment before `triton` is first imported (Triton builds its own language helpers for one
mode at import; `available()` is False and calls raise when the flag changed since). The module
imports without Triton; then `available()` is False and the functions raise a RuntimeError.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except Exception as exc:  # any failure (missing wheel, broken driver lib) means "no kernels"
    triton = None
    tl = None
    _IMPORT_ERROR: Exception | None = exc
else:
    _IMPORT_ERROR = None

__all__ = ["available", "quantize_act_lowrank", "w4a4_gemm", "w4a4_linear"]

# --------------------------------------------------------------------------------------------
# Kernels (plain functions; wrapped with triton.jit lazily by `_kernels`)
# --------------------------------------------------------------------------------------------

def _quant_act_lowrank_kernel(
    x_ptr, smooth_ptr, down_ptr, q_ptr, sx_ptr, lr_ptr,
    T, K, R, shift,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr,
    SIGNED: tl.constexpr, HAS_LR: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_r = tl.program_id(1)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    rows64 = rows.to(tl.int64)  # T * K can exceed 2^31 for long sequences
    cols = tl.arange(0, BLOCK_G)
    col_ok = cols < GROUP  # BLOCK_G is GROUP rounded up to a power of two
    hcols = tl.arange(0, BLOCK_G // 2)
    hcol_ok = hcols < GROUP // 2
    rr = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = rr < R
    # Programs along axis 1 split the rank; only the first writes the quantized codes, the rest
    # recompute them (cheap) so that x is read once per program. The flag is folded into a row
    # mask because the interpreter mishandles `bool tensor & bool scalar`.
    q_row_ok = tl.where(pid_r == 0, rows, T) < T
    n_groups = K // GROUP
    half_k = K // 2
    acc = tl.zeros((BLOCK_T, BLOCK_R), dtype=tl.float32)
    for g in range(0, n_groups):
        k = g * GROUP + cols
        x = tl.load(x_ptr + rows64[:, None] * K + k[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        sm = tl.load(smooth_ptr + k, mask=col_ok, other=1.0)
        # div_rn: Triton's plain fp32 '/' may lower to an approximate division on NVIDIA GPUs,
        # which would move values across rounding boundaries relative to torch.
        xs = tl.math.div_rn(x + shift, sm[None, :])
        xs = tl.where(col_ok[None, :], xs, 0.0)  # padding columns would otherwise hold `shift`
        if SIGNED:
            top = tl.max(tl.abs(xs), axis=1)
            scale = tl.math.div_rn(top, tl.full(top.shape, 7.0, tl.float32))
            qmin = -8.0
            qmax = 7.0
        else:
            top = tl.max(tl.maximum(xs, 0.0), axis=1)
            scale = tl.math.div_rn(top, tl.full(top.shape, 15.0, tl.float32))
            qmin = 0.0
            qmax = 15.0
        scale = tl.where(scale > 0.0, scale, 1.0)
        v = tl.math.div_rn(xs, scale[:, None])
        # Clamping before rounding equals torch's round-then-clamp (qmin, qmax are integers) and
        # keeps |v| small enough for the magic-number rounding.
        v = tl.minimum(tl.maximum(v, qmin), qmax)
        # Round half to even as torch.round does: adding 1.5 * 2^23 moves v into [2^23, 2^24),
        # where fp32 spacing is exactly 1, so the (ties-to-even) fp32 addition itself rounds v;
        # subtracting it back is exact. libdevice.rint is not available in the interpreter.
        q = ((v + 12582912.0) - 12582912.0).to(tl.int32)
        lo, hi = tl.split(tl.reshape(q, (BLOCK_T, BLOCK_G // 2, 2)))
        byte = (lo & 0xF) | ((hi & 0xF) << 4)  # two's complement nibbles for signed codes
        tl.store(q_ptr + rows64[:, None] * half_k + (g * (GROUP // 2) + hcols)[None, :], byte.to(tl.uint8),
                 mask=q_row_ok[:, None] & hcol_ok[None, :])
        tl.store(sx_ptr + rows64 * n_groups + g, scale, mask=q_row_ok)
        if HAS_LR:
            d = tl.load(down_ptr + rr[None, :].to(tl.int64) * K + k[:, None],
                        mask=col_ok[:, None] & r_ok[None, :], other=0.0).to(tl.float32)  # [BLOCK_G, BLOCK_R]
            # ieee: the default fp32 dot on NVIDIA is TF32, ~1e-3 relative, too coarse for the branch
            # that carries the outliers.
            acc += tl.dot(xs, d, input_precision="ieee")
    if HAS_LR:
        tl.store(lr_ptr + rows64[:, None] * R + rr[None, :], acc, mask=row_ok[:, None] & r_ok[None, :])


def _w4a4_gemm_kernel(
    qx_ptr, sx_ptr, qw_ptr, sw_ptr, lr_ptr, up_ptr, bias_ptr, y_ptr,
    T, O, K, R,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr,
    BLOCK_R: tl.constexpr, ACT_SIGNED: tl.constexpr, HAS_LR: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_o = tl.program_id(1)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    rows64 = rows.to(tl.int64)
    outs = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    out_ok = outs < O
    outs64 = outs.to(tl.int64)
    hcols = tl.arange(0, BLOCK_G // 2)
    hcol_ok = hcols < GROUP // 2
    n_groups = K // GROUP
    half_k = K // 2
    acc = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
    for g in range(0, n_groups):
        hk = g * (GROUP // 2) + hcols
        # Masked bytes load as 0, i.e. code 0 in both nibbles: padding adds nothing to the dot.
        px = tl.load(qx_ptr + rows64[:, None] * half_k + hk[None, :],
                     mask=row_ok[:, None] & hcol_ok[None, :], other=0).to(tl.int32)
        pw = tl.load(qw_ptr + outs64[:, None] * half_k + hk[None, :],
                     mask=out_ok[:, None] & hcol_ok[None, :], other=0).to(tl.int32)
        xlo = px & 0xF
        xhi = (px >> 4) & 0xF
        if ACT_SIGNED:
            xlo = xlo - ((xlo & 0x8) << 1)
            xhi = xhi - ((xhi & 0x8) << 1)
        wlo = pw & 0xF
        whi = (pw >> 4) & 0xF
        wlo = wlo - ((wlo & 0x8) << 1)
        whi = whi - ((whi & 0x8) << 1)
        # join + reshape re-interleaves (low, high) into element order 2k, 2k + 1 along K; unsigned
        # codes (<= 15) fit int8 too, so one int8 dot serves both activation variants.
        a = tl.reshape(tl.join(xlo, xhi), (BLOCK_T, BLOCK_G)).to(tl.int8)
        b = tl.reshape(tl.join(wlo, whi), (BLOCK_O, BLOCK_G)).to(tl.int8)
        part = tl.dot(a, tl.trans(b), out_dtype=tl.int32)  # exact: |sum| <= g * 8 * 15
        sxv = tl.load(sx_ptr + rows64 * n_groups + g, mask=row_ok, other=0.0)
        swv = tl.load(sw_ptr + outs64 * n_groups + g, mask=out_ok, other=0.0).to(tl.float32)
        acc += part.to(tl.float32) * sxv[:, None] * swv[None, :]
    if HAS_LR:
        for r0 in range(0, R, BLOCK_R):
            rr = r0 + tl.arange(0, BLOCK_R)
            r_ok = rr < R
            la = tl.load(lr_ptr + rows64[:, None] * R + rr[None, :],
                         mask=row_ok[:, None] & r_ok[None, :], other=0.0).to(tl.float32)
            up = tl.load(up_ptr + outs64[None, :] * R + rr[:, None],
                         mask=r_ok[:, None] & out_ok[None, :], other=0.0).to(tl.float32)  # [BLOCK_R, BLOCK_O]
            acc += tl.dot(la, up, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(bias_ptr + outs, mask=out_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows64[:, None] * O + outs64[None, :], acc, mask=row_ok[:, None] & out_ok[None, :])


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------

_JIT_CACHE: dict[bool, tuple[object, object]] = {}


def _interpreting() -> bool:
    if triton is not None:
        try:
            return bool(triton.knobs.runtime.interpret)
        except AttributeError:  # older Triton without knobs
            pass
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _language_interpreted() -> bool:
    """Whether triton.language's own jitted helpers (tl.zeros, tl.max, ...) were built for the
    interpreter: Triton decides that once, when `triton` is first imported."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    return isinstance(getattr(tl, "zeros", None), InterpretedFunction)


def _mode_problem() -> str | None:
    """Why kernels cannot run in this process (None when they can)."""
    if triton is None:
        return (f"accelerando.quant.triton_kernels needs the `triton` package, which failed to import "
                f"({_IMPORT_ERROR!r}); install it (`pip install triton`) or use the layer's 'reference' backend")
    interp = _interpreting()
    if interp != _language_interpreted():
        return (f"TRITON_INTERPRET is {'set' if interp else 'unset'} now but was "
                f"{'unset' if interp else 'set'} when `triton` was first imported; Triton fixes the interpreter "
                f"mode of its language helpers at import, so set TRITON_INTERPRET=1 in the environment before "
                f"anything imports triton (importing accelerando.quant may already do so, through torch)")
    if not interp and not torch.cuda.is_available():
        return ("accelerando.quant.triton_kernels needs a CUDA GPU; on CPU set TRITON_INTERPRET=1 in the "
                "environment (before triton is imported) to run the kernels under Triton's slow interpreter, "
                "or use the layer's 'reference' backend")
    return None


def available() -> bool:
    """True when Triton imports and kernels can run: a CUDA GPU, or TRITON_INTERPRET=1 (CPU tensors)."""
    return _mode_problem() is None


def _require() -> bool:
    """Raise a RuntimeError naming the fix when kernels cannot run; return the interpreter flag."""
    problem = _mode_problem()
    if problem is not None:
        raise RuntimeError(problem)
    return _interpreting()


def _kernels() -> tuple[object, object]:
    # triton.jit decides between compiled and interpreted execution when it wraps a function;
    # wrapping on first use (not at import) lets this module import without triton.
    interp = _require()
    if interp not in _JIT_CACHE:
        _JIT_CACHE[interp] = (triton.jit(_quant_act_lowrank_kernel), triton.jit(_w4a4_gemm_kernel))
    return _JIT_CACHE[interp]


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, _next_pow2(n)))


def _check_block(name: str, value: int | None) -> None:
    if value is not None and (value < 16 or value & (value - 1)):
        raise ValueError(f"{name}={value}: block sizes must be powers of two >= 16 (tl.dot tiles)")


def _check_group(k: int, group_size: int) -> int:
    """Validate the group size against K; return the number of groups."""
    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    if group_size < 16 or group_size % 2:
        raise ValueError(f"group_size={group_size}: must be even (two int4 codes per byte) and >= 16 "
                         f"(the smallest tl.dot tile)")
    if k % group_size:
        raise ValueError(f"K={k} input channels is not a multiple of group_size={group_size}")
    return k // group_size


def _check_device(interp: bool, *tensors: torch.Tensor | None) -> None:
    ts = [t for t in tensors if t is not None]
    devices = {t.device for t in ts}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(str(d) for d in devices)}")
    if not interp and ts and not ts[0].is_cuda:
        raise ValueError(f"tensors are on {ts[0].device}; compiled Triton kernels need CUDA tensors "
                         f"(or set TRITON_INTERPRET=1 to run on CPU tensors)")


def _check_float(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_packed(name: str, t: torch.Tensor) -> None:
    if t.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 (two int4 codes per byte, primitives.pack_int4), got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, K // 2], got shape {tuple(t.shape)}")


def quantize_act_lowrank(
    x: torch.Tensor, smooth: torch.Tensor, shift: float, lora_down: torch.Tensor | None,
    group_size: int = 64, signed: bool = True, *, block_t: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth, quantize and down-project activations in one pass over x.

    x [T, K] (fp32 / fp16 / bf16), smooth [K], shift a float, lora_down [R, K] (R may be 0 or None)
    -> (qx_packed uint8 [T, K // 2], sx fp32 [T, K // group_size], lr_act fp32 [T, R]), where
    x_s = (x + shift) / smooth, (qx, sx) = primitives.quantize_groups(x_s, 4, group_size, signed)
    and lr_act = x_s @ lora_down.T on the unquantized x_s. `block_t` overrides the token tile.
    """
    interp = _require()
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [T, K], got shape {tuple(x.shape)} (w4a4_linear flattens batch dims)")
    _check_float("x", x)
    t, k = x.shape
    n_groups = _check_group(k, group_size)
    _check_block("block_t", block_t)
    if smooth.dim() != 1 or smooth.numel() != k:
        raise ValueError(f"smooth must have shape [{k}], got {tuple(smooth.shape)}")
    _check_float("smooth", smooth)
    if lora_down is not None:
        if lora_down.dim() != 2 or lora_down.shape[1] != k:
            raise ValueError(f"lora_down must have shape [R, {k}], got {tuple(lora_down.shape)}")
        _check_float("lora_down", lora_down)
    r = 0 if lora_down is None else lora_down.shape[0]
    _check_device(interp, x, smooth, lora_down)

    dev = x.device
    qx = torch.empty(t, k // 2, dtype=torch.uint8, device=dev)
    sx = torch.empty(t, n_groups, dtype=torch.float32, device=dev)
    lr = torch.empty(t, r, dtype=torch.float32, device=dev)
    if t == 0:
        return qx, sx, lr
    x = x.contiguous()
    smooth = smooth.to(torch.float32).contiguous()
    down = lora_down.contiguous() if r else smooth  # placeholder pointer, never read when HAS_LR is off

    block_t = block_t or _block(t, 16, 32)
    # The whole rank stays in one accumulator tile up to 128; larger ranks split over grid axis 1.
    block_r = _block(r, 16, 128)
    grid = (triton.cdiv(t, block_t), triton.cdiv(r, block_r) if r else 1)
    quant_kernel, _ = _kernels()
    quant_kernel[grid](
        x, smooth, down, qx, sx, lr, t, k, r, float(shift),
        GROUP=group_size, BLOCK_G=_next_pow2(group_size), BLOCK_T=block_t, BLOCK_R=block_r,
        SIGNED=bool(signed), HAS_LR=r > 0, num_warps=4)
    return qx, sx, lr


def w4a4_gemm(
    qx_packed: torch.Tensor, sx: torch.Tensor, qweight_packed: torch.Tensor, wscales: torch.Tensor,
    lr_act: torch.Tensor | None, lora_up: torch.Tensor | None, bias: torch.Tensor | None,
    group_size: int = 64, act_signed: bool = True, *, block_t: int | None = None, block_o: int | None = None,
) -> torch.Tensor:
    """Group-wise W4A4 GEMM with the low-rank up-projection and bias fused into the epilogue.

    qx_packed uint8 [T, K // 2], sx fp32 [T, G], qweight_packed uint8 [O, K // 2] (signed codes),
    wscales [O, G], lr_act [T, R], lora_up [O, R] (R may be 0, or both None), bias [O] or None
    -> y fp32 [T, O] = primitives.quantized_matmul(...) + lr_act @ lora_up.T + bias.
    `block_t` / `block_o` override the output tile.
    """
    interp = _require()
    _check_packed("qx_packed", qx_packed)
    _check_packed("qweight_packed", qweight_packed)
    t, half_k = qx_packed.shape
    o = qweight_packed.shape[0]
    if qweight_packed.shape[1] != half_k:
        raise ValueError(f"qweight_packed {tuple(qweight_packed.shape)} and qx_packed {tuple(qx_packed.shape)} "
                         f"disagree on K // 2")
    k = 2 * half_k
    n_groups = _check_group(k, group_size)
    _check_block("block_t", block_t)
    _check_block("block_o", block_o)
    if tuple(sx.shape) != (t, n_groups):
        raise ValueError(f"sx must have shape [T, K // group_size] = [{t}, {n_groups}], got {tuple(sx.shape)}")
    if tuple(wscales.shape) != (o, n_groups):
        raise ValueError(f"wscales must have shape [O, K // group_size] = [{o}, {n_groups}] for packed weight "
                         f"{tuple(qweight_packed.shape)} and group_size={group_size}, got {tuple(wscales.shape)}")
    _check_float("sx", sx)
    _check_float("wscales", wscales)
    if (lr_act is None) != (lora_up is None):
        raise ValueError("lr_act and lora_up must both be given or both be None")
    r = 0
    if lr_act is not None:
        if lr_act.dim() != 2 or lr_act.shape[0] != t:
            raise ValueError(f"lr_act must have shape [{t}, R], got {tuple(lr_act.shape)}")
        r = lr_act.shape[1]
        if tuple(lora_up.shape) != (o, r):
            raise ValueError(f"lora_up must have shape [O, R] = [{o}, {r}], got {tuple(lora_up.shape)}")
        _check_float("lr_act", lr_act)
        _check_float("lora_up", lora_up)
    if bias is not None:
        if bias.dim() != 1 or bias.numel() != o:
            raise ValueError(f"bias must have shape [{o}], got {tuple(bias.shape)}")
        _check_float("bias", bias)
    _check_device(interp, qx_packed, sx, qweight_packed, wscales, lr_act, lora_up, bias)

    y = torch.empty(t, o, dtype=torch.float32, device=qx_packed.device)
    if t == 0 or o == 0:
        return y
    if k == 0:
        y.zero_()
        return y + bias.float() if bias is not None else y
    qx_packed = qx_packed.contiguous()
    qweight_packed = qweight_packed.contiguous()
    sx = sx.to(torch.float32).contiguous()
    wscales = wscales.contiguous()
    # Unused pointer arguments get a harmless stand-in; the constexpr flags compile their loads out.
    lr = lr_act.contiguous() if r else sx
    up = lora_up.contiguous() if r else sx
    b = bias.contiguous() if bias is not None else sx

    block_t = block_t or _block(t, 16, 64)
    block_o = block_o or _block(o, 16, 64)
    block_r = _block(r, 16, 32)  # the epilogue loops over R in chunks to bound register use
    grid = (triton.cdiv(t, block_t), triton.cdiv(o, block_o))
    _, gemm_kernel = _kernels()
    gemm_kernel[grid](
        qx_packed, sx, qweight_packed, wscales, lr, up, b, y, t, o, k, r,
        GROUP=group_size, BLOCK_G=_next_pow2(group_size), BLOCK_T=block_t, BLOCK_O=block_o, BLOCK_R=block_r,
        ACT_SIGNED=bool(act_signed), HAS_LR=r > 0, HAS_BIAS=bias is not None, num_warps=4)
    return y


def w4a4_linear(
    x: torch.Tensor, smooth: torch.Tensor, shift: float, qweight_packed: torch.Tensor, wscales: torch.Tensor,
    lora_down: torch.Tensor | None, lora_up: torch.Tensor | None, bias: torch.Tensor | None,
    group_size: int = 64, act_signed: bool = True,
) -> torch.Tensor:
    """The whole W4A4 SVDQuant linear: x [..., K] -> y fp32 [..., O] (see the module docstring)."""
    _require()
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension [..., K]")
    if (lora_down is None) != (lora_up is None):
        raise ValueError("lora_down and lora_up must both be given or both be None")
    lead, k = x.shape[:-1], x.shape[-1]
    qx, sx, lr = quantize_act_lowrank(x.reshape(-1, k), smooth, shift, lora_down, group_size, act_signed)
    has_lr = lora_up is not None and lr.shape[1] > 0
    if lora_up is not None and lr.shape[1] == 0 and lora_up.numel():
        raise ValueError(f"lora_up has shape {tuple(lora_up.shape)} but lora_down has rank 0")
    y = w4a4_gemm(qx, sx, qweight_packed, wscales, lr if has_lr else None, lora_up if has_lr else None, bias,
                  group_size, act_signed)
    return y.reshape(*lead, y.shape[-1])
